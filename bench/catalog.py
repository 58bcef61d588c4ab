"""Engine start-up and catalog reads on a large synthetic store, beside today's engine.

    .venv/bin/python bench/catalog.py [--jobs 10000] [--keep DIR] [--store DIR]

The store is bench/scoreboard.py's (`phh init` + `phh submit` of JOBS two-step jobs, then
attempt directories written with phh's own models by its StoreWriter; a few retried, failed
or needing attention, all finished). Timed, each in a fresh process (wall time from the
process start, so imports count; peak RSS from getrusage):

* engine time-to-serving: `Engine.serve()` until its runner health.json is written (the
  engine then schedules and answers), wall and CPU (user+system: on a shared machine the
  wall time mostly measures the other work), as
  - today: no catalog, every batch loaded (`use_catalog=False, bounded=False`),
  - first start with a catalog (it is built from the loaded store as boards are written),
  - warm start (the catalog verified by fingerprints; settled batches not loaded);
* cold CLI processes (wall and CPU): `phh scoreboard --json` (from the catalog: every batch
  settled) beside `--recompute`, `phh jobs B --limit 100 --json` (first page), `phh history
  retries --json`, `phh history attempts --status failed --limit 50 --json`, beside today's
  `phh jobs B --json` (the whole batch), and `phh --help` (the interpreter and imports);
* in-process: one page of steps and of attempts from the catalog; `phh reindex`'s
  catalog rebuild.

Prints figures and the targets (serving <= 2 s, RSS <= 300 MB, CLI read <= 150 ms, page <=
50 ms); asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from common import FAKE_CODEX, cli_json, load_average, submit_two_step_jobs  # noqa: E402
from scoreboard import GOAL, PROMPT, build_store, fill_batch  # noqa: E402

SERVE = r"""
import time, sys, os, threading, asyncio, resource, json
t0 = time.perf_counter()
from phh_engine.engine.loop import Engine
root, bounded, use = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
eng = Engine(root, bounded=bounded, use_catalog=use, concurrency=1)
health = os.path.join(root, "runners", "local", "health.json")
try:
    os.unlink(health)
except FileNotFoundError:
    pass
th = threading.Thread(target=lambda: asyncio.run(eng.serve()), daemon=True)
th.start()
while True:
    try:
        if json.load(open(health))["pid"] == os.getpid():
            break
    except (OSError, ValueError, KeyError):
        pass
    time.sleep(0.005)
serving = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
cpu = ru.ru_utime + ru.ru_stime
rss = ru.ru_maxrss / 1024
# let the first board pass finish (it fills a new catalog), then stop
deadline = time.monotonic() + 600
while (eng.boards.catalog_full and time.monotonic() < deadline):
    time.sleep(0.05)
eng.stop()
th.join(600)
total = time.perf_counter() - t0
rss_end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"serving_s": serving, "cpu_s_at_serving": cpu, "rss_mb_at_serving": rss,
                  "exit_s": total,
                  "peak_rss_mb": rss_end, "loaded_batches": len(eng.index.batches)}))
"""


def build_batches(tmp: Path, jobs: int, batches: int) -> tuple[Path, str, dict[str, int]]:
    """`batches` batches of jobs/batches two-step jobs each, written as build_store does;
    returns the root, the last batch and the shape summed over batches."""
    root = tmp / "store"
    per = jobs // batches
    first = submit_two_step_jobs(root, per, goal=GOAL, prompt=PROMPT)["batch_id"]
    ids = [first]
    table = json.loads((root / "launch_table.json").read_text())
    for k in range(1, batches):
        table["batch_id"] = f"batch_hist_{k:03d}"
        path = root / f"launch_table_{k}.json"
        path.write_text(json.dumps(table))
        ids.append(cli_json("--root", str(root), "submit", str(path), "--json")["batch_id"])
    shape: dict[str, int] = {}
    for bid in ids:
        for key, val in fill_batch(root, bid, per).items():
            shape[key] = shape.get(key, 0) + val
    return root, ids[-1], shape


def serve(root: Path, bounded: bool, use: bool, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", SERVE, str(root), str(int(bounded)),
                          str(int(use))], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cli(root: Path, argv: list[str], env: dict[str, str],
        repeat: int = 5) -> tuple[float, int, float]:
    """Median wall seconds of `repeat` cold `phh ARGV` processes (after one unmeasured run),
    the output size, and their median CPU seconds (user + system: on a loaded machine the
    wall time is mostly other work's)."""
    import resource

    phh = Path(sys.executable).with_name("phh")
    times, cpus = [], []
    size = 0
    for _ in range(repeat + 1):
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run([str(phh), "--root", str(root), *argv], capture_output=True,
                             env=env, check=True)
        times.append(time.perf_counter() - t0)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime)
        size = len(out.stdout)
    return statistics.median(times[1:]), size, statistics.median(cpus[1:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--batches", type=int, default=1,
                    help="split the jobs over this many batches (months of history)")
    ap.add_argument("--store", help="reuse a store this script built (its tmp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the store (prints where)")
    args = ap.parse_args()
    tmp = Path(args.store) if args.store else Path(tempfile.mkdtemp(prefix="phh-catalog-"))
    env = {**os.environ, "PHH_CODEX_BIN": str(FAKE_CODEX), "PYTHONPATH": str(REPO)}
    env.pop("PHH_CATALOG", None)
    print(f"load average before: {load_average()}")
    try:
        if args.store:
            root = tmp / "store"
            batch_id = next(n for n in os.listdir(root / "runs") if n.startswith("batch_"))
            shape = {"jobs": "?", "attempts": "?"}
        else:
            t0 = time.perf_counter()
            if args.batches == 1:
                root, batch_id, shape = build_store(tmp, args.jobs)
            else:
                root, batch_id, shape = build_batches(tmp, args.jobs, args.batches)
            print(f"built {shape} in {time.perf_counter() - t0:.0f} s at {tmp}")
        cat_file = root / "runs" / "_system" / "catalog.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{cat_file}{suffix}").unlink(missing_ok=True)
        print(f"store: {shape.get('jobs')} jobs x 2 steps, {shape.get('attempts')} attempts")
        today = serve(root, bounded=False, use=False, env=env)
        first = serve(root, bounded=True, use=True, env=env)
        warm = serve(root, bounded=True, use=True, env=env)
        warm2 = serve(root, bounded=True, use=True, env=env)
        print("engine start (fresh process; serving = health.json written):")
        for label, r in (("today (no catalog, loads all)", today),
                         ("first start, builds the catalog", first),
                         ("warm start (catalog verified)", warm),
                         ("warm start again", warm2)):
            print(f"  {label:34s} serving {r['serving_s']:6.2f} s "
                  f"(CPU {r['cpu_s_at_serving']:5.2f} s)   RSS at serving "
                  f"{r['rss_mb_at_serving']:6.0f} MB   peak RSS {r['peak_rss_mb']:6.0f} MB   "
                  f"batches in memory {r['loaded_batches']}")
        print(f"  targets: serving <= 2 s, RSS <= 300 MB  ->  warm: "
              f"{'OK' if warm2['serving_s'] <= 2 else 'MISSED'} / "
              f"{'OK' if warm2['rss_mb_at_serving'] <= 300 else 'MISSED'}")
        print("cold CLI processes (median of 5, wall and CPU; target <= 150 ms):")
        for label, argv in (
                ("today: phh scoreboard --json --recompute", ["scoreboard", "--json",
                                                              "--recompute"]),
                ("phh scoreboard --json (from the catalog)", ["scoreboard", "--json"]),
                ("today: phh jobs B --json (whole batch)", ["jobs", batch_id, "--json"]),
                ("phh jobs B --limit 100 --json", ["jobs", batch_id, "--limit", "100",
                                                   "--json"]),
                ("phh jobs B --status failed --json", ["jobs", batch_id, "--status", "failed",
                                                       "--json"]),
                ("phh history attempts --status failed", ["history", "attempts", "--status",
                                                          "failed", "--limit", "50", "--json"]),
                ("phh history retries --json", ["history", "retries", "--json"]),
                ("phh history tokens --by day --json", ["history", "tokens", "--by", "day",
                                                        "--json"]),
                ("phh history slowest --json", ["history", "slowest", "--json"]),
                ("phh --help (interpreter + imports)", ["--help"])):
            med, size, cpu = cli(root, argv, env)
            print(f"  {label:42s} {med * 1000:8.1f} ms (CPU {cpu * 1000:6.1f} ms)  "
                  f"{size / 1024:8.1f} KiB")
        from phh_engine.interfaces import history
        from phh_engine.store.catalog import Catalog
        from phh_engine.store.paths import Layout

        cat = Catalog.open(Layout(root))
        print("in-process pages from the catalog (median of 20; target <= 50 ms):")
        for label, fn in (
                ("steps page 1 (100 rows)", lambda: history.steps_page(cat, batch_id)),
                ("steps page, status=failed", lambda: history.steps_page(
                    cat, batch_id, status="failed")),
                ("GET /v1/batches/{b}?limit=100 (batch_page)", lambda: history.batch_page(
                    cat, batch_id, limit=100)),
                ("dashboard window, filter text 'job_0123'", lambda: history.step_window(
                    cat, batch_id, text="job_0123")),
                ("attempts page 1 (100 rows)", lambda: history.attempts_page(cat)),
                ("retry rates", lambda: history.retry_rates(cat))):
            ts = []
            for _ in range(20):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            print(f"  {label:42s} {statistics.median(ts) * 1000:8.2f} ms")
        t0 = time.perf_counter()
        n = cat.rebuild()
        print(f"catalog rebuild from scratch (phh reindex): {time.perf_counter() - t0:.1f} s "
              f"for {n} batch(es); file {cat_file.stat().st_size / 2**20:.1f} MiB")
        cat.close()
    finally:
        print(f"load average after: {load_average()}")
        if not args.keep and not args.store:
            shutil.rmtree(tmp, ignore_errors=True)
        elif args.keep:
            print(f"kept {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
