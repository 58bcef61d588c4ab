"""Event-loop lag of the engine while many agents stream events (run on demand; prints).

    .venv/bin/python bench/loop_lag.py [--jobs 100] [--concurrency 100] [--events 60]
                                       [--gap 0.1] [--rounds 2]

N jobs x 2 steps through the real engine in-process, with `bench/fake_codex.py` as Codex
streaming `--events` command events `--gap` seconds apart (FAKE_CODEX_STREAM), and a probe on
the loop that sleeps 10 ms and records how late it wakes. Every agent's monitor writes its
state.json (fsynced) at most once a second while events arrive, so a hundred agents mean
up to a hundred writes a second. Variants, each in its own process, interleaved per round:

- engine: as shipped (the monitor's state writes run on the attempt worker threads);
- what-if loop-writes: those writes made on the event loop itself (how it was before).

Why it matters: the loop also runs heartbeats, cancels, the scheduler and (in-process) the
dashboard and API; a stalled loop is an engine that looks hung.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import load_average, submit_two_step_jobs  # noqa: E402

FAKE = HERE / "fake_codex.py"
GOAL = (
    "This batch exists only to measure how late the phh engine's event loop runs while many "
    "agents stream events at once: every step runs a fake codex that prints command events "
    "for a few seconds and then answers with a valid Run Report, so nothing here depends on "
    "a model, a network or an API key, and what is measured is the engine's own work. "
) * 3
VARIANTS = ("engine", "loop-writes")


def run_variant(variant: str, jobs: int, concurrency: int, events: int, gap: float) -> dict:
    """One engine run in this process; returns its figures."""
    from phh_engine.engine.loop import Engine
    from phh_engine.models import HarnessSettings
    from phh_engine.runners import local as runner
    from phh_engine.store.files import atomic_write_json, write_state
    from phh_engine.store.harness_config import materialize
    from phh_engine.store.paths import Layout

    tmp = Path(tempfile.mkdtemp(prefix="phh-bench-lag-"))
    root = tmp / "phh"
    submit_two_step_jobs(root, jobs, goal=GOAL, prompt="stream events, then report\n",
                         retries={"max_attempts": 1},
                         execution_policy={"capture_git_artifacts": False})
    layout = Layout(root)
    settings = HarnessSettings()
    settings.limits.global_concurrency = concurrency
    atomic_write_json(layout.settings_path, settings.model_dump(mode="json", exclude_none=True))
    materialize(layout, settings)
    os.environ["PHH_CODEX_BIN"] = str(FAKE)
    os.environ["FAKE_CODEX_STREAM"] = f"{events},{gap}"
    if variant == "loop-writes":
        real = runner.LocalRunner._in_io

        async def in_io(self: runner.LocalRunner, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
            if fn is write_state:
                return fn(*args, **kwargs)
            return await real(self, fn, *args, **kwargs)

        runner.LocalRunner._in_io = in_io  # type: ignore[method-assign]
    engine = Engine(root, concurrency=concurrency, until_idle=True)
    engine.setup()
    lags: list[float] = []

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - t - 0.01)

    async def main() -> float:
        task = asyncio.create_task(probe())
        t0 = time.perf_counter()
        await engine.serve()
        task.cancel()
        return time.perf_counter() - t0

    try:
        wall = asyncio.run(main())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lags.sort()

    def q(p: float) -> float:
        return 1000 * lags[min(len(lags) - 1, int(p * len(lags)))]

    return {"variant": variant, "wall": wall, "p50": q(0.5), "p99": q(0.99),
            "max": 1000 * lags[-1], "completed": engine.completed, "load": load_average()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--events", type=int, default=60)
    ap.add_argument("--gap", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one child run
    args = ap.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.jobs, args.concurrency, args.events,
                                     args.gap)))
        return 0
    print(f"loop lag: {args.jobs} jobs x 2 steps, concurrency {args.concurrency}, each agent "
          f"streams {args.events} events {args.gap:g} s apart; load {load_average()}")
    print(f"{'variant':14s} {'wall s':>7s} {'lag p50 ms':>11s} {'p99 ms':>8s} {'max ms':>8s} "
          f"{'attempts':>9s}  load at end")
    for _ in range(args.rounds):
        for variant in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--variant", variant, "--jobs", str(args.jobs),
                 "--concurrency", str(args.concurrency), "--events", str(args.events),
                 "--gap", str(args.gap)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{r['variant']:14s} {r['wall']:7.1f} {r['p50']:11.1f} {r['p99']:8.1f} "
                  f"{r['max']:8.1f} {r['completed']:9d}  {r['load']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
