"""`@opmap`'s machinery: its settings, the per-item pipeline mapped over items, and the
engines that run it (process and thread pools on twat-mp or the stdlib, asyncio tasks,
Dask and Ray), with the start methods, worker supervision and progress."""
