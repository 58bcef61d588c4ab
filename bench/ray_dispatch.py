"""Ray dispatch: N instant-fake attempts through phh's Ray runner on a simulated cluster (a head
with no codex_slots + 2 nodes x 8 slots, `ray.cluster_utils.Cluster`), against a floor of the
same spawns (the node agent's own `spawn_detached`, same fake, same nodes, 8 at a time per
node) with no phh on top, in the same run; then the time from `ray start` of a third node to
its first attempt, while the first two are full.

    .venv/bin/python bench/ray_dispatch.py [--jobs 200] [--slots 8] [--keep]

`--jobs` two-step jobs (step2 resumes step1): 2 x jobs attempts. The fake `codex` is
bench/fake_codex (POSIX sh, exits at once), behind a shim that sleeps 2 s while the third-node
phase runs. Engine CPU is this process's (the engine and its Ray driver threads). Prints
figures, asserts nothing (docs/architecture.md#tests). Target (issue 13): <= 1.2x the floor, >= 50
attempts/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))
sys.path.insert(0, str(CHECKOUT / "bench"))

# Ray reads these once, at import; its files stay in our temp dir (nothing in /tmp/ray, ~/.ray)
TMP = Path(tempfile.mkdtemp(prefix="phhbench", dir="/tmp"))
os.environ.update({
    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
    "RAY_TMPDIR": str(TMP), "HOME": str(TMP), "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
})
SLOW_FLAG = TMP / "slow"
SHIM = TMP / "codex_shim"
SHIM.write_text(f'#!/bin/sh\n[ -e "{SLOW_FLAG}" ] && sleep 2\nexec "{CHECKOUT}/bench/fake_codex" '
                '"$@"\n')
SHIM.chmod(0o755)
os.environ["PHH_CODEX_BIN"] = str(SHIM)  # inherited by the nodes (their agents' Codex)

import ray  # noqa: E402
from common import cpu_seconds, load_average, submit_two_step_jobs  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from phh_engine.engine.loop import Engine, EngineEvent  # noqa: E402
from phh_engine.models import HarnessSettings  # noqa: E402
from phh_engine.models.harness_config import RunnerSpec  # noqa: E402
from phh_engine.store.files import atomic_write_json  # noqa: E402
from phh_engine.store.harness_config import materialize  # noqa: E402
from phh_engine.store.paths import Layout  # noqa: E402

PROMPT = "Do nothing, quickly."


class Floor:
    """Spawns the fake exactly as a node agent does (spawn_detached in a worker thread, wait
    on a pidfd), `conc` at a time; returns the wall seconds."""

    async def run(self, dirs: list[str], conc: int) -> float:
        from phh_engine.runners.process import _AdoptedHandle
        from phh_engine.runners.ray_node import spawn_detached

        sem = asyncio.Semaphore(conc)

        def start(d: Path, argv: list[str]) -> int:
            with open(d / "prompt.txt", "rb") as i, open(d / "events.jsonl", "ab") as o, \
                    open(d / "stderr.txt", "ab") as e:
                return spawn_detached(d / "exit_code", argv, stdin=i, stdout=o, stderr=e,
                                      cwd=d, env={**os.environ, "CODEX_HOME": str(d / "home")},
                                      lease=600)

        async def one(ds: str) -> None:
            d = Path(ds)
            argv = [str(SHIM), "exec", "--json", "-o", str(d / "final.txt"), "-"]
            if d.name.endswith("-2"):
                argv[-1:] = ["resume", "00000000-0000-4000-8000-000000000000", "-"]
            async with sem:
                pid = await asyncio.to_thread(start, d, argv)
                await _AdoptedHandle(pid).wait()

        t0 = time.perf_counter()
        await asyncio.gather(*(one(d) for d in dirs))
        return time.perf_counter() - t0


def settings_for(root: Path, address: str, slots_total: int) -> None:
    layout = Layout(root)
    s = HarnessSettings()
    s.runners = [RunnerSpec(runner_id="local", kind="ray", address=address)]
    s.limits.global_concurrency = max(slots_total, 1)
    atomic_write_json(layout.settings_path, s.model_dump(mode="json", exclude_none=True))
    materialize(layout, s)


def run_floor(n: int, slots: int) -> float:
    base = TMP / "floor"
    dirs: dict[str, list[str]] = {"n1": [], "n2": []}
    for i in range(n // 2):
        for step in (1, 2):
            d = base / f"{i:05d}-{step}"
            (d / "home").mkdir(parents=True)
            (d / "prompt.txt").write_text(PROMPT)
            dirs["n1" if i % 2 == 0 else "n2"].append(str(d))
    actor = ray.remote(Floor)
    floors = {lab: actor.options(num_cpus=0, label_selector={"phh-node": lab}).remote()
              for lab in dirs}
    t0 = time.perf_counter()
    ray.get([floors[lab].run.remote(ds, slots) for lab, ds in dirs.items()], timeout=600)
    wall = time.perf_counter() - t0
    for f in floors.values():
        ray.kill(f)
    return wall


def run_phh(root: Path, address: str) -> tuple[float, float, float, dict[str, int]]:
    """(wall incl. connect, dispatch wall from the first start to the last end, CPU, statuses)"""
    marks: list[float] = []

    def on_event(ev: EngineEvent) -> None:
        if ev.kind in ("attempt_started", "attempt_ended"):
            marks.append(time.perf_counter())
    eng = Engine(root, until_idle=True, ray_address=address, on_event=on_event)
    c0, t0 = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
    eng.setup()
    asyncio.run(eng.serve())
    wall = time.perf_counter() - t0
    dispatch = marks[-1] - marks[0] if marks else wall
    cpu = cpu_seconds(resource.RUSAGE_SELF) - c0
    statuses: dict[str, int] = {}
    for st in root.glob("runs/*/*/steps/*/attempts/*/state.json"):
        s = json.loads(st.read_text())["status"]
        statuses[s] = statuses.get(s, 0) + 1
    return wall, dispatch, cpu, statuses


def third_node(cluster: Cluster, root: Path, address: str, slots: int) -> float | None:
    """Seconds from starting a third node to the first attempt started on it."""
    SLOW_FLAG.touch()
    eng = Engine(root, ray_address=address)
    eng.setup()
    th = threading.Thread(target=lambda: asyncio.run(eng.serve()), daemon=True)
    th.start()
    deadline = time.monotonic() + 120
    while len(eng.tasks) < 2 * slots and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.time()
    cluster.add_node(num_cpus=1, resources={"codex_slots": slots}, labels={"phh-node": "n3"})
    first: float | None = None
    while first is None and time.monotonic() < deadline:
        for meta in root.glob("runs/*/*/steps/*/attempts/*/meta.json"):
            if json.loads(meta.read_text())["environment_snapshot"].get("node") == "n3":
                first = meta.stat().st_mtime - t0
                break
        time.sleep(0.05)
    eng.stop(cancel_running=True)
    th.join(120)
    SLOW_FLAG.unlink()
    return first


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200, help="two-step jobs (2x attempts)")
    ap.add_argument("--slots", type=int, default=8, help="codex_slots per node")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args(argv)
    n = 2 * args.jobs
    t = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "resources": {"codex_slots": 0}, "include_dashboard": False})
    try:
        for lab in ("n1", "n2"):
            cluster.add_node(num_cpus=1, resources={"codex_slots": args.slots},
                             labels={"phh-node": lab})
        cluster.wait_for_nodes(120)
        print(f"cluster: head + 2 nodes x {args.slots} slots up in "
              f"{time.perf_counter() - t:.1f}s (load {load_average()})")
        root = TMP / "root"
        submit_two_step_jobs(root, args.jobs, goal="Ray dispatch benchmark " * 60,
                             prompt=PROMPT)
        settings_for(root, cluster.address, 3 * args.slots)
        ray.init(address=cluster.address, namespace="phh-bench-floor", log_to_driver=False)
        floor = run_floor(n, args.slots)
        ray.shutdown()
        wall, dispatch, cpu, statuses = run_phh(root, cluster.address)
        print(f"floor (same spawns by the nodes, no phh): {n} attempts in {floor:.2f}s "
              f"= {n / floor:.1f}/s")
        print(f"phh through Ray, first start to last end: {n} attempts in {dispatch:.2f}s "
              f"= {n / dispatch:.1f}/s  ({dispatch / floor:.2f}x the floor; target <= 1.2x, "
              ">= 50/s)")
        print(f"  with engine start (ray.init, node agents, index): {wall:.2f}s "
              f"= {n / wall:.1f}/s")
        print(f"  statuses {statuses}; engine CPU {cpu:.2f}s = {1000 * cpu / n:.1f} ms/attempt "
              f"(engine + its Ray driver, incl. connect)")
        root2 = TMP / "root2"
        submit_two_step_jobs(root2, 12 * args.slots, goal="Ray third node benchmark " * 60,
                             prompt=PROMPT)
        settings_for(root2, cluster.address, 3 * args.slots)
        first = third_node(cluster, root2, cluster.address, args.slots)
        print("third node: `ray start` to its first attempt: "
              + (f"{first:.1f}s" if first is not None else "no attempt within 120 s"))
        print(f"load {load_average()}")
    finally:
        ray.shutdown()
        cluster.shutdown()
        if args.keep:
            print(f"kept {TMP}")
        else:
            shutil.rmtree(TMP, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
