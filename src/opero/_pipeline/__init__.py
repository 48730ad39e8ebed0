"""The call pipeline: the validated options (`options`, `option_checks`), the builder that
composes the steps they ask for (`build`), the hot-path wrappers, the fallback loop, the
guard (breaker, bulkhead, result check in one frame) and the observed twin."""
