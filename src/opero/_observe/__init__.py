"""Observation: events, hooks and stats (`events`), and where the running code is in an
opero call (`attempts`: `current_attempt()`, `current_call_id()`)."""
