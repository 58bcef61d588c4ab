"""Runners: where attempts execute. `base.Runner` is what the engine uses; the local runner
(phh_engine/runner.py) runs them on this host, the Ray runner (ray_runner.py, node agents in
ray_node.py) on the nodes of a Ray cluster (docs/scale-out.md)."""
