"""The runs store: paths from ids, durable atomic files and locks, document reads, the
in-memory views and the StoreIndex, pointers, request/result files, pauses, logs and events,
scoreboard files, the harness config, the SQLite catalog derived from the files.

Layer 2 of phh_engine (above `models`): the only code that writes runs/
(docs/architecture.md#layers).
"""
