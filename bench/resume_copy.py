"""Copy-on-resume cost for resume chains of 1, 10 and 50 (issue 6 / docs/resume.md, docs/codex.md).

    .venv/bin/python bench/resume_copy.py [--chain 50] [--points 1,10,50] [--reps 30]
                                          [--dir DIR ...] [--synthetic] [--keep]

Part 1 (real, default): one job whose steps form a resume chain s0 <- s1 <- ... <- sN, run by
the real phh engine driving the REAL codex binary against the offline stand-in model. Each
resume copies only the source attempt's `codex_home/sessions/` (the rollout grows by one turn
per link). The runner's `_copy_resume_base` is wrapped to record, for every resume, the bytes
and files it copied, the time it took and the method (reflink / copy_file_range / read_write);
the source is hashed before and after each copy (must be byte-identical).

Part 2 (micro): the `sessions/` of the attempts at the chosen chain depths are copied `--reps`
times into each `--dir` (default: a temp dir; pass a reflink-capable mount, e.g. XFS with
reflink=1 or btrfs, to see reflink) with: phh's copy (reflink -> copy_file_range ->
read/write), copy_file_range only, read/write only, and `shutil.copytree` (the old code).
Median and p90 per copy; every destination is compared with its source byte for byte.

`--synthetic` skips Codex: rollouts are generated growing like Codex's (a ~40 KB first turn,
then ~N KB per resumed turn, measured from a real chain when one is available; defaults below).

Prints figures, asserts nothing except byte-identity (a mismatch is a bug: exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from phh_engine.engine.loop import Engine  # noqa: E402
from phh_engine.interfaces.submit import submit  # noqa: E402
from phh_engine.models import HarnessSettings  # noqa: E402
from phh_engine.runners.local import LocalRunner  # noqa: E402
from phh_engine.runners.workspace import FICLONE, CopyStats, copy_tree  # noqa: E402
from phh_engine.standin import StandIn, script  # noqa: E402
from phh_engine.store.files import atomic_write_json  # noqa: E402
from phh_engine.store.harness_config import materialize  # noqa: E402
from phh_engine.store.paths import Layout  # noqa: E402

GOAL = ("This batch measures what a long chain of Codex resumes costs phh when each resume "
        "copies the previous attempt's conversation files into a fresh session store. ") * 8
SYN_FIRST_TURN = 40_000  # bytes of a fresh single-turn rollout (docs/codex.md: 36-62 KB)
SYN_PER_TURN = 12_000  # bytes a resumed turn appends (overridden by a real chain's slope)


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_symlink():
            h.update(b"L" + os.readlink(p).encode())
        elif p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def tree_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    return sum(p.stat().st_size for p in files), len(files)


def fmt(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def reflink_supported(d: Path) -> bool:
    import fcntl

    d.mkdir(parents=True, exist_ok=True)
    a, b = d / ".reflink_probe_a", d / ".reflink_probe_b"
    try:
        a.write_bytes(b"x" * 4096)
        with open(a, "rb") as fi, open(b, "wb") as fo:
            fcntl.ioctl(fo.fileno(), FICLONE, fi.fileno())
        return True
    except OSError:
        return False
    finally:
        a.unlink(missing_ok=True)
        b.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- part 1: real
@dataclass
class CopyRecord:
    depth: int  # 1 = the first resume (copies s0's sessions)
    bytes: int
    files: int
    seconds: float
    method: str
    identical: bool


@dataclass
class Chain:
    root: Path
    sessions: dict[int, Path] = field(default_factory=dict)  # depth -> source sessions/ dir
    records: list[CopyRecord] = field(default_factory=list)
    thread_ok: bool = True
    wall: float = 0.0


def real_chain(n: int, work: Path) -> Chain:
    root = work / "phh"
    (root / "ws").mkdir(parents=True)
    chain = Chain(root=root)
    layout = Layout(root)
    with StandIn() as standin:
        settings = HarnessSettings()
        settings.codex.config_toml = str(standin.write_config(root / "codex_config.toml"))
        atomic_write_json(layout.settings_path, settings.model_dump(mode="json",
                                                                    exclude_none=True))
        materialize(layout, settings)
        steps: list[dict[str, Any]] = [{"step_id": "s0", "prompt": "Start the chain.\n\n" + script(
            {"final": {"summary": "link 0"}})}]
        for k in range(1, n + 1):
            steps.append({"step_id": f"s{k}", "resume_from": {"step_id": f"s{k - 1}"},
                          "prompt": f"Link {k}.\n\n" + script({"echo_thread": True})})
        lt = root / "chain.json"
        lt.write_text(json.dumps({"batch_goal_summary": GOAL, "working_root": str(root / "ws"),
                                  "jobs": [{"job_id": "chain", "steps": steps}]}))
        bid = submit(layout, lt).batch_id

        original = LocalRunner._copy_resume_base

        def measured(src_home: Path, dst_home: Path) -> None:
            src = src_home / "sessions"
            before = tree_digest(src)
            size, files = tree_size(src)
            t0 = time.perf_counter()
            stats: list[CopyStats] = []
            if src.is_dir():
                stats.append(copy_tree(src, dst_home / "sessions"))
            dt = time.perf_counter() - t0
            same = tree_digest(src) == before and tree_digest(dst_home / "sessions") == before
            depth = int(dst_home.parent.parent.parent.name[1:])  # steps/<sK>/attempts/<dir>
            chain.sessions[depth] = src
            chain.records.append(CopyRecord(depth, size, files, dt,
                                            stats[0].method if stats else "none", same))

        LocalRunner._copy_resume_base = staticmethod(measured)  # type: ignore[method-assign]
        try:
            t0 = time.perf_counter()
            eng = Engine(root, concurrency=1, until_idle=True)
            eng.setup()
            asyncio.run(eng.serve())
            chain.wall = time.perf_counter() - t0
        finally:
            LocalRunner._copy_resume_base = staticmethod(original)  # type: ignore[method-assign]
        threads = set()
        for k in range(n + 1):
            adir = layout.attempts_dir(bid, "chain", f"s{k}")
            (att,) = sorted(adir.iterdir())
            st = json.loads((att / "state.json").read_text())
            threads.add(st.get("codex_thread_id"))
            if st["status"] != "succeeded":
                chain.thread_ok = False
                print(f"  s{k}: {st['status']} {st.get('errors')}")
        chain.thread_ok = chain.thread_ok and len(threads) == 1
    return chain


# ----------------------------------------------------------------------------- synthetic
def synthetic_chain(points: list[int], work: Path, per_turn: int) -> dict[int, Path]:
    """sessions/ trees shaped like Codex's: one rollout-<ts>-<thread>.jsonl under YYYY/MM/DD,
    growing by `per_turn` bytes of JSONL per resumed turn."""
    out: dict[int, Path] = {}
    rng = hashlib.sha256(b"phh")
    for depth in points:
        home = work / f"syn_{depth}" / "sessions" / "2026" / "01" / "14"
        home.mkdir(parents=True)
        target = SYN_FIRST_TURN + per_turn * depth
        lines = []
        size = 0
        i = 0
        while size < target:
            rng.update(str(i).encode())
            line = json.dumps({"timestamp": "2026-01-14T17:30:00.000Z", "type": "response_item",
                               "payload": {"type": "message", "i": i,
                                           "text": rng.hexdigest() * 6}}) + "\n"
            lines.append(line)
            size += len(line)
            i += 1
        (home / "rollout-2026-01-14T17-30-00-0199-synthetic.jsonl").write_text("".join(lines))
        out[depth] = work / f"syn_{depth}" / "sessions"
    return out


# ----------------------------------------------------------------------------- part 2: micro
def micro(sources: dict[int, Path], dirs: list[Path], reps: int) -> bool:
    ok = True
    strategies: dict[str, Any] = {
        "phh copy_tree (reflink>cfr>rw)": lambda s, d: copy_tree(s, d),
        "copy_file_range only": lambda s, d: copy_tree(s, d, methods=("copy_file_range",)),
        "read/write only": lambda s, d: copy_tree(s, d, methods=("read_write",)),
        "shutil.copytree (old)": lambda s, d: shutil.copytree(s, d),
    }
    for base in dirs:
        scratch = Path(tempfile.mkdtemp(prefix="phh_resume_copy_", dir=base))
        try:
            rl = "supported" if reflink_supported(scratch) else "NOT supported"
            print(f"\n## micro: copies into {base} (reflink {rl}), {reps} reps, "
                  "median / p90 per copy")
            print(f"{'depth':>5} {'bytes':>10} {'files':>5}  " + "  ".join(
                f"{k:>30}" for k in strategies))
            for depth, src in sorted(sources.items()):
                # the source lives on `base` too, so a clone is possible there
                local = scratch / f"src_{depth}"
                shutil.copytree(src, local)
                before = tree_digest(local)
                size, files = tree_size(local)
                cells = []
                for name, fn in strategies.items():
                    times = []
                    method = ""
                    for r in range(reps):
                        dst = scratch / f"dst_{depth}_{r}"
                        t0 = time.perf_counter()
                        res = fn(local, dst)
                        times.append(time.perf_counter() - t0)
                        if isinstance(res, CopyStats):
                            method = res.method
                        if r == 0 and tree_digest(dst) != before:
                            print(f"   MISMATCH: {name} depth {depth}")
                            ok = False
                        shutil.rmtree(dst)
                    times.sort()
                    p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
                    cells.append(f"{statistics.median(times) * 1e3:7.2f} / {p90 * 1e3:6.2f} ms"
                                 + (f" {method[:4]}" if method else "     "))
                if tree_digest(local) != before:
                    print(f"   SOURCE CHANGED at depth {depth}")
                    ok = False
                print(f"{depth:>5} {fmt(size):>10} {files:>5}  " + "  ".join(
                    f"{c:>30}" for c in cells))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chain", type=int, default=50, help="resumes in the real chain")
    ap.add_argument("--points", default="1,10,50", help="chain depths to report/micro-bench")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--dir", action="append", type=Path, default=[],
                    help="where micro copies happen (repeatable; default: a temp dir)")
    ap.add_argument("--synthetic", action="store_true", help="no Codex: generated rollouts")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    points = [int(p) for p in args.points.split(",") if p.strip()]
    work = Path(tempfile.mkdtemp(prefix="phh_bench_resume_")).resolve()
    ok = True
    try:
        sources: dict[int, Path]
        if args.synthetic:
            print(f"# synthetic rollouts: {fmt(SYN_FIRST_TURN)} first turn + "
                  f"{fmt(SYN_PER_TURN)} per resumed turn")
            sources = synthetic_chain(points, work, SYN_PER_TURN)
        else:
            n = max(args.chain, *points)
            print(f"# real chain: {n} resumes, real codex + offline stand-in, engine "
                  "concurrency 1")
            chain = real_chain(n, work)
            ok &= chain.thread_ok and all(r.identical for r in chain.records)
            print(f"chain wall time {chain.wall:.1f}s for {n + 1} attempts; one thread across "
                  f"the chain and every link succeeded: {chain.thread_ok}")
            print(f"\n## copy done by the runner at each resume (into {work})")
            print(f"{'depth':>5} {'bytes':>10} {'files':>5} {'ms':>8}  method           "
                  "source identical")
            by_depth = {r.depth: r for r in chain.records}
            for d in sorted(set(points) | {1, n}):
                r = by_depth.get(d)
                if r:
                    print(f"{d:>5} {fmt(r.bytes):>10} {r.files:>5} {r.seconds * 1e3:8.2f}  "
                          f"{r.method:<16} {r.identical}")
            total = sum(r.bytes for r in chain.records)
            print(f"total copied over the chain: {fmt(total)} in "
                  f"{sum(r.seconds for r in chain.records) * 1e3:.1f} ms "
                  f"(O(n^2) bytes: each link copies the whole rollout so far)")
            if len(chain.records) > 1:
                first, last = by_depth[1], by_depth[max(by_depth)]
                slope = (last.bytes - first.bytes) / max(1, last.depth - first.depth)
                print(f"rollout growth: {fmt(slope)} per resumed turn")
            sources = {d: chain.sessions[d] for d in points if d in chain.sessions}
        ok &= micro(sources, args.dir or [work], args.reps)
    finally:
        if args.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\nbyte-identical sources and copies:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
