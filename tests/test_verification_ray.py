"""The verifier on a Ray cluster node (docs/verification.md#crash-restart-and-adoption): the
node agent concludes attempts with the local runner's code, so the verifier runs on the node
that ran the agent, in the attempt's workspace. Uses the simulated cluster of
test_ray_runner (its own instance for this module)."""

from __future__ import annotations

import pytest
from conftest import Harness, step

ray_tests = pytest.importorskip("test_ray_runner")
sim = ray_tests.sim
rh = ray_tests.rh

pytestmark = pytest.mark.codex


def test_verifier_runs_on_the_node_and_fails_then_passes(rh: Harness) -> None:
    verifier = ("echo \"node run $PHH_RUN_ID\" >> verified.txt; "
                "test \"$(wc -l < verified.txt)\" -ge 2")
    bid = rh.submit([{"job_id": "j", "steps": [step("s1", verify={"command": verifier})]}],
                    retries={"max_attempts": 2, "backoff_seconds": 0})
    rh.run(timeout=150)
    first, second = rh.attempts(bid, "j", "s1")
    st1, st2 = rh.state(first), rh.state(second)
    assert (st1["status"], st1["failure_class"]) == ("failed", "verify_failed"), st1
    assert st2["status"] == "succeeded" and st2["verify"]["passed"] is True, st2
    assert rh.meta(second)["environment_snapshot"]["node"] in ("a", "b")
    assert (second / "verify.log").exists()
    lines = (rh.workspace / "verified.txt").read_text().splitlines()
    assert lines == [f"node run {st1['run_id']}", f"node run {st2['run_id']}"]
