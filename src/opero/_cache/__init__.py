"""The cache step: keys from bound arguments (`keys`), the backends (memory on
cachetools, disk on diskcache, Redis, twat-cache's fcache) and single-flight (`step`)."""
