"""The doors into the store: submit and its validation (Launch Table dialect, strict output
schemas), the drop folder queue, operations shared by CLI and API, safe attempt-file reads,
history queries, the HTTP API. They read the store and write request files; they never touch
engine memory.

Layer 5 of phh_engine (above `runners`; docs/architecture.md#layers).
"""
