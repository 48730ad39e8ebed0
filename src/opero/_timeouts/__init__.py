"""Timeouts: `timeout=` per attempt (`attempt`) and `total_timeout=` for the whole call
(`total`).

`total_timeout` sets a deadline when the call starts (one `ContextVar` per decorated
function, so nested opero functions keep their own). The fallback and retry steps start no
new attempt, and sleep no delay, that would end past it; each attempt is cut off at it.

How an attempt is cut off:

- **async**: the attempt's task is cancelled for real at the limit, as `asyncio.timeout`
  would (one timer per event loop instead of one per attempt, see `_Watch`), and
  `AttemptTimeoutError` is raised in its place.
- **sync, with `timeout`**: Python cannot stop a thread. The attempt runs on a helper
  thread while the caller waits at most the limit (the earlier of `timeout` and the
  deadline); at the limit the caller gets `AttemptTimeoutError` and goes on (retry,
  fallback), and the abandoned attempt keeps running on its thread until it returns by
  itself; its result or exception is then dropped (a DEBUG log line says so). Helper
  threads are daemons and reused (`threads`). Under `@opmap(mode="process")`, a worker
  process owns its main thread, so there the attempt runs on it and a `SIGALRM` timer
  raises the timeout inside the running code: the work really stops (`alarm`).
- **sync, `total_timeout` alone**: no helper thread (a hand-off costs ~70 us a call).
  The deadline bounds the retries, their waits and the rate-limit waits from the
  caller's thread, and no attempt starts after it; a running attempt is cut at it only
  in an @opmap worker (`SIGALRM`). Add `timeout=` to have every attempt cut.
"""
