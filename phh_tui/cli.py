"""`phh` command line: a thin front over the engine's public API (docs/interfaces.md#cli)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from phh_engine.store.paths import Layout, is_phh_root
from phh_tui.cli_common import EXIT_FAIL, EXIT_INVALID, EXIT_OK, id_arg
from phh_tui.cli_common import err as _err
from phh_tui.cli_common import print_json as _print_json
from phh_tui.cli_common import root_of as _root

# Every command imports the engine modules it needs inside its function: `phh scoreboard`,
# `phh --help` and the other quick commands must not pay for the engine, runner, asyncio,
# jsonschema and submit on every call (~0.4 s before any work).


# ---------------------------------------------------------------- commands
def cmd_init(args: argparse.Namespace) -> int:
    from phh_engine.models import HarnessSettings
    from phh_engine.store.files import atomic_write_json
    from phh_engine.store.harness_config import ConfigError, load_settings, materialize

    layout = Layout(_root(args))
    for d in (layout.runs, layout.runners):
        d.mkdir(parents=True, exist_ok=True)
    if not layout.settings_path.exists():
        atomic_write_json(layout.settings_path, HarnessSettings().model_dump(mode="json"))
    try:
        settings = load_settings(layout)
        cfg = materialize(layout, settings)
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_INVALID
    queue = layout.root / settings.interfaces.filesystem_queue_mode.queue_root
    for sub in ("incoming", "accepted", "rejected"):
        (queue / sub).mkdir(parents=True, exist_ok=True)
    out = {"root": str(layout.root), "harness_config_version": cfg.harness_config_version,
           "settings": str(layout.settings_path)}
    if args.json:
        _print_json(out)
    else:
        print(f"initialised {layout.root} (harness config {cfg.harness_config_version}); "
              f"edit {layout.settings_path.name} to change defaults")
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    from phh_engine.interfaces.submit import SubmitError, submit
    from phh_engine.store.harness_config import ConfigError
    from phh_tui.cli_check import cmd_check, print_notes

    if args.check:
        return cmd_check(args)
    if len(args.file) != 1:
        _err("submit takes one Launch Table (use --check to validate several)")
        return EXIT_INVALID
    file = args.file[0]
    layout = Layout(_root(args))
    try:
        res = submit(layout, Path(file), dedupe=args.dedupe)
    except SubmitError as exc:
        if args.json:
            _print_json({"errors": [{"path": i.path, "message": i.message}
                                    for i in exc.issues]})
        _err(f"{file}: Launch Table rejected, nothing was written:\n{exc}")
        return EXIT_INVALID
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_INVALID
    notes = [n.as_dict() for n in res.notes]
    out = {"batch_id": res.batch_id, "accepted_job_ids": res.accepted_job_ids, "notes": notes}
    if args.json:
        _print_json(out)
    else:
        what = "already submitted as" if res.existing else "submitted"
        print(f"{what} {res.batch_id}: {len(res.accepted_job_ids)} job(s)")
        print_notes(notes)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from phh_tui.cli_automation import api_enabled, start_api_for_run
    from phh_tui.cli_doctor import refuse_unrunnable

    refused = refuse_unrunnable(_root(args))  # before the API or any attempt starts
    if refused is not None:
        return refused
    api = None
    if args.api or api_enabled(_root(args)):
        api = start_api_for_run(_root(args))
        if api is None:
            return EXIT_INVALID
    try:
        return _run(args)
    finally:
        if api is not None:
            api.stop()


def _run(args: argparse.Namespace) -> int:
    import asyncio

    if not args.no_ui:
        try:
            from phh_tui.app import run_app
        except ImportError:
            _err("the dashboard is not available in this build; use --no-ui")
            return EXIT_FAIL
        return run_app(_root(args), concurrency=args.concurrency, runner_id=args.runner_id,
                       alerts=args.alerts, ray_address=args.ray)
    from phh_engine.engine.loop import Engine, EngineError
    from phh_engine.runners.doctor import PreflightError
    from phh_engine.store.harness_config import ConfigError

    engine = Engine(_root(args), concurrency=args.concurrency, runner_id=args.runner_id,
                    until_idle=args.until_idle, ray_address=args.ray)
    from phh_tui.headless import HeadlessLog, run_headless

    engine.on_event = HeadlessLog(engine, json_log=args.json_log)
    try:
        engine.setup()
    except PreflightError as exc:
        _err(f"cannot run: {exc}")
        return EXIT_INVALID
    except ConfigError as exc:  # invalid input: the harness config (README exit codes)
        _err(str(exc))
        return EXIT_INVALID
    except EngineError as exc:
        _err(str(exc))
        return EXIT_FAIL
    except Exception as exc:  # e.g. codex not found: say so plainly
        _err(f"cannot start: {exc}")
        return EXIT_FAIL
    return asyncio.run(run_headless(engine))


def cmd_scoreboard(args: argparse.Namespace) -> int:
    """The engine's own file while an engine serves the root and keeps it fresh (a few ms),
    else (system view) the catalog's rows when every batch is settled there, else the view a
    derivation kept while nothing it read has changed (~0.1 s at 1000 jobs), else derived
    from the store here (reads every attempt's state.json)."""
    from phh_engine.store.board_files import cached_board, engine_board

    root = _root(args)
    if not args.recompute:
        served = engine_board(root, args.batch)
        if served is not None:
            board, age = served
            if args.json:
                sys.stdout.write(json.dumps(board, indent=2, ensure_ascii=False) + "\n")
                return EXIT_OK
            return _show_board(args.batch, board, age)
        text = _catalog_board(root) if args.batch is None else None
        text = text if text is not None else cached_board(root, args.batch)
        if text is not None:
            if args.json:
                sys.stdout.write(text + "\n")
                return EXIT_OK
            return _show_board(args.batch, json.loads(text))
    return _derive_scoreboard(root, args.batch, args.json)


def _catalog_board(root: Path) -> str | None:
    """The system view from the catalog when it answers for every batch (all settled): no
    model import, no attempt read (= api_ops.view_json;
    docs/catalog.md#the-scoreboard-from-the-catalog)."""
    from phh_engine.interfaces.history import system_view

    return system_view(Layout(root))


def _derive_scoreboard(root: Path, batch_id: str | None, as_json: bool) -> int:
    import gc

    # A one-shot process that keeps every object it makes until it exits: cyclic GC passes
    # over the thousands of small models would only cost time.
    gc.disable()
    from phh_engine.interfaces.api_ops import derive_view
    from phh_engine.interfaces.artifacts import LookupFailed
    from phh_tui.cli_automation import fail

    try:
        board, text = derive_view(Layout(root), batch_id)
    except LookupFailed as exc:
        return fail(exc, as_json)
    if as_json:
        sys.stdout.write(text + "\n")
        return EXIT_OK
    return _show_board(batch_id, board)


def _show_board(batch_id: str | None, board: Any, age: float | None = None) -> int:
    """Render a scoreboard (a model, or the engine's file as a dict) for people."""
    from rich.console import Console

    from phh_engine.models import BatchScoreboard, SystemScoreboard
    from phh_tui.render import render_batch, render_system

    console = Console()
    if batch_id:
        console.print(render_batch(BatchScoreboard.model_validate(board)))
    else:
        console.print(render_system(SystemScoreboard.model_validate(board)))
    if age is not None:
        console.print(f"[dim]from the serving engine's scoreboard file, computed {age:.0f}s "
                      "ago (--recompute derives it from the store)[/dim]")
    return EXIT_OK


def cmd_reindex(args: argparse.Namespace) -> int:
    import sqlite3

    from phh_engine.store.catalog import (
        Catalog,
        CatalogConfigError,
        CatalogError,
        unwritable_error,
    )
    from phh_engine.store.pointers import reindex

    layout = Layout(_root(args))
    try:
        cat = Catalog.open(layout)  # first: a catalog that cannot be used changes nothing
        n = reindex(layout)
        try:  # the catalog, from scratch (derived from the files, like current.json)
            batches = cat.rebuild()
        except sqlite3.Error as exc:  # e.g. an immutable file: "readonly database"
            raise unwritable_error(cat.path, str(exc)) from None
        finally:
            cat.close()
    except CatalogConfigError as exc:  # PHH_CATALOG names a directory: bad configuration
        _err(str(exc))
        return EXIT_INVALID
    except CatalogError as exc:
        _err(str(exc))
        return EXIT_FAIL
    except OSError as exc:  # current.json under a read-only root
        _err(f"cannot rebuild under {layout.root}: {exc.strerror or exc} "
             f"({exc.filename}); make the root writable")
        return EXIT_FAIL
    if args.json:
        _print_json({"jobs_reindexed": n, "catalog_batches": batches,
                     "catalog": str(cat.path)})
    else:
        print(f"rebuilt current.json for {n} job(s); rebuilt the catalog {cat.path} from "
              f"{batches} batch(es)")
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    from phh_engine.store.harness_config import ConfigError, load_config

    try:
        cfg = load_config(Layout(_root(args)))
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_INVALID
    sys.stdout.write(cfg.model_dump_json(indent=2) + "\n")
    return EXIT_OK


def engine_serving(layout: Layout) -> bool:
    """Is any engine serving this root? (Each holds its runner's lock while it runs.)"""
    from phh_engine.interfaces.api_ops import engine_serving as serving

    return serving(layout)


def cmd_override(args: argparse.Namespace) -> int:
    """cancel | retry | resume | requeue | mark-failed | close | promote: a request file the engine
    applies exactly once; we wait for its result when an engine is running (the same
    operation the HTTP API offers: phh_engine.interfaces.api_ops.request_action)."""
    from phh_engine.interfaces.api_ops import request_action
    from phh_engine.interfaces.artifacts import LookupFailed

    layout = Layout(_root(args))
    try:
        out = request_action(
            layout, args.command, args.batch, getattr(args, "job", None),
            getattr(args, "step", None), run_id=getattr(args, "run", None),
            runner_id=getattr(args, "runner", None), prompt=getattr(args, "prompt", None),
            reason=getattr(args, "reason", None), requested_by="cli", wait=args.wait)
    except LookupFailed as exc:
        _err(exc.message)
        return EXIT_INVALID if exc.status in (400, 422) else EXIT_FAIL
    if args.json:
        _print_json(out)
    else:
        print(f"{out['action']}: {out['status']}: {out['message']}")
    return EXIT_FAIL if out["status"] == "rejected" else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from phh_tui.cli_doctor import refuse_without_codex

    refused = refuse_without_codex()
    if refused is not None:
        return refused
    from phh_tui.demo import run_demo

    return run_demo(Path(args.root) if args.root else None, no_ui=args.no_ui)


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from phh_tui.cli_doctor import VersionAction

    p = argparse.ArgumentParser(
        prog="phh", description="Run many Codex agents in parallel. With no command: the "
        "dashboard on the root (it runs an engine unless one already serves the root).")
    p.add_argument("--root", help="phh root (default: $PHH_ROOT, else the current directory)")
    p.add_argument("--version", action=VersionAction,
                   help="phh's version, and the Codex CLI it would run (version and path)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str, json_flag: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--root", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    add("init", "create runs/, runners/, queue/ and the harness config snapshot").set_defaults(
        func=cmd_init)
    sp = add("submit", "validate a Launch Table and create its batch")
    sp.add_argument("file", nargs="+",
                    help="the Launch Table (with --check: files and directories of them)")
    sp.add_argument("--check", action="store_true",
                    help="only validate: a verdict, errors and notes per table, nothing written;"
                         " exit 0 only if all pass")
    sp.add_argument("--dedupe", action="store_true",
                    help="return the existing batch when this exact file was submitted before")
    sp.set_defaults(func=cmd_submit)
    sp = add("run", "the engine (dashboard unless --no-ui)", json_flag=False)
    sp.add_argument("--no-ui", action="store_true", help="headless: log lines instead")
    sp.add_argument("--until-idle", action="store_true",
                    help="exit once nothing is running or runnable")
    sp.add_argument("--concurrency", type=int, help="max attempts this engine runs at once")
    sp.add_argument("--runner-id", default="local", type=id_arg,
                    help="this engine's runner id")
    sp.add_argument("--ray", metavar="ADDRESS",
                    help="run attempts on the nodes of the Ray cluster at ADDRESS, one node "
                    "agent per node (needs phh[ray]; docs/scale-out.md)")
    sp.add_argument("--json-log", action="store_true", help="one JSON object per line")
    sp.add_argument("--alerts", choices=("bell", "notify", "off"), default="bell",
                    help="dashboard: bell and/or notification when a step needs attention "
                    "or a batch finishes")
    sp.add_argument("--api", action="store_true",
                    help="also serve the HTTP API (as `phh serve`, settings from the harness "
                    "config; on by default when interfaces.api_mode.enabled is true)")
    sp.set_defaults(func=cmd_run)
    sp = add("scoreboard", "system view, or one batch's view (the serving engine's own file "
             "while it is fresh, else derived from the store)")
    sp.add_argument("--batch")
    sp.add_argument("--recompute", action="store_true",
                    help="derive from the store even while an engine serves it")
    sp.set_defaults(func=cmd_scoreboard)
    add("reindex", "rebuild every current.json and the catalog from attempt directories"
        ).set_defaults(
        func=cmd_reindex)
    add("config", "print the effective harness config", json_flag=False).set_defaults(
        func=cmd_config)
    for name, help_ in (
        ("cancel", "cancel a step's running attempt (SIGINT, then SIGKILL after a grace)"),
        ("retry", "retry a step now, ignoring backoff and max_attempts"),
        ("resume", "continue a finished attempt's conversation with a follow-up prompt"),
        ("requeue", "cancel a step's attempt (if any) and run it again, optionally elsewhere"),
        ("mark-failed", "mark a step failed for good; dependants stay blocked"),
        ("close", "close a batch: no further attempts"),
        ("promote", "make another candidate of a best-of-N step its result (its work is "
         "applied to the job's workspace instead of the current winner's)"),
    ):
        sp = add(name, help_)
        sp.add_argument("batch")
        if name != "close":
            sp.add_argument("job")
            sp.add_argument("step")
        if name == "promote":
            sp.add_argument("run", help="the run_id of the candidate to promote")
        if name in ("cancel", "resume"):
            sp.add_argument("--run", help="a specific run_id (default: the latest)")
        if name in ("retry", "resume"):
            sp.add_argument("--prompt", required=name == "resume",
                            help="extra prompt for the new attempt")
        if name == "requeue":
            sp.add_argument("--runner", help="runner_id to run it on")
        if name in ("mark-failed", "close", "cancel"):
            sp.add_argument("--reason")
        sp.add_argument("--wait", type=float, default=15.0,
                        help="seconds to wait for a running engine's result")
        sp.set_defaults(func=cmd_override)
    from phh_tui.cli_upkeep import add_commands as add_upkeep_commands

    add_upkeep_commands(add)  # gc, runner list|drain|undrain
    from phh_tui.cli_automation import add_commands

    add_commands(add)
    from phh_tui.cli_doctor import add_commands as add_doctor_commands

    add_doctor_commands(add)  # doctor
    from phh_tui.cli_history import add_commands as add_history_commands

    add_history_commands(add)  # history (the catalog)
    sp = add("demo", "a bundled demo batch against the offline model stand-in",
             json_flag=False)
    sp.add_argument("--no-ui", action="store_true")
    sp.set_defaults(func=cmd_demo)
    return p


#: Commands that only read: on a directory that is not a root they say so instead of
#: creating runs/ there (a cache or config snapshot would otherwise be written).
READ_ONLY_COMMANDS = frozenset({"scoreboard", "config", "current", "jobs", "attempts",
                                "artifact", "tail", "history"})


#: exit status when the reader of stdout went away (`phh ... | head -1`): 128 + SIGPIPE, as
#: a shell reports a process that SIGPIPE ended
EXIT_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `phh` command; its exit status. A closed stdout ends any command quietly
    with EXIT_PIPE (the Python docs' recipe for SIGPIPE: nothing more is written, no
    traceback), whichever command was writing."""
    try:
        rc = _main(argv)
        sys.stdout.flush()  # here, not at exit, where a closed pipe would print a warning
        return rc
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_PIPE


def _stdout_to_devnull() -> None:
    """Point stdout's descriptor at /dev/null: the interpreter's flush at exit then writes
    what is still buffered there instead of failing on the closed pipe."""
    import os

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's StringIO)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "root", None) is None and "root" not in vars(args):
        args.root = None
    if args.command is None:  # bare `phh`, like k9s or lazygit: the dashboard
        from phh_tui.cli_doctor import cmd_dashboard

        return cmd_dashboard(args)
    if args.command in READ_ONLY_COMMANDS:
        root = _root(args)
        if not is_phh_root(Layout(root)):
            from phh_engine.interfaces.artifacts import LookupFailed
            from phh_tui.cli_automation import fail

            return fail(LookupFailed(404, f"{root} is not a phh root (it has no runs/): "
                                     f"`phh --root {root} init` creates one; --root names "
                                     "another"), bool(getattr(args, "json", False)))
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
