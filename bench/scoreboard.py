"""Scoreboard latency on a synthetic 1000-job store (2 steps each, every attempt terminal).

    .venv/bin/python bench/scoreboard.py [--jobs 1000] [--repeat 5] [--profile] [--keep]

The store is made by `phh init` + `phh submit` (through the CLI entry point, bench/common.py)
and then a synthetic writer (on phh_tui.synthetic.AttemptWriter, which the dashboard's synthetic
store uses too) that lays out attempt directories exactly as the runner does (meta.json,
state.json, final.json, handoff.json, events, a codex_home/sessions rollout, current.json),
built from phh's own models and serialised with `phh_engine.store.files.to_bytes`, but without the
per-file fsync (that only matters for crash safety, not for what a reader sees). A few jobs
retried, failed or need attention, so every scoreboard section has rows.

Timed, as subprocesses (wall time; median of --repeat after one warm-up run, commands
interleaved), in two phases:
1. no engine: `phh scoreboard --json` and `--batch ID --json` derive the views from the store;
   also interpreter start, `import phh_tui.cli` and `phh --help`.
2. a real engine serving the store (`phh run --no-ui` with PHH_CODEX_BIN = bench/fake_codex;
   nothing is left to run, so it only keeps its scoreboard files): the same two commands,
   which then print the engine's files, and `--recompute` (the derivation, for reference).
Then in-process: StoreIndex.load() (everything, as the engine loads), the CLI's
StoreIndex(for_scoreboards=True).load(), and the derivations. Prints figures, asserts
nothing (docs/architecture.md#tests).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:  # `python bench/scoreboard.py` from a checkout without install
    sys.path.insert(0, str(REPO))

from common import FAKE_CODEX, cpu_seconds, load_average, submit_two_step_jobs  # noqa: E402

from phh_engine.derive.scoreboards import batch_scoreboard, system_scoreboard  # noqa: E402
from phh_engine.models import (  # noqa: E402
    AttemptState,
    BatchMeta,
    ExecutionPolicy,
    NormalizedJob,
    RunReport,
    Usage,
    utcnow,
)
from phh_engine.store import board_files  # noqa: E402
from phh_engine.store.files import (  # noqa: E402
    read_model,
    to_bytes,
)
from phh_engine.store.index import StoreIndex  # noqa: E402
from phh_engine.store.paths import (  # noqa: E402
    CODEX_HOME,
    EVENTS,
    FINAL_JSON,
    FINAL_TXT,
    HANDOFF,
    META,
    STATE,
    Layout,
)
from phh_engine.store.pointers import build_current  # noqa: E402
from phh_tui import cli  # noqa: E402
from phh_tui.synthetic import AttemptWriter, Parent  # noqa: E402

TARGET_S = 0.3
PROMPT = "Synthetic step: inspect the module assigned to this job and report what you found.\n"
GOAL = (
    "This synthetic batch exists only to measure how fast phh can derive and print its "
    "scoreboards from a large runs store: one thousand jobs with two steps each, where the "
    "second step resumes the conversation of the first, and where a few jobs retried, failed "
    "or need an operator's attention so that every section of the scoreboard has rows. "
) * 4


# ---------------------------------------------------------------- synthetic store
def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


class StoreWriter(AttemptWriter):
    """Attempt directories as the runner leaves them, without spawning anything."""

    codex_cli_version = "0.169.0-fake"
    phh_version = "bench"
    host = "bench-host"

    def __init__(self, layout: Layout, meta: BatchMeta) -> None:
        super().__init__(layout)
        self.batch = meta
        self.clock = meta.submitted_at

    def exec_options(self, job: NormalizedJob, policy: ExecutionPolicy) -> list[str]:
        return ["--json", "--color", "never", "-C", job.working_directory, "--sandbox",
                policy.sandbox, "--skip-git-repo-check", "-c", 'approval_policy="never"']

    def attempt(self, job_index: int, step_index: int, status: str, *,
                failure_class: str | None = None, report_status: str | None = "ok",
                parent: Parent | None = None,
                retry_of: str | None = None, number: int = 1) -> Parent:
        """Write one terminal attempt; returns (run_id, dir path, thread id)."""
        bm = self.batch
        job = bm.jobs[job_index]
        step = job.steps[step_index]
        started = self.clock = self.clock + timedelta(milliseconds=250)
        ended = started + timedelta(seconds=42)
        meta, path, thread = self.new_attempt(bm, job_index, step_index, started=started,
                                              parent=parent, retry_of=retry_of, number=number)
        run_id = meta.run_id
        sessions = path / CODEX_HOME / "sessions" / "2026" / "01" / "01"
        sessions.mkdir(parents=True)
        _write(sessions / f"rollout-x-{thread}.jsonl",
               b'{"type":"session_meta","payload":{"id":"' + thread.encode() + b'"}}\n')
        report: RunReport | None = None
        if report_status is not None:
            report = RunReport(schema_version="1.0.0", status=report_status,  # type: ignore[arg-type]
                               summary=f"{job.job_id}/{step.step_id}: synthetic {status}",
                               files_read=["README.md"], files_written=[], artifacts=[])
        errors = [f"synthetic {failure_class}"] if failure_class else []
        state = AttemptState(
            batch_id=bm.batch_id, job_id=job.job_id, step_id=step.step_id, run_id=run_id,
            runner_id="local", status=status,  # type: ignore[arg-type]
            updated_at=ended, started_at=started, ended_at=ended, last_heartbeat_at=ended,
            last_event_at=ended, current_item="message: synthetic report", pid=4242,
            exit_code=0 if status != "failed" else 1,
            termination_reason=(
                "agent_reported_needs_attention" if status == "needs_attention" else "exit"),
            failure_class=failure_class, codex_thread_id=thread, turn_completed=True,  # type: ignore[arg-type]
            usage=Usage(input_tokens=12000, cached_input_tokens=8000, output_tokens=900),
            artifacts=[EVENTS, FINAL_JSON, FINAL_TXT, META, STATE], errors=errors,
        )
        _write(path / META, to_bytes(meta))
        _write(path / "prompt.txt", PROMPT.encode())
        _write(path / EVENTS, b'{"type":"thread.started","thread_id":"' + thread.encode()
               + b'"}\n{"type":"turn.started"}\n{"type":"turn.completed","usage":{}}\n')
        if report is not None:
            text = report.model_dump_json().encode()
            _write(path / FINAL_TXT, text + b"\n")
            _write(path / FINAL_JSON, to_bytes(report.model_dump(mode="json")))
            if status == "succeeded":
                _write(path / HANDOFF, to_bytes({
                    "schema_version": "1.0.0", "batch_id": bm.batch_id, "job_id": job.job_id,
                    "step_id": step.step_id, "run_id": run_id, "status": status,
                    "final_json_path": str(path / FINAL_JSON), "summary": report.summary,
                    "codex_thread_id": thread}))
        _write(path / STATE, to_bytes(state))
        return run_id, path, thread


def build_store(tmp: Path, jobs: int) -> tuple[Path, str, dict[str, int]]:
    root = tmp / "store"
    batch_id = submit_two_step_jobs(root, jobs, goal=GOAL, prompt=PROMPT)["batch_id"]
    return root, batch_id, fill_batch(root, batch_id, jobs)


def fill_batch(root: Path, batch_id: str, jobs: int) -> dict[str, int]:
    """Terminal attempts for every job of a submitted batch (see the module docstring)."""
    layout = Layout(root)
    meta = read_model(layout.batch_meta(batch_id), BatchMeta)
    assert meta is not None
    w = StoreWriter(layout, meta)
    shape = {"jobs": jobs, "attempts": 0, "retried": 0, "failed": 0, "needs_attention": 0}
    for i in range(jobs):
        if i % 100 == 3:  # step1 fails twice (budget spent): step2 stays blocked
            first = w.attempt(i, 0, "failed", failure_class="model_error", report_status=None)
            w.attempt(i, 0, "failed", failure_class="model_error", report_status=None,
                      retry_of=first[0], number=2)
            shape["failed"] += 1
            continue
        s1 = None
        if i % 20 == 0:  # one retry, then success
            first = w.attempt(i, 0, "failed", failure_class="nonzero_exit", report_status=None)
            s1 = w.attempt(i, 0, "succeeded", retry_of=first[0], number=2)
            shape["retried"] += 1
        else:
            s1 = w.attempt(i, 0, "succeeded")
        if i % 50 == 7:
            w.attempt(i, 1, "needs_attention", failure_class="agent_reported_failure",
                      report_status="needs_attention", parent=s1)
            shape["needs_attention"] += 1
        else:
            w.attempt(i, 1, "succeeded", parent=s1)
    now = utcnow()
    for job in meta.jobs:
        _write(layout.current(batch_id, job.job_id),
               to_bytes(build_current(layout, batch_id, job.job_id, now)))
    shape["attempts"] = w.seq
    return shape


# ---------------------------------------------------------------- timing
def _phh_cmd() -> list[str]:
    script = Path(sys.executable).with_name("phh")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "phh_tui.cli"]


Env = dict[str, str]


def _time_rounds(cmds: list[tuple[list[str], Env]], repeat: int
                 ) -> tuple[list[list[float]], list[list[float]], list[int]]:
    """Wall and CPU (user+sys) times per command: one warm-up each, then `repeat` rounds of
    one run each. CPU moves less than wall time when other work shares the two cores."""
    times: list[list[float]] = [[] for _ in cmds]
    cpu: list[list[float]] = [[] for _ in cmds]
    sizes = [0] * len(cmds)
    for k in range(repeat + 1):
        for i, (argv, env) in enumerate(cmds):
            c0 = cpu_seconds(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            out = subprocess.run(argv, capture_output=True, check=True, env=env)
            if k:
                times[i].append(time.perf_counter() - t0)
                cpu[i].append(cpu_seconds(resource.RUSAGE_CHILDREN) - c0)
            sizes[i] = len(out.stdout)
    return times, cpu, sizes


def _time_fn(fn: Callable[[], object], repeat: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _row(label: str, times: list[float], note: str = "") -> str:
    med = statistics.median(times)
    flag = ""
    if note == "target":
        flag = "  OK (< 0.3 s)" if med < TARGET_S else "  MISSED (target < 0.3 s)"
        note = ""
    return (f"  {label:44s} median {med * 1000:8.1f} ms   min {min(times) * 1000:8.1f}   "
            f"max {max(times) * 1000:8.1f}{flag}{'  ' + note if note else ''}")


def _importtime(argv: list[str], env: Env, top: int = 15) -> list[str]:
    """`python -X importtime`: the slowest imports (cumulative) of one CLI call."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "phh_tui.cli", *argv],
                         capture_output=True, text=True, check=True, env=env)
    rows: list[tuple[int, int, str]] = []
    for line in out.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(parts) != 3:
            continue
        try:
            self_us, cum_us = int(parts[0]), int(parts[1])
        except ValueError:  # the header line
            continue
        rows.append((cum_us, self_us, parts[2].strip()))
    rows.sort(reverse=True)
    total = max((r[0] for r in rows), default=0)
    lines = [f"  {'cumulative ms':>13s} {'self ms':>8s}  module"]
    lines += [f"  {c / 1000:13.1f} {s / 1000:8.1f}  {n}" for c, s, n in rows[:top]]
    lines.append(f"  (largest top-level import: {total / 1000:.1f} ms)")
    return lines


def _profile(fn: Callable[[], object], top: int = 25) -> str:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf).strip_dirs()
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def start_engine(root: Path, env: Env, timeout: float = 120.0) -> subprocess.Popen[bytes]:
    """`phh run --no-ui` on the store, returned once it serves fresh scoreboard files (the
    state `phh scoreboard` looks for: engine lock held, health.json of this run, boards
    written since)."""
    env = {**env, "PHH_CODEX_BIN": str(FAKE_CODEX)}
    proc = subprocess.Popen([*_phh_cmd(), "--root", str(root), "run", "--no-ui"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    board = Layout(root).system_scoreboard
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"engine exited {proc.returncode}: "
                             f"{proc.stderr.read().decode() if proc.stderr else ''}")
        if board_files.engine_board(root, None) is not None:
            return proc
        time.sleep(0.2)  # polling a subprocess's progress, not synchronising tests
    proc.kill()
    raise SystemExit(f"engine did not write fresh scoreboards within {timeout:g}s ({board})")


def stop_engine(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="phh scoreboard latency on a synthetic store")
    ap.add_argument("--jobs", type=int, default=1000, help="jobs (x 2 steps); default 1000")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per figure; default 5")
    ap.add_argument("--profile", action="store_true",
                    help="also print -X importtime and cProfile of the in-process work")
    ap.add_argument("--no-engine", action="store_true",
                    help="skip phase 2 (the commands while a real engine serves the store)")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still remove the temp dir

    tmp = Path(tempfile.mkdtemp(prefix="phh-bench-sb-"))
    engine: subprocess.Popen[bytes] | None = None
    try:
        t0 = time.perf_counter()
        root, batch_id, shape = build_store(tmp, args.jobs)
        built = time.perf_counter() - t0
        files = sum(len(f) for _, _, f in os.walk(root / "runs"))
        os.sync()  # no writeback of the fresh store while timing
        print(f"phh scoreboard: synthetic store of {shape['jobs']} jobs x 2 steps, "
              f"{shape['attempts']} terminal attempts ({shape['retried']} retried, "
              f"{shape['failed']} failed, {shape['needs_attention']} needs_attention), "
              f"{files} files, built in {built:.1f} s")
        print(f"root {root}; load average {load_average()}\n")

        phh = [*_phh_cmd(), "--root", str(root)]
        r = args.repeat
        # Commands run round-robin (one of each per round), so a burst of other work on a
        # shared machine spreads over all of them instead of skewing one figure.
        # Bytecode as an installed package has it: this machine may set PYTHONDONTWRITEBYTECODE
        # and the editable install has no __pycache__, so every call would compile phh's
        # sources. A private PYTHONPYCACHEPREFIX (filled by the warm-up) keeps the repo clean.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        py = sys.executable
        cmds: list[tuple[str, list[str], Env, bool]] = [
            ("phh scoreboard --json --recompute", [*phh, "scoreboard", "--json", "--recompute"],
             env, True),
            ("phh scoreboard --batch ID --json --recompute",
             [*phh, "scoreboard", "--batch", batch_id, "--json", "--recompute"], env, True),
            ("phh scoreboard --json (kept view)", [*phh, "scoreboard", "--json"], env, True),
            ("phh scoreboard --batch ID --json (kept view)",
             [*phh, "scoreboard", "--batch", batch_id, "--json"], env, True),
            ("python -c pass (interpreter start)", [py, "-c", "pass"], env, False),
            ("python -c 'import phh_tui.cli'", [py, "-c", "import phh_tui.cli"], env, False),
            ("phh --help", [*phh, "--help"], env, False),
        ]
        if os.environ.get("PYTHONDONTWRITEBYTECODE"):
            cmds.append(("phh scoreboard --json, inherited env (no .pyc)",
                         [*phh, "scoreboard", "--json"], dict(os.environ), True))

        def report(title: str, rows: list[tuple[str, list[str], Env, bool]]) -> None:
            times, cpu, sizes = _time_rounds([(c[1], c[2]) for c in rows], r)
            print(f"{title} ({r} rounds after a warm-up; target {TARGET_S} s; "
                  "bytecode cached):")
            for (label, _, _, target), t, c, size in zip(rows, times, cpu, sizes, strict=True):
                out = f"   ({size / 1024:.0f} KiB out)" if target else ""
                print(_row(label, t, "target" if target else "") + out)
                print(f"  {'':44s}   cpu {statistics.median(c) * 1000:8.1f} ms (user+sys)")

        # The derivation keeps its view only when the inputs were quiet for 2 s before it
        # began (board_files.CACHE_QUIET_NS): a store that a run finished a while ago.
        time.sleep(max(0.0, os.stat(root / "runs").st_mtime + 2.5 - time.time()))
        report("1. no engine: --recompute derives from the store (what the first call after "
               "a change does);\n   a plain call prints the view the last derivation kept "
               "(settled store, inputs unchanged); subprocess wall time", cmds)
        kept = [p for b in (None, batch_id) if (p := board_files.cache_file(root, b)).is_file()]
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 1024:.0f} KiB" for p in kept)
        print(f"  kept views on disk: {len(kept)} of 2 ({sizes})")

        if not args.no_engine:
            t0 = time.perf_counter()
            engine = start_engine(root, env)
            print(f"\n(engine serving after {time.perf_counter() - t0:.1f} s; load average "
                  f"{load_average()})")
            report("2. engine serving: its own files; subprocess wall time", [
                ("phh scoreboard --json", [*phh, "scoreboard", "--json"], env, True),
                ("phh scoreboard --batch ID --json",
                 [*phh, "scoreboard", "--batch", batch_id, "--json"], env, True),
                ("phh scoreboard --json --recompute",
                 [*phh, "scoreboard", "--json", "--recompute"], env, True),
            ])
            stop_engine(engine)
            engine = None

        layout = Layout(root)
        now = utcnow()

        def load(for_scoreboards: bool = False) -> StoreIndex:
            idx = StoreIndex(layout, for_scoreboards=for_scoreboards)
            idx.load()
            return idx

        index = load()
        batch = index.batches[batch_id]
        boards = {batch_id: batch_scoreboard(batch, now)}
        print("\nin-process (median of the same runs):")
        print(_row("StoreIndex.load() (everything: the engine)", _time_fn(load, r)))
        print(_row("StoreIndex(for_scoreboards=True).load()",
                   _time_fn(lambda: load(True), r)))
        print(_row("batch_scoreboard(batch)", _time_fn(lambda: batch_scoreboard(batch, now), r)))
        print(_row("system_scoreboard(batches) (recomputes)",
                   _time_fn(lambda: system_scoreboard(index.batches.values(), now), r)))
        print(_row("system_scoreboard(.., per_batch cache)",
                   _time_fn(lambda: system_scoreboard(index.batches.values(), now, boards), r)))
        print(_row("BatchScoreboard.model_dump_json(indent=2)",
                   _time_fn(lambda: boards[batch_id].model_dump_json(indent=2), r)))
        print(_row("cli.cmd_scoreboard --json --recompute (no interpreter start)", _time_fn(
            lambda: _quiet(["--root", str(root), "scoreboard", "--json", "--recompute"]), r)))
        print(_row("cli.cmd_scoreboard --batch ID --json --recompute (same)", _time_fn(
            lambda: _quiet(["--root", str(root), "scoreboard", "--batch", batch_id, "--json",
                            "--recompute"]), r)))

        if args.profile:
            print("\n-X importtime of `phh scoreboard --json` (slowest imports):")
            print("\n".join(_importtime(["--root", str(root), "scoreboard", "--json"], env)))
            print("\ncProfile of StoreIndex(for_scoreboards=True).load():")
            print(_profile(lambda: load(True)))
            print("cProfile of batch_scoreboard(batch):")
            print(_profile(lambda: batch_scoreboard(batch, now)))
    finally:
        if engine is not None:
            stop_engine(engine)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _quiet(argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
