"""`timeout=` per attempt and `total_timeout=` per call: the deadlines, and how an attempt
is cut off (task cancellation, SIGALRM in map workers, a helper thread otherwise)."""
