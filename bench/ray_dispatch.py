"""Ray dispatch: N instant-fake attempts through phh's Ray runner on a simulated cluster (a head
with no codex_slots + 2 nodes x 8 slots, `ray.cluster_utils.Cluster`), against a floor of the
same spawns (the node agent's own `spawn_detached`, same fake, same nodes, 8 at a time per
node) with no phh on top, in the same run; then the time from `ray start` of a third node to
its first attempt, while the first two are full.

    .venv/bin/python bench/ray_dispatch.py [--jobs 200] [--slots 8] [--baseline REF]
                                           [--profile] [--no-third] [--keep]

`--jobs` two-step jobs (step2 resumes step1): 2 x jobs attempts. The fake `codex` is
bench/fake_codex (POSIX sh, exits at once), behind a shim that sleeps 2 s while the third-node
phase runs. Each phh run is its own process (its CPU is its own; the engine and its Ray
driver threads): `--baseline REF` first runs phh as of git REF (`git archive` of phh_engine/
and phh_tui/, its node agents too) on the same cluster, so before/after and the floor come
from one run. `--profile` runs each phh once more under cProfile (event-loop thread and the
other threads, CPU time) and prints the top costs. Prints figures, asserts nothing
(docs/architecture.md#tests). Target (issue 13): <= 1.2x the floor, >= 50 attempts/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
#: the phh measured by this process: the checkout, or a baseline tree (--baseline, children)
CODE = Path(os.environ.get("PHH_BENCH_CODE") or CHECKOUT)
sys.path.insert(0, str(CODE))
sys.path.insert(1, str(CHECKOUT / "bench"))

# Ray reads these once, at import; its files stay in our temp dir (nothing in /tmp/ray, ~/.ray).
# A child run (PHH_BENCH_TMP set) inherits its parent's: the same token and temp dir.
if "PHH_BENCH_TMP" not in os.environ:
    TMP = Path(tempfile.mkdtemp(prefix="phhbench", dir="/tmp"))
    os.environ.update({
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_TMPDIR": str(TMP), "HOME": str(TMP), "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
        "RAY_health_check_failure_threshold": "3", "PHH_BENCH_TMP": str(TMP),
    })
TMP = Path(os.environ["PHH_BENCH_TMP"])
SLOW_FLAG = TMP / "slow"
SHIM = TMP / "codex_shim"
if not SHIM.exists():
    SHIM.write_text(f'#!/bin/sh\n[ -e "{SLOW_FLAG}" ] && sleep 2\nexec '
                    f'"{CHECKOUT}/bench/fake_codex" "$@"\n')
    SHIM.chmod(0o755)
os.environ["PHH_CODEX_BIN"] = str(SHIM)  # inherited by the nodes (their agents' Codex)

import psutil  # noqa: E402
import ray  # noqa: E402
from common import busy_cpu_seconds, cpu_seconds, load_average, submit_two_step_jobs  # noqa: E402
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


def run_floor(n: int, slots: int) -> tuple[float, float]:
    """(wall seconds, busy CPU seconds of the whole machine) of the floor."""
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
    b0, t0 = busy_cpu_seconds(), time.perf_counter()
    ray.get([floors[lab].run.remote(ds, slots) for lab, ds in dirs.items()], timeout=600)
    wall, busy = time.perf_counter() - t0, busy_cpu_seconds() - b0
    for f in floors.values():
        ray.kill(f)
    return wall, busy


class _ThreadProfiles:
    """cProfile (CPU time) in every thread started while active (to_thread workers)."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []

    def _start(self, *_: Any) -> None:
        prof = cProfile.Profile(time.thread_time)
        self.profiles.append(prof)
        prof.enable()  # replaces this bootstrap hook for the rest of the thread

    def __enter__(self) -> _ThreadProfiles:
        threading.setprofile(self._start)
        return self

    def __exit__(self, *_: object) -> None:
        threading.setprofile(None)  # type: ignore[arg-type]


def _print_profile(main: cProfile.Profile, threads: list[cProfile.Profile]) -> None:
    for label, profs in (("event-loop thread", [main]), ("other threads", threads)):
        live = []
        for p in profs:
            with contextlib.suppress(Exception):
                p.create_stats()
                if getattr(p, "stats", None):
                    live.append(p)
        if not live:
            continue
        out = io.StringIO()
        st = pstats.Stats(live[0], stream=out)
        for p in live[1:]:
            st.add(p)
        st.strip_dirs().sort_stats("tottime").print_stats(30)
        st.sort_stats("cumulative").print_stats(45)
        print(f"\n===== cProfile: {label} ({len(live)} profile(s)) =====")
        print(out.getvalue())


def agents_cpu() -> dict[int, float]:
    """CPU seconds so far of every node agent process on this machine (`ray::NodeAgent`)."""
    out: dict[int, float] = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info.get("cmdline") or []
        if cmd and cmd[0].startswith("ray::NodeAgent"):
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                out[p.info["pid"]] = t.user + t.system + t.children_user + t.children_system
    return out


def run_phh(root: Path, address: str, profile: bool = False) -> dict[str, Any]:
    """phh's engine on `root` until idle: wall (incl. connect), dispatch wall and CPU from
    the first start to the last end, total CPU, the event-loop thread's share, statuses."""
    marks: list[tuple[float, float]] = []
    busy: list[float] = []

    def on_event(ev: EngineEvent) -> None:
        if ev.kind in ("attempt_started", "attempt_ended"):
            if not marks:
                busy.append(busy_cpu_seconds())
            marks.append((time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF)))
    eng = Engine(root, until_idle=True, ray_address=address, on_event=on_event)
    c0, t0 = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
    main_id = threading.main_thread().native_id
    main0 = next((t.user_time + t.system_time for t in psutil.Process().threads()
                  if t.id == main_id), 0.0)
    eng.setup()
    agents0 = agents_cpu()
    if profile:
        prof = cProfile.Profile(time.thread_time)
        with _ThreadProfiles() as threads:
            prof.enable()
            asyncio.run(eng.serve())
            prof.disable()
    else:
        asyncio.run(eng.serve())
    wall = time.perf_counter() - t0
    busy.append(busy_cpu_seconds())
    cpu = cpu_seconds(resource.RUSAGE_SELF) - c0
    agents = sum(c - agents0.get(pid, 0.0) for pid, c in agents_cpu().items())
    main1 = next((t.user_time + t.system_time for t in psutil.Process().threads()
                  if t.id == main_id), 0.0)
    statuses: dict[str, int] = {}
    for st in root.glob("runs/*/*/steps/*/attempts/*/state.json"):
        s = json.loads(st.read_text())["status"]
        statuses[s] = statuses.get(s, 0) + 1
    if profile:
        _print_profile(prof, threads.profiles)
    (t_first, c_first), (t_last, c_last) = (marks[0], marks[-1]) if marks else ((t0, c0),) * 2
    return {"wall": wall, "dispatch": t_last - t_first or wall, "cpu": cpu,
            "cpu_dispatch": c_last - c_first, "cpu_loop": main1 - main0, "cpu_agents": agents,
            "statuses": statuses, "load": load_average(),
            "busy": busy[-1] - busy[0] if len(busy) > 1 else 0.0}


def phh_child(args: argparse.Namespace) -> int:
    """One phh run in this process (its own CPU figures): submit, run, print RESULT json."""
    root = Path(args.child_root)
    submit_two_step_jobs(root, args.jobs, goal="Ray dispatch benchmark " * 60, prompt=PROMPT)
    settings_for(root, args.address, 3 * args.slots)
    res = run_phh(root, args.address, profile=args.profile)
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def run_child(label: str, code: Path, root: Path, address: str, args: argparse.Namespace,
              profile: bool = False) -> dict[str, Any] | None:
    """phh as in `code` (a checkout tree) on `root`, in a fresh process; its RESULT."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--jobs", str(args.jobs),
            "--slots", str(args.slots), "--child-root", str(root), "--address", address]
    if profile:
        argv.append("--profile")
    env = {**os.environ, "PHH_BENCH_CODE": str(code)}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900,
                         check=False)
    if profile:
        print(f"----- profile of {label} -----")
        print(out.stdout)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            res: dict[str, Any] = json.loads(line[7:])
            return res
    print(f"{label}: no result (exit {out.returncode})\n{out.stdout[-3000:]}\n"
          f"{out.stderr[-3000:]}")
    return None


def baseline_tree(ref: str) -> Path:
    """phh_engine/ and phh_tui/ as of git `ref`, unpacked under TMP."""
    dest = TMP / "baseline"
    dest.mkdir()
    arch = subprocess.run(["git", "-C", str(CHECKOUT), "archive", ref, "phh_engine", "phh_tui"],
                          capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=arch, check=True)
    return dest


def report(label: str, n: int, floor: float, r: dict[str, Any], floor_busy: float) -> None:
    d = r["dispatch"]
    ncpu = os.cpu_count() or 1
    print(f"{label}: {n} attempts in {d:.2f}s first start to last end = {n / d:.1f}/s "
          f"({d / floor:.2f}x the floor; target <= 1.2x, >= 50/s); with engine start "
          f"{r['wall']:.2f}s; statuses {r['statuses']}")
    print(f"  engine CPU per attempt {1000 * r['cpu_dispatch'] / n:.2f} ms while dispatching "
          f"({1000 * r['cpu'] / n:.2f} ms incl. connect and index; event-loop thread "
          f"{1000 * r['cpu_loop'] / n:.2f} ms); node agents' CPU per attempt "
          f"{1000 * r['cpu_agents'] / n:.2f} ms (their Codex not counted); load {r['load']}")
    # On one machine the nodes, the engine and every agent share the same CPUs: when the
    # floor already keeps them busy, no scheduling can finish faster than the CPU work done
    # divided by the CPUs. This is the bound the ratio above is held to here.
    print(f"  the whole machine was busy {r['busy']:.2f} CPU-s from the first start to idle "
          f"(floor: {floor_busy:.2f} CPU-s in {floor:.2f}s, {100 * floor_busy / floor / ncpu:.0f}% "
          f"of {ncpu} CPUs); CPU-bound, this run could not take less than "
          f"{r['busy'] / ncpu:.2f}s = {r['busy'] / ncpu / floor:.2f}x the floor")


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
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200, help="two-step jobs (2x attempts)")
    ap.add_argument("--slots", type=int, default=8, help="codex_slots per node")
    ap.add_argument("--baseline", metavar="REF", help="also run phh as of this git ref")
    ap.add_argument("--profile", action="store_true", help="cProfile each phh (extra runs)")
    ap.add_argument("--no-third", action="store_true", help="skip the third-node phase")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--child-root", help=argparse.SUPPRESS)
    ap.add_argument("--address", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_root:
        return phh_child(args)
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
        ray.init(address=cluster.address, namespace="phh-bench-floor", log_to_driver=False)
        floor, floor_busy = run_floor(n, args.slots)
        ray.shutdown()
        print(f"floor (same spawns by the nodes, no phh): {n} attempts in {floor:.2f}s "
              f"= {n / floor:.1f}/s, the machine busy {floor_busy:.2f} CPU-s; "
              f"load {load_average()}")
        runs = [("after (this checkout)", CHECKOUT)]
        if args.baseline:
            runs.insert(0, (f"before ({args.baseline})", baseline_tree(args.baseline)))
        for i, (label, code) in enumerate(runs):
            r = run_child(label, code, TMP / f"root{i}", cluster.address, args)
            if r is not None:
                report(label, n, floor, r, floor_busy)
        if args.profile:
            for i, (label, code) in enumerate(runs):
                run_child(label, code, TMP / f"prof{i}", cluster.address, args, profile=True)
        if not args.no_third:
            root2 = TMP / "third"
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
