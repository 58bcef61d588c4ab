"""The Ray cluster runner (issue 13) on a real Ray cluster simulated on this machine: a head
with no codex_slots and two labelled nodes (`ray.cluster_utils.Cluster`), real Codex against
the stand-in on both nodes. One cluster for the module (a node joins in ~7 s); the node-loss
test removes a node, so it runs last.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import Harness, final, step, wait_for

from phh_engine.models.harness_config import RunnerSpec

# Ray reads its auth mode once per process, at import: a token of this module's own (so
# nothing is read from or written to ~/.ray/auth_token), set before Ray is imported
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

pytestmark = pytest.mark.codex

SLOTS = 2
#: what each simulated node is told it cannot see (PHH_NODE_HIDDEN_PATHS): the sessions of
#: jobs `unseen*` are not visible from node b, those of jobs `nowhere*` from no node
_SESSIONS = "*/{}*/steps/s1/attempts/*/codex_home/sessions"
HIDDEN = {"a": _SESSIONS.format("nowhere"),
          "b": os.pathsep.join((_SESSIONS.format("nowhere"), _SESSIONS.format("unseen")))}
#: Ray's own files (session dirs, address file) in the module's temp dir, nothing under
#: /tmp/ray or ~/.ray; fast health checks so a removed node is dead in ~2 s
_ENV = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_USAGE_STATS_ENABLED": "0",
}


class Sim:
    def __init__(self, cluster: Any, nodes: dict[str, Any]) -> None:
        self.cluster = cluster
        self.nodes = nodes
        self.address: str = cluster.address


@pytest.fixture(scope="module")
def sim() -> Iterator[Sim]:
    tmp = tempfile.mkdtemp(prefix="phhray", dir="/tmp")  # short: Ray's unix socket paths
    env = {**_ENV, "RAY_TMPDIR": tmp, "HOME": tmp}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cluster = None
    try:
        cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "resources": {"codex_slots": 0}, "include_dashboard": False})
        nodes = {label: _add_node(cluster, label) for label in ("a", "b")}
        cluster.wait_for_nodes(60)
        yield Sim(cluster, nodes)
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


def _add_node(cluster: Any, label: str) -> Any:
    return cluster.add_node(num_cpus=1, resources={"codex_slots": SLOTS},
                            labels={"phh-node": label},
                            env_vars={"PHH_NODE_HIDDEN_PATHS": HIDDEN[label]})


@pytest.fixture
def rh(harness: Harness, sim: Sim) -> Iterator[Harness]:
    """The harness with its runner on the cluster (config `runners: [{kind: "ray"}]`)."""
    harness.settings.runners = [RunnerSpec(runner_id="local", kind="ray", address=sim.address)]
    harness.settings.codex.heartbeat_seconds = 1.0
    harness.write_settings()
    yield harness
    _kill_agents(sim, harness)


def _kill_agents(sim: Sim, h: Harness) -> None:
    """Detached agents outlive engines by design: end this test's (its root's namespace)."""
    from phh_engine.runners.ray_node import actor_name, default_namespace

    ray.shutdown()
    ray.init(address=sim.address, namespace=default_namespace(h.root),
             log_to_driver=False, logging_level="WARNING")
    try:
        for label in sim.nodes:
            with contextlib.suppress(ValueError):
                ray.kill(ray.get_actor(actor_name(label)))
    finally:
        ray.shutdown()


def _ts(v: str | None) -> float:
    assert v, "missing timestamp"
    return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()


def _all_attempts(h: Harness, bid: str) -> list[Path]:
    return sorted(p for p in h.layout.batch_dir(bid).glob("*/steps/*/attempts/*")
                  if not p.name.startswith("."))


def _leaders(under: Path) -> list[int]:
    """Live session leaders (exit-code wrappers) of attempts under a directory."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = p.info.get("cmdline") or []
        if (len(cmd) > 3 and cmd[0] == "/bin/sh" and cmd[3].startswith(str(under))
                and p.info.get("status") != psutil.STATUS_ZOMBIE):
            try:
                if os.getpgid(p.info["pid"]) == p.info["pid"]:
                    out.append(p.info["pid"])
            except OSError:
                pass
    return out


def _group(pid: int) -> list[int]:
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.info["pid"]) == pid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.info["pid"])
        except OSError:
            pass
    return out


def _running(h: Harness, bid: str, job: str, n: int = 1) -> Path:
    def ready() -> Path | None:
        atts = h.attempts(bid, job, "s1")
        if len(atts) >= n and h.state(atts[n - 1]).get("pid") and \
                (atts[n - 1] / "meta.json").exists():
            return atts[n - 1]
        return None
    return wait_for(ready, 90, f"{job} attempt {n} running")


def test_config_and_doctor(harness: Harness, sim: Sim) -> None:
    """A ray runner without an address is refused naming its path; `phh doctor` says whether
    each configured cluster answers."""
    from phh_engine.store.harness_config import ConfigError, load_config

    harness.settings.runners = [RunnerSpec(runner_id="c1", kind="ray")]
    raw = harness.settings.model_dump(mode="json", exclude_none=True)
    harness.layout.settings_path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as err:
        load_config(harness.layout)
    assert "runners[0].address" in str(err.value)
    free = __import__("socket").socket()
    free.bind(("127.0.0.1", 0))
    dead = f"127.0.0.1:{free.getsockname()[1]}"
    free.close()
    harness.settings.runners = [RunnerSpec(runner_id="up", kind="ray", address=sim.address),
                                RunnerSpec(runner_id="down", kind="ray", address=dead)]
    harness.write_settings()
    out = subprocess.run([sys.executable, "-m", "phh_tui.cli", "--root", str(harness.root),
                          "doctor", "--json"], capture_output=True, text=True, timeout=120)
    rows = {r["name"]: r for r in json.loads(out.stdout)["checks"]}
    assert rows["ray runner up"]["status"] == "ok", rows["ray runner up"]
    assert rows["ray runner down"]["status"] == "fail"
    assert dead in rows["ray runner down"]["found"]
    # `phh run --ray` at a dead address: a clear error at once, not Ray's minute of retries
    harness.settings.runners = [RunnerSpec(runner_id="local")]
    harness.write_settings()
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "phh_tui.cli", "--root", str(harness.root),
                          "run", "--no-ui", "--ray", dead], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1 and time.monotonic() - t0 < 60
    assert f"cannot reach the Ray cluster at {dead}" in run.stderr, run.stderr


def test_a_node_that_cannot_see_the_root_refuses_naming_node_and_path(tmp_path: Path) -> None:
    from phh_engine.runners.ray_node import NodeAgent

    missing = tmp_path / "not-mounted-here"
    with pytest.raises(RuntimeError) as err:
        NodeAgent(str(missing), "local", "gpu-7")
    assert "gpu-7" in str(err.value) and str(missing / "runs") in str(err.value)


def test_agent_scan_kills_agents_of_terminal_attempts(harness: Harness) -> None:
    """What a (re)started node agent does first, without Ray: a live wrapper whose attempt is
    already terminal (e.g. finalised runner_lost meanwhile) is killed; a live one whose
    attempt is current is its to adopt."""
    from phh_engine.models import AttemptState, utcnow
    from phh_engine.runners.ray_node import NodeAgent, spawn_detached
    from phh_engine.store.files import atomic_write_json

    agent = NodeAgent(str(harness.root), "local", "a")
    pids = {}
    for name, status in (("done", "failed"), ("live", "running")):
        d = harness.layout.attempts_dir("b1", "j1", name) / "20260101T000000Z_r1"
        d.mkdir(parents=True)
        atomic_write_json(d / "state.json", AttemptState(
            batch_id="b1", job_id="j1", step_id=name, run_id="r1", runner_id="local",
            status=status, updated_at=utcnow()))
        with open(os.devnull, "rb") as i, open(d / "out", "ab") as o:
            pids[name] = spawn_detached(d / "exit_code", ["sleep", "60"], stdin=i, stdout=o,
                                        stderr=o, cwd=d, env=dict(os.environ), lease=600)
    try:
        found = agent._scan()
        wait_for(lambda: not _group(pids["done"]), 10, "the terminal attempt's group gone")
        assert _group(pids["live"]), "a current attempt's agent is left alone"
        assert found == []  # no meta.json naming node a: not this node's to adopt
    finally:
        for pid in pids.values():
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


def test_spread_over_nodes_within_slots_and_resume_across_nodes(rh: Harness) -> None:
    jobs = [{"job_id": f"j{i}", "steps": [step("s1", {"hang": 1.5}, prompt=f"spread {i}")]}
            for i in range(6)]
    bid = rh.submit(jobs)
    rh.run(timeout=150)
    spans: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    for att in _all_attempts(rh, bid):
        st, meta = rh.state(att), rh.meta(att)
        assert st["status"] == "succeeded", st
        node = meta["environment_snapshot"]["node"]
        spans[node].append((_ts(st["started_at"]), _ts(st["ended_at"])))
    assert sum(map(len, spans.values())) == 6
    assert spans["a"] and spans["b"], f"both nodes must run attempts: {spans}"
    for node, iv in spans.items():
        edges = sorted([(s, 1) for s, _ in iv] + [(e, -1) for _, e in iv])
        load = peak = 0
        for _, d in edges:
            load += d
            peak = max(peak, load)
        assert peak <= SLOTS, f"node {node} ran {peak} attempts at once (slots {SLOTS})"
    ended = [e.run_id for e in rh.events if e.kind == "attempt_ended"]
    assert sorted(ended) == sorted(set(ended)) and len(ended) == 6, "one end per attempt"
    # the engine wrote every current.json (the agents write none)
    for i in range(6):
        cur = json.loads(rh.layout.current(bid, f"j{i}").read_text())
        assert [e["status"] for e in cur["steps"]["s1"]["by_run_id"].values()] == ["succeeded"]

    chain = rh.submit([{"job_id": "c", "steps": [
        step("s1", final("first"), prompt="resume-src"),
        step("s2", {"echo_thread": True}, resume_from={"step_id": "s1"})]}])
    rh.run(timeout=120)
    (a1,) = rh.attempts(chain, "c", "s1")
    (a2,) = rh.attempts(chain, "c", "s2")
    # the source's own node said (with its end) that it sees the sessions: the resume goes
    # there; a chain across nodes is the next test's
    n1 = rh.meta(a1)["environment_snapshot"]["node"]
    assert rh.meta(a2)["environment_snapshot"]["node"] == n1
    assert rh.state(a2)["status"] == "succeeded"
    assert rh.meta(a2)["codex_thread_id"] == rh.state(a1)["codex_thread_id"]
    assert "saw 2 user prompts" in json.loads((a2 / "final.json").read_text())["summary"]


def _step_row(h: Harness, bid: str, job: str, step_id: str) -> dict[str, Any] | None:
    board = h.layout.batch_scoreboard(bid)
    if not board.exists():
        return None
    rows = json.loads(board.read_text())["steps"]
    return next((r for r in rows if r["job_id"] == job and r["step_id"] == step_id), None)


def test_resume_is_placed_on_a_node_that_sees_its_source(rh: Harness) -> None:
    """Node b cannot see the sessions of jobs `unseen*`: their resume steps are placed on
    node a (never refused on b), so a chain whose source ran on b resumes across nodes; the
    source of job `nowhere` is seen by no node: its resume step waits, with the reason, and
    gets no attempt."""
    jobs = [{"job_id": f"unseen{i}", "steps": [
        step("s1", final("first"), prompt=f"unseen src {i}"),
        step("s2", {"echo_thread": True}, resume_from={"step_id": "s1"})]} for i in range(4)]
    bid = rh.submit(jobs, retries={"max_attempts": 1})
    rh.run(timeout=150)
    across = 0
    for i in range(4):
        (a1,) = rh.attempts(bid, f"unseen{i}", "s1")
        (a2,) = rh.attempts(bid, f"unseen{i}", "s2")
        assert rh.meta(a2)["environment_snapshot"]["node"] == "a", f"unseen{i}.s2 not on a"
        assert rh.state(a2)["status"] == "succeeded", rh.state(a2)
        assert rh.meta(a2)["codex_thread_id"] == rh.state(a1)["codex_thread_id"]
        assert "saw 2 user prompts" in json.loads((a2 / "final.json").read_text())["summary"]
        across += rh.meta(a1)["environment_snapshot"]["node"] == "b"
    assert across, "some source ran on b, so its resume ran on the other node"

    nowhere = rh.submit([{"job_id": "nowhere", "steps": [
        step("s1", final("first"), prompt="nowhere src"),
        step("s2", final("never"), resume_from={"step_id": "s1"})]}])
    eng = rh.start()
    try:
        def waiting() -> dict[str, Any] | None:
            row = _step_row(rh, nowhere, "nowhere", "s2")
            return row if row and any("waiting for a Ray node that can see" in r
                                      for r in row["reasons"]) else None
        row = wait_for(waiting, 90, "s2 waiting for a node that sees its source")
        (src,) = rh.attempts(nowhere, "nowhere", "s1")
        why = next(r for r in row["reasons"] if "waiting for a Ray node" in r)
        assert str(src / "codex_home" / "sessions") in why and "from: a, b" in why, why
        assert row["status"] == "ready" and rh.attempts(nowhere, "nowhere", "s2") == []
    finally:
        rh.stop(eng)
    assert rh.attempts(nowhere, "nowhere", "s2") == [], "never claimed, never refused"


def test_cancel_on_a_worker_node_leaves_no_process(rh: Harness) -> None:
    bid = rh.submit([{"job_id": "j1", "steps": [step("s1", {"hang": 120})]}],
                    retries={"max_attempts": 1})
    eng = rh.start()
    att = _running(rh, bid, "j1")
    pid = rh.state(att)["pid"]
    members = _group(pid)
    assert pid in members and len(members) >= 2, "wrapper and Codex in one group"
    node = rh.meta(att)["environment_snapshot"]["node"]

    def listed() -> str | None:  # `phh runner list`: a row per node, from health.json
        out = subprocess.run([sys.executable, "-m", "phh_tui.cli", "--root", str(rh.root),
                              "runner", "list"], capture_output=True, text=True, timeout=60
                             ).stdout
        return out if f"node {node:<10} alive      1/{SLOTS} slots" in out else None
    out = wait_for(listed, 60, "runner list with the node rows")
    assert "node a" in out and "node b" in out, out
    res = rh.call(eng, eng.request("cancel", bid, "j1", "s1"))
    assert res.outcome == "applied"
    wait_for(lambda: rh.state(att)["status"] == "canceled", 60, "canceled")
    wait_for(lambda: not _group(pid), 30, "the attempt's process group gone")
    assert not _leaders(att)
    assert (att / "exit_code").exists(), "the wrapper recorded the exit code"
    rh.stop(eng)


def test_engine_kill9_new_engine_adopts_on_both_nodes(rh: Harness, sim: Sim) -> None:
    # the runner from --ray, not the config: the common case
    rh.settings.runners = [RunnerSpec(runner_id="local")]
    rh.write_settings()
    bid = rh.submit([{"job_id": f"j{i}", "steps": [step("s1", {"hang": 14}, prompt=f"k {i}")]}
                     for i in range(2)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "phh_tui.cli", "--root", str(rh.root), "run", "--no-ui",
         "--ray", sim.address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        atts = [_running(rh, bid, f"j{i}") for i in range(2)]
        assert {rh.meta(a)["environment_snapshot"]["node"] for a in atts} == {"a", "b"}
        pids = [rh.state(a)["pid"] for a in atts]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        out = proc.communicate(timeout=30)[0].decode()
    assert "node a" in out and "node b" in out, out  # --no-ui prints node joins
    assert all(_group(p) for p in pids), "an engine's death must not touch the agents"
    eng = rh.start(ray_address=sim.address)
    wait_for(lambda: {e.run_id for e in rh.events if e.kind == "adopted"} ==
             {rh.state(a)["run_id"] for a in atts}, 30, "both attempts adopted")
    for i, a in enumerate(atts):
        wait_for(lambda a=a: rh.state(a)["status"] == "succeeded", 90, f"j{i} succeeded")
        assert len(rh.attempts(bid, f"j{i}", "s1")) == 1, "nothing rerun"
        assert rh.state(a)["exit_code"] == 0
    rh.stop(eng)


def test_node_agent_killed_is_restarted_and_adopts(rh: Harness, sim: Sim) -> None:
    from phh_engine.runners.ray_node import actor_name

    bid = rh.submit([{"job_id": "j1", "steps": [step("s1", {"hang": 10})]}],
                    retries={"max_attempts": 1})
    eng = rh.start()
    att = _running(rh, bid, "j1")
    node = rh.meta(att)["environment_snapshot"]["node"]
    wrapper = rh.state(att)["pid"]
    agent = ray.get_actor(actor_name(node))  # the engine's driver connection, this process
    before = ray.get(agent.status.remote(), timeout=30)
    assert rh.state(att)["run_id"] in before["running"]
    os.kill(before["pid"], signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        try:
            st = ray.get(agent.status.remote(), timeout=5)
        except Exception:
            return None
        return st if st["pid"] != before["pid"] and st["running"] else None
    after = wait_for(restarted, 60, "the agent restarted and holding the attempt")
    assert after["running"] == before["running"]
    assert _group(wrapper), "the agent's death must not take the wrapper"
    wait_for(lambda: rh.state(att)["status"] == "succeeded", 60, "adopted attempt succeeded")
    assert rh.state(att)["exit_code"] == 0 and len(rh.attempts(bid, "j1", "s1")) == 1
    rh.stop(eng)


def test_node_loss_runner_lost_then_retried_on_the_other_node_then_rejoin(
        rh: Harness, sim: Sim) -> None:
    """Runs last: it removes a node from the module's cluster, then starts a new node under
    the same label: its node agent comes back and attempts are placed on it again."""
    # long enough that the lease watchdog, not the end of its turn, ends the first attempt
    bid = rh.submit([{"job_id": "j1", "steps": [step("s1", {"hang": 22})]}],
                    retries={"max_attempts": 2, "backoff_seconds": 0})
    step_dir = rh.layout.attempts_dir(bid, "j1", "s1")
    peak = [0]
    stop = threading.Event()

    def sample() -> None:  # exactly one live agent for the step, at every moment
        while not stop.is_set():
            peak[0] = max(peak[0], len(_leaders(step_dir)))
            time.sleep(0.1)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    eng = rh.start()
    try:
        first = _running(rh, bid, "j1")
        lost = rh.meta(first)["environment_snapshot"]["node"]
        sim.cluster.remove_node(sim.nodes.pop(lost), allow_graceful=False)
        wait_for(lambda: rh.state(first)["status"] == "failed", 90, "runner_lost")
        st = rh.state(first)
        assert st["failure_class"] == "runner_lost" and st.get("exit_code") is None
        second = _running(rh, bid, "j1", 2)
        assert rh.meta(second)["environment_snapshot"]["node"] != lost
        wait_for(lambda: rh.state(second)["status"] == "succeeded", 90, "retry succeeded")
        assert any(e.kind == "node_lost" for e in rh.events)

        # a new machine under the lost node's label: the same engine sees it join and its
        # agent (Ray restarts the detached actor there) answer
        sim.nodes[lost] = _add_node(sim.cluster, lost)
        new_id = sim.nodes[lost].node_id
        assert eng.runner is not None

        def back() -> bool:
            try:  # read from this thread while the engine's loop updates the nodes
                n = next((n for n in eng.runner.nodes() if n.label == lost), None) \
                    if eng.runner is not None else None
            except RuntimeError:
                return False
            return bool(n and n.alive and n.node_id == new_id and n.error is None
                        and n.last_seen is not None and n.slots_total == SLOTS)
        wait_for(back, 150, f"node {lost} back with its agent answering")
        kinds = [e.kind for e in rh.events if (e.data or {}).get("node") == lost]
        assert kinds[-2:] == ["node_lost", "node_joined"], kinds
    finally:
        stop.set()
        sampler.join(10)
        rh.stop(eng)
    assert peak[0] == 1, f"{peak[0]} live agents for one step at once"
    # attempts go to the rejoined node again: four at once need both nodes' slots
    again = rh.submit([{"job_id": f"r{i}", "steps": [step("s1", {"hang": 2}, prompt=f"r {i}")]}
                       for i in range(2 * SLOTS)])
    rh.run(timeout=120)
    placed = {rh.meta(a)["environment_snapshot"]["node"] for a in _all_attempts(rh, again)}
    assert lost in placed, placed
    assert all(rh.state(a)["status"] == "succeeded" for a in _all_attempts(rh, again))
