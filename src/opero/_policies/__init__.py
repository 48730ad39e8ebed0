"""The policies one attempt or one call obeys: retries over tenacity (with Retry-After),
the circuit breaker, the bulkhead, the retry budget and the rate limiters (local, shared
memory, Redis). Each knows nothing of the others; the pipeline composes them."""
