"""The engine: the loop (`loop.Engine`: lifecycle, scheduling, recovery, watching) and its
collaborators: operator actions, runner health and admission, retention (GC).

Top layer of phh_engine, the only long-running owner of a runner (docs/architecture.md#layers).
"""
