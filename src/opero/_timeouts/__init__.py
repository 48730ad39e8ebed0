"""Timeouts: `timeout=` per attempt (`attempt`) and `total_timeout=` for the whole call
(`total`).

`total_timeout` sets a deadline when the call starts (one `ContextVar` per decorated
function, so nested opero functions keep their own). The fallback and retry steps start no
new attempt, and sleep no delay, that would end past it; each attempt is cut off at it.

How an attempt is cut off:

- **async**: the attempt's task is cancelled for real at the limit, as `asyncio.timeout`
  would (one timer per event loop instead of one per attempt, see `_Watch`), and
  `AttemptTimeoutError` is raised in its place.
- **sync, with `timeout`**, `timeout_mode="abandon"` (the default): Python cannot stop
  a thread. The attempt runs on a helper thread while the caller waits at most the
  limit (the earlier of `timeout` and the deadline); at the limit the caller gets
  `AttemptTimeoutError` and goes on (retry, fallback), and the abandoned attempt keeps
  running on its thread until it returns by itself; its result or exception is then
  dropped (a DEBUG log line says so). Helper threads are daemons and reused (`threads`).
- **sync, with `timeout`, `timeout_mode="interrupt"`**, and in every @opmap process
  worker whatever the mode: on the main thread while SIGALRM is free (POSIX), the
  attempt runs in the caller's thread and a `SIGALRM` timer raises the timeout inside
  the running code, so the work really stops (`alarm`; where it may land: `frames`).
  Elsewhere (other threads, Windows, a host's SIGALRM) it is handed off as above, with a
  DEBUG line once per function and reason.
- **sync, `total_timeout` alone**: no helper thread (a hand-off costs ~70 us a call).
  The deadline bounds the retries, their waits and the rate-limit waits from the
  caller's thread, and no attempt starts after it; a running attempt is cut at it only
  where `SIGALRM` can (an @opmap worker, `timeout_mode="interrupt"` in place). Add
  `timeout=` to have every attempt cut.
"""
