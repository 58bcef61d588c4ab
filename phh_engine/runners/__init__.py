"""Runners: where attempts execute. `base.Runner` is what the engine uses; the local runner
(local.py) runs them on this host, the Ray runner (ray_runner.py, node agents in
ray_node.py) on the nodes of a Ray cluster (docs/scale-out.md).

Layer 4 of phh_engine (above `derive`; docs/architecture.md#layers)."""
