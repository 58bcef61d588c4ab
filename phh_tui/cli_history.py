"""`phh history ...` and the paged forms of `phh jobs` / `phh attempts`: the CLI face of
phh_engine/interfaces/history.py (catalog queries). With `--json` each prints what the API
answers for the same query (/v1/history/*, /v1/batches/{b}/steps). Exit codes: 0 ok; 1 not
found or the catalog cannot be used where it is configured or written (one line naming its
path and what to do); 2 a malformed argument (named) or PHH_CATALOG naming a directory."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from phh_engine.store.paths import Layout
from phh_tui.cli_common import EXIT_OK
from phh_tui.cli_common import print_json as _print_json
from phh_tui.cli_common import root_of as _root

AddFn = Callable[..., argparse.ArgumentParser]


def _run(args: argparse.Namespace, fn_name: str, **kw: Any) -> tuple[int, Any]:
    from phh_engine.interfaces import history
    from phh_engine.store.catalog import CatalogConfigError, catalog_path

    layout = Layout(_root(args))
    try:  # PHH_CATALOG naming a directory is bad configuration: exit 2, never renamed
        catalog_path(layout)
    except CatalogConfigError as exc:
        from phh_engine.interfaces.artifacts import LookupFailed
        from phh_tui.cli_automation import fail

        return fail(LookupFailed(400, str(exc)), args.json), None
    reader = history.Reader(layout)
    try:
        return EXIT_OK, reader.run(getattr(history, fn_name), **kw)
    except Exception as exc:
        # imported only now: the models behind it cost a catalog read ~0.3 s
        from phh_engine.interfaces.artifacts import LookupFailed
        from phh_tui.cli_automation import fail

        if not isinstance(exc, LookupFailed):
            raise
        return fail(exc, args.json), None
    finally:
        reader.close()


def _table(rows: list[dict[str, Any]], cols: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    width = {c: max(len(c), *(len(str(r.get(c, "-"))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols).rstrip())
    for r in rows:
        print("  ".join(str(r.get(c, "-") if r.get(c) is not None else "-").ljust(width[c])
                        for c in cols).rstrip())


def _next(out: dict[str, Any]) -> None:
    if out.get("next_cursor"):
        print(f"-- {out.get('total', '?')} in all; next page: --cursor {out['next_cursor']}")


ATTEMPT_COLS = ["batch_id", "job_id", "step_id", "run_id", "status", "failure_class",
                "started_at", "duration_seconds", "runner_id"]


#: the options each history kind takes (docs/catalog.md#history-queries); any other given
#: is refused, not ignored (`history hourly --status bogus` would answer unfiltered)
KIND_OPTIONS: dict[str, tuple[str, ...]] = {
    "attempts": ("since", "until", "batch", "job", "step", "status", "failure_class",
                 "runner", "limit", "cursor"),
    "tokens": ("since", "until", "by"),
    "slowest": ("since", "until", "batch", "limit"),
    "retries": ("since", "until"),
    "hourly": ("since", "until"),
}
_FLAG = {"failure_class": "--class"}


def _unused_option(args: argparse.Namespace) -> str | None:
    """Why an option given does not fit `args.kind`, or None."""
    takes = KIND_OPTIONS[args.kind]
    for name in ("batch", "job", "step", "status", "failure_class", "runner", "by", "limit",
                 "cursor", "since", "until"):
        if getattr(args, name, None) is not None and name not in takes:
            flags = ", ".join(_FLAG.get(t, f"--{t}") for t in takes)
            return (f"{_FLAG.get(name, '--' + name)}: not an option of phh history "
                    f"{args.kind} (it takes: {flags})")
    return None


def cmd_history(args: argparse.Namespace) -> int:
    kind = args.kind
    unused = _unused_option(args)
    if unused is not None:
        from phh_engine.interfaces.artifacts import LookupFailed
        from phh_tui.cli_automation import fail

        return fail(LookupFailed(400, unused), args.json)
    kw: dict[str, Any] = {"since": args.since, "until": args.until}
    if kind == "attempts":
        kw.update(batch_id=args.batch, job_id=args.job, step_id=args.step, status=args.status,
                  failure_class=args.failure_class, runner_id=args.runner,
                  cursor=args.cursor, limit=args.limit)
        rc, out = _run(args, "attempts_page", **kw)
    elif kind == "tokens":
        rc, out = _run(args, "token_usage", by=args.by or "batch", **kw)
    elif kind == "slowest":
        rc, out = _run(args, "slowest_steps", batch_id=args.batch, limit=args.limit, **kw)
    elif kind == "retries":
        rc, out = _run(args, "retry_rates", **kw)
    else:
        rc, out = _run(args, "per_hour", **kw)
    if out is None:
        return rc
    if args.json:
        _print_json(out)
        return EXIT_OK
    if kind in ("attempts", "slowest"):
        _table(out["attempts"], ATTEMPT_COLS)
        _next(out)
    elif kind == "tokens":
        _table(out["rows"], ["key", "attempts", "input_tokens", "cached_input_tokens",
                             "output_tokens", "reasoning_output_tokens"])
    elif kind == "retries":
        _table(out["rows"], ["failure_class", "failures", "retried", "retry_succeeded",
                             "retry_rate", "retry_success_rate"])
    else:
        peak = max((r["attempts"] for r in out["rows"]), default=0) or 1
        for r in out["rows"]:
            bar = "#" * max(1, round(40 * r["attempts"] / peak))
            print(f"{r['hour']}  {r['attempts']:6d} attempts  {r['failed']:5d} failed  {bar}")
    return EXIT_OK


def paged_jobs(args: argparse.Namespace) -> int:
    """`phh jobs BATCH` with --status/--class/--limit/--cursor: one page of step rows."""
    rc, out = _run(args, "steps_page", batch_id=args.batch, status=args.status,
                   failure_class=args.failure_class, cursor=args.cursor, limit=args.limit)
    if out is None:
        return rc
    if args.json:
        _print_json(out)
        return EXIT_OK
    for s in out["steps"]:
        why = "; ".join(s.get("reasons", []))
        print(f"{s['job_id']:<20} {s['step_id']:<16} {s['status']:<16} "
              f"{s.get('run_id', '-'):<20} {why}".rstrip())
    _next(out)
    return EXIT_OK


def paged_attempts(args: argparse.Namespace) -> int:
    """`phh attempts BATCH JOB STEP` with --status/--limit/--cursor: one page of attempts."""
    rc, out = _run(args, "attempts_page", batch_id=args.batch, job_id=args.job,
                   step_id=args.step, status=args.status, cursor=args.cursor,
                   limit=args.limit)
    if out is None:
        return rc
    if args.json:
        _print_json(out)
        return EXIT_OK
    _table(out["attempts"], ["run_id", "status", "failure_class", "trigger", "started_at",
                             "duration_seconds"])
    _next(out)
    return EXIT_OK


def add_paging(sp: argparse.ArgumentParser, *, failure_class: bool = True) -> None:
    """--status/--class/--limit/--cursor on a listing command (any of them: from the catalog,
    one page at a time)."""
    sp.add_argument("--status", help="only rows with this status")
    if failure_class:
        sp.add_argument("--class", dest="failure_class", help="only this failure class")
    sp.add_argument("--limit", type=int, help="rows per page (1-1000; default 100)")
    sp.add_argument("--cursor", help="next_cursor of the previous page")


def wants_page(args: argparse.Namespace) -> bool:
    return any(getattr(args, k, None) is not None
               for k in ("status", "failure_class", "limit", "cursor"))


def add_commands(add: AddFn) -> None:
    sp = add("history", "history across batches, from the catalog: attempts (filtered, "
             "paged), tokens (per batch/day/model), slowest, retries (rates by failure "
             "class), hourly (attempts and failures per hour)")
    sp.add_argument("kind", choices=("attempts", "tokens", "slowest", "retries", "hourly"))
    sp.add_argument("--since", help="ISO 8601: attempts started at or after")
    sp.add_argument("--until", help="ISO 8601: attempts started before")
    sp.add_argument("--batch", help="attempts/slowest: one batch")
    sp.add_argument("--job", help="attempts: one job (with --batch)")
    sp.add_argument("--step", help="attempts: one step (with --batch --job)")
    sp.add_argument("--runner", help="attempts: one runner id")
    sp.add_argument("--by", help="tokens: batch | day | model (default batch)")
    add_paging(sp)
    sp.set_defaults(func=cmd_history)
