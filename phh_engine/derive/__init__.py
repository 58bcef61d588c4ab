"""What follows from the store's views and a clock: step readiness and retry backoff, selection
(caps, fairness, affinity), scoreboards. Pure functions, no I/O.

Layer 3 of phh_engine (above `store`; docs/architecture.md#layers).
"""
