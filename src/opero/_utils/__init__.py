"""Plumbing every layer may use: opero's loguru logger, lock waits with a deadline, the
Redis import, and the process-wide switches (testing mode, pool-worker role)."""
