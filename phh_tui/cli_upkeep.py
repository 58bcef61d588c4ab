"""`phh gc` and `phh runner list|drain|undrain` (docs/layout.md#retention,
docs/architecture.md#scheduling): store upkeep and runner pool.

Registered by cli.build_parser through its `add` helper. Exit codes: 0 ok; 1 failed (an action
failed, unknown runner, no confirmation in time); 2 invalid input or harness config.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from phh_engine.store.paths import Layout
from phh_tui.cli_common import EXIT_FAIL, EXIT_INVALID, EXIT_OK, id_arg
from phh_tui.cli_common import err as _err
from phh_tui.cli_common import print_json as _print_json
from phh_tui.cli_common import root_of as _root

AddFn = Callable[..., argparse.ArgumentParser]


def cmd_gc(args: argparse.Namespace) -> int:
    """Retention/GC: list (--dry-run) or carry out every action, each with its reason."""
    from phh_engine.engine.gc import GcBusy, run_gc
    from phh_engine.engine.health import fmt_bytes

    layout = Layout(_root(args))
    try:
        report = run_gc(layout, dry_run=args.dry_run)
    except GcBusy as exc:
        _err(str(exc))
        return EXIT_FAIL
    if args.json:
        _print_json(report.as_dict())
        return EXIT_FAIL if report.errors else EXIT_OK
    verb = {"compress": "compress", "delete": "delete", "remove_workspace": "remove"}
    done = {"compress": "compressed", "delete": "deleted", "remove_workspace": "removed"}

    def rel(path: str) -> str:
        try:
            return str(Path(path).relative_to(layout.root))
        except ValueError:
            return path

    for a in report.actions:
        head = ("would " + verb[a.op] if args.dry_run else
                done[a.op] if a.done else "FAILED " + verb[a.op])
        size = fmt_bytes(a.bytes)
        if a.bytes_after is not None:
            size += f" -> {fmt_bytes(a.bytes_after)}"
        print(f"{head:<16} {rel(a.path)}  [{size}]  {a.reason}"
              + (f"  ({a.error})" if a.error else ""))
    if args.verbose:
        for k in report.kept:
            print(f"{'keep':<16} {rel(k.path)}  {k.reason}")
    elif report.kept:
        print(f"kept {len(report.kept)} item(s) the policy would otherwise remove "
              "(--verbose lists them with the reason)")
    print(("dry run: " if args.dry_run else "") + report.summary())
    return EXIT_FAIL if report.errors else EXIT_OK


def cmd_runner(args: argparse.Namespace) -> int:
    """`runner list | drain ID | undrain ID`."""
    from pydantic import ValidationError

    from phh_engine.engine.health import fmt_bytes, read_health, runner_statuses, set_drain
    from phh_engine.models import utcnow
    from phh_engine.store.documents import DocumentError, check_tree
    from phh_engine.store.harness_config import ConfigError, load_config

    layout = Layout(_root(args))
    try:
        cfg = load_config(layout)
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_INVALID
    if args.runner_command == "list":
        rows = runner_statuses(layout, cfg)
        if args.json:
            _print_json([r.as_dict() for r in rows])
            return EXIT_OK
        if not rows:
            print("no runners configured")
        for r in rows:
            h = r.health
            seen = f"seen {r.age_seconds:.0f}s ago" if r.age_seconds is not None else "never seen"
            load = f"{h.running}/{h.capacity} running" if h else f"capacity {r.capacity}"
            res = (f"disk {fmt_bytes(h.disk_free_bytes)} free, mem "
                   f"{fmt_bytes(h.memory_available_bytes)} avail" if h else "")
            print(f"{r.runner_id:<16} {r.state:<10} {load:<14} {seen:<16} {res}".rstrip())
            if r.draining:
                print(f"{'':<16} draining: {r.drain_reason}")
            for prob in r.problems:
                print(f"{'':<16} {prob}")
            for n in h.nodes if h else []:  # a cluster runner: one row per node
                ago = (f"seen {(utcnow() - n.last_seen_at).total_seconds():.0f}s ago"
                       if n.last_seen_at else "never seen")
                print(f"{'':<2}node {n.label:<10} {'alive' if n.alive else 'lost':<10} "
                      f"{f'{n.slots_used}/{n.slots_total} slots':<14} "
                      f"{n.agents_running} agent(s) running, {ago}"
                      + (f" ({n.error})" if n.error else ""))
        return EXIT_OK
    draining = args.runner_command == "drain"
    known = {r.runner_id for r in cfg.runners} | (
        {p.name for p in layout.runners.iterdir() if p.is_dir()} if layout.runners.is_dir()
        else set())
    if args.runner_id not in known:
        _err(f"unknown runner {args.runner_id!r} (known: {', '.join(sorted(known)) or 'none'})")
        return EXIT_FAIL
    try:
        # argv text is not UTF-8-checked (surrogateescape): refuse what could not be written
        check_tree({"reason": getattr(args, "reason", None)})
        set_drain(layout, args.runner_id, draining, reason=getattr(args, "reason", None),
                  requested_by="cli")
    except DocumentError as exc:
        _err(str(exc))
        return EXIT_INVALID
    except ValidationError as exc:
        _err("; ".join(str(e["msg"]) for e in exc.errors()))
        return EXIT_INVALID
    spec = next((r for r in cfg.runners if r.runner_id == args.runner_id), None)
    pinned = not draining and spec is not None and spec.draining
    out: dict[str, Any] = {"runner_id": args.runner_id, "draining": draining or pinned}
    if pinned:
        out["warning"] = ("the harness config still sets runners[].draining for this runner; "
                          "it keeps draining until that is changed")
    # wait until the runner's engine has seen it (its health.json says so), if one serves it
    deadline = time.monotonic() + args.wait
    stale_after = cfg.runner_health.stale_after_seconds
    while True:
        h = read_health(layout, args.runner_id)
        if h is None or h.stopped_at is not None or \
                (utcnow() - h.last_seen_at).total_seconds() > stale_after:
            out["status"] = "recorded"
            out["message"] = ("no engine serves this runner now; it applies when one starts"
                              if draining or not pinned else "recorded")
            break
        if h.draining == (draining or pinned):
            out["status"] = "applied"
            out["running"] = h.running
            out["message"] = (f"draining: {h.running} running attempt(s) finish, none start"
                              if draining or pinned else "accepting work again")
            break
        if time.monotonic() >= deadline:
            out["status"] = "pending"
            out["message"] = f"the engine has not confirmed within {args.wait:g}s"
            break
        time.sleep(0.1)
    if args.json:
        _print_json(out)
    else:
        print(f"runner {args.runner_id}: {out['status']}: {out['message']}")
        if "warning" in out:
            print(f"warning: {out['warning']}")
    return EXIT_FAIL if out["status"] == "pending" else EXIT_OK


def add_commands(add: AddFn) -> None:
    """Register `gc` and `runner` through cli.build_parser's `add` helper."""
    sp = add("gc", "retention/GC: compress old event logs, delete what the policy allows")
    sp.add_argument("--dry-run", action="store_true",
                    help="list every deletion with its reason; change nothing")
    sp.add_argument("--verbose", "-v", action="store_true",
                    help="also list what is kept on purpose, and why")
    sp.set_defaults(func=cmd_gc)
    sp = add("runner", "runner health and drain", json_flag=False)
    rsub = sp.add_subparsers(dest="runner_command", required=True)
    for name, help_ in (
        ("list", "every runner: state, load, last seen, disk/memory, drain"),
        ("drain", "finish running attempts, start none (any process may ask)"),
        ("undrain", "accept work again"),
    ):
        rp = rsub.add_parser(name, help=help_, description=help_)
        rp.add_argument("--root", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        rp.add_argument("--json", action="store_true", help="machine-readable output")
        if name != "list":
            rp.add_argument("runner_id", type=id_arg)
            rp.add_argument("--wait", type=float, default=15.0,
                            help="seconds to wait for a serving engine to confirm")
        if name == "drain":
            rp.add_argument("--reason")
    sp.set_defaults(func=cmd_runner)
