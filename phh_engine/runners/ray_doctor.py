"""`phh doctor` rows for Ray runners: Ray installed, and each configured cluster reachable.

Registered when imported (phh_tui/cli_doctor imports it); no rows without a Ray runner. It
only opens a TCP connection to the cluster's address: a doctor must answer in seconds and
never join a cluster as a driver.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .doctor import CheckResult, DoctorContext, register_check
from .ray_runner import host_port, probe


@register_check
def check_ray_cluster(ctx: DoctorContext) -> Iterable[CheckResult]:
    runners = [(i, r) for i, r in enumerate(ctx.config.runners if ctx.config else [])
               if r.kind == "ray"]
    if not runners:
        return
    try:
        import ray
    except ImportError:
        yield CheckResult("ray", "fail", "Ray is not installed, but a runner has kind 'ray'",
                          "pip install 'phh[ray]'", blocks_run=True)
        return
    for i, r in runners:
        name = f"ray runner {r.runner_id}"
        if host_port(r.address or "") is None:
            yield CheckResult(name, "warn", f"address {r.address!r} is resolved by Ray at run "
                              "time; not checked here", f"give runners[{i}].address as HOST:PORT")
            continue
        why = probe(r.address or "")
        if why is not None:
            yield CheckResult(name, "fail", f"cannot reach the Ray cluster at {r.address}: "
                              f"{why}", f"start it (`ray start --head`) or fix "
                              f"runners[{i}].address")
            continue
        token = (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                 or (Path.home() / ".ray" / "auth_token").is_file())
        if os.environ.get("RAY_AUTH_MODE", "token") == "token" and not token:
            yield CheckResult(name, "warn", f"{r.address} reachable (Ray {ray.__version__}), "
                              "but no auth token here", "copy the cluster's token: "
                              "RAY_AUTH_TOKEN, or ~/.ray/auth_token (docs/scale-out.md)")
            continue
        yield CheckResult(name, "ok", f"{r.address} reachable (Ray {ray.__version__})")
