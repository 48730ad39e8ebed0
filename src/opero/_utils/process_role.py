"""Whether this process is an `@opmap` worker, which opero owns (its main thread may take
a `SIGALRM` timer). Set by the worker's initializer; read on hot paths, so a module of
its own that costs nothing to import."""

POOL_WORKER = False
