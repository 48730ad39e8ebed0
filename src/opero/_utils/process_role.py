"""Whether this process is an `@opmap` worker, which opero owns (its main thread may take
a `SIGALRM` timer). Set by the worker's initializer; read on hot paths, so a module of
its own that costs nothing to import."""

POOL_WORKER = False

# Set in a worker when a timer raised inside an item: the item's code was cut wherever it
# was (between a lock's acquire and its release, say), so the process may hold state no
# later item should meet. The worker leaves once its chunk is answered, and the pool
# starts a fresh one (`opero._maps.worker.run_chunk_in_process`).
INTERRUPTED = False
