"""The cache step: keys from bound arguments (`keys`), the backends (`memory` on
cachetools, disk on diskcache, Redis, twat-cache's fcache), the hit paths every call runs
first (`hits`) and single-flight (`step`)."""
