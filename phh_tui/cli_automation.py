"""`phh` subcommands for automation (docs/interfaces.md): the CLI face of
`phh_engine.interfaces.api_ops`.

Every command here prints with `--json` exactly what the HTTP API answers for the same
operation (same keys, same values), and on failure with `--json` prints the API's error body
`{"error", "message"[, "errors"]}` on stdout. Exit codes: 0 ok; 1 not found, rejected by the
engine, or failed; 2 invalid input (malformed id or argument, invalid Launch Table, invalid
harness config).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phh_engine.store.paths import ARTIFACT_NAMES, Layout
from phh_tui.cli_common import EXIT_FAIL, EXIT_INVALID, EXIT_OK, bounded_int
from phh_tui.cli_common import err as _err
from phh_tui.cli_common import print_json as _print_json
from phh_tui.cli_common import root_of as _root

if TYPE_CHECKING:
    from phh_engine.interfaces.artifacts import AttemptRef, EventLine, LookupFailed

AddFn = Callable[..., argparse.ArgumentParser]
# Engine modules are imported inside each command: building the parser (every `phh` call)
# must stay cheap.


def fail(exc: LookupFailed, as_json: bool) -> int:
    """Report a refused request the way the API does; 400/422 -> exit 2, else exit 1."""
    code = {400: "bad_request", 404: "not_found", 409: "conflict",
            422: "invalid"}.get(exc.status, "error")
    if as_json:
        body: dict[str, Any] = {"error": code, "message": exc.message}
        errors = getattr(exc, "errors", None)  # InvalidLaunchTable's per-path problems
        if errors:
            body["errors"] = errors
        _print_json(body)
    _err(exc.message)
    return EXIT_INVALID if exc.status in (400, 422) else EXIT_FAIL


def _locate(layout: Layout, args: argparse.Namespace, ids: list[str]) -> AttemptRef:
    from phh_engine.interfaces.artifacts import LookupFailed, attempt_from_dir, find_attempt

    if args.attempt_dir:
        if ids:
            raise LookupFailed(400, "give either BATCH JOB STEP or --attempt-dir, not both")
        return attempt_from_dir(layout, args.attempt_dir)
    if len(ids) != 3:
        raise LookupFailed(400, "expected BATCH JOB STEP (or --attempt-dir DIR)")
    return find_attempt(layout, ids[0], ids[1], ids[2], args.run)


# ---------------------------------------------------------------------------- commands
def cmd_current(args: argparse.Namespace) -> int:
    from phh_engine.interfaces.api_ops import current_index
    from phh_engine.interfaces.artifacts import LookupFailed

    try:
        cur = current_index(Layout(_root(args)), args.batch, args.job)
    except LookupFailed as exc:
        return fail(exc, args.json)
    if args.json:
        _print_json(cur)
        return EXIT_OK
    if not cur["steps"]:
        print(f"{args.batch}/{args.job}: no attempt yet")
    for sid, p in cur["steps"].items():
        ok = p.get("latest_successful") or {}
        print(f"{sid:<20} latest {p['latest']['run_id']} {p['latest']['status']:<16} "
              f"successful {ok.get('run_id', '-')}  {p['latest']['attempt_dir']}")
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    from phh_tui.cli_history import paged_jobs, wants_page

    if wants_page(args):  # one page from the catalog (before the heavier imports below)
        return paged_jobs(args)
    from phh_engine.interfaces.api_ops import list_jobs
    from phh_engine.interfaces.artifacts import LookupFailed

    try:
        out = list_jobs(Layout(_root(args)), args.batch)
    except LookupFailed as exc:
        return fail(exc, args.json)
    if args.json:
        _print_json(out)
        return EXIT_OK
    for job in out["jobs"]:
        for s in job["steps"]:
            why = "; ".join(s.get("reasons", []))
            print(f"{job['job_id']:<20} {s['step_id']:<16} {s['status']:<16} "
                  f"{s.get('run_id', '-'):<20} {why}".rstrip())
    return EXIT_OK


def cmd_attempts(args: argparse.Namespace) -> int:
    from phh_tui.cli_history import paged_attempts, wants_page

    if wants_page(args):  # one page from the catalog (before the heavier imports below)
        return paged_attempts(args)
    from phh_engine.interfaces.api_ops import list_attempts
    from phh_engine.interfaces.artifacts import LookupFailed

    try:
        out = list_attempts(Layout(_root(args)), args.batch, args.job, args.step)
    except LookupFailed as exc:
        return fail(exc, args.json)
    if args.json:
        _print_json(out)
        return EXIT_OK
    for a in out["attempts"]:
        print(f"{a['run_id']:<20} {a['status']:<16} {a.get('trigger') or '-':<16} "
              f"{a.get('started_at') or '-':<33} {a['attempt_dir']}")
    return EXIT_OK


def cmd_artifact(args: argparse.Namespace) -> int:
    from phh_engine.interfaces.artifacts import LookupFailed, check_name, iter_artifact
    from phh_engine.store.documents import loads_json

    layout = Layout(_root(args))
    *ids, name = args.what
    try:
        check_name(name)
        ref = _locate(layout, args, ids)
        chunks, _ = iter_artifact(ref, name)
        if args.json:
            data = b"".join(chunks)
            text = data.decode("utf-8", errors="replace")
            content: Any = text
            if name.endswith(".json"):
                try:
                    content = loads_json(text)
                except ValueError:  # not JSON, or refused (NaN, hostile nesting): as text
                    content = text
            _print_json({**ref.as_dict(), "name": name, "size_bytes": len(data),
                         "content": content})
            return EXIT_OK
        out = sys.stdout.buffer
        for block in chunks:
            out.write(block)
        out.flush()
    except LookupFailed as exc:
        return fail(exc, args.json)
    return EXIT_OK  # (`phh artifact ... | head`: cli.main ends a closed stdout quietly)


def _emit(line: EventLine, as_json: bool) -> None:
    from phh_engine.interfaces.artifacts import describe_event

    if as_json:
        sys.stdout.write(json.dumps(line.as_dict(), separators=(",", ":")) + "\n")
    else:
        sys.stdout.write(describe_event(line.event, line.raw) + "\n")
    sys.stdout.flush()


def cmd_tail(args: argparse.Namespace) -> int:
    """Print an attempt's events (readable, or one JSON object per line with --json, the
    same items as the API's `events`); --follow keeps going until the attempt ends."""
    import asyncio

    from phh_engine.interfaces.artifacts import LookupFailed, events_file, iter_lines, last_lines

    layout = Layout(_root(args))
    try:
        ref = _locate(layout, args, args.ids)
        name = events_file(ref)
        start = args.offset or 0
        # every line to the end, a page at a time: no line is too long to pass
        lines = (last_lines(ref, name, args.lines) if args.lines and args.offset is None
                 else iter_lines(ref, name, start))
        for line in lines:
            _emit(line, args.json)
            start = line.offset
        if not args.follow:
            return EXIT_OK
        return asyncio.run(_follow(ref, start, args.json))
    except LookupFailed as exc:
        return fail(exc, args.json)
    except KeyboardInterrupt:  # (a closed stdout: cli.main ends it quietly)
        return EXIT_OK


async def _follow(ref: AttemptRef, offset: int, as_json: bool) -> int:
    from phh_engine.interfaces.artifacts import EventLine, follow_lines

    async for item in follow_lines(ref, offset):
        if isinstance(item, EventLine):
            _emit(item, as_json)
        elif item:
            if as_json:
                sys.stdout.write(json.dumps({"end": True, "status": item}) + "\n")
            else:
                sys.stdout.write(f"-- attempt {ref.run_id} ended: {item}\n")
            sys.stdout.flush()
    return EXIT_OK


def cmd_ingest(args: argparse.Namespace) -> int:
    """One scan of the filesystem queue (the engine does this by itself while it runs)."""
    from phh_engine.interfaces.queue import DropQueue
    from phh_engine.store.harness_config import ConfigError, load_config

    layout = Layout(_root(args))
    try:
        config = load_config(layout)
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_INVALID
    queue = DropQueue(layout, config)
    outcomes = queue.scan()
    if args.json:
        _print_json({"queue_root": str(queue.root), "outcomes": [o.as_dict() for o in outcomes]})
    else:
        for o in outcomes:
            if o.status == "accepted":
                dup = " (duplicate of an earlier drop)" if o.duplicate else ""
                print(f"accepted {o.name} -> {o.batch_id}{dup}")
                for note in o.notes:
                    print(f"  note: {note['path']}: {note['message']}")
            else:
                print(f"rejected {o.name}: {len(o.errors)} error(s), see {o.record}")
        if not outcomes:
            print(f"nothing to ingest in {queue.incoming}")
    return EXIT_FAIL if any(o.status == "rejected" for o in outcomes) else EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from phh_engine.interfaces.api import ApiServer, ServeError
    from phh_engine.store.harness_config import ConfigError, load_config

    layout = Layout(_root(args))
    try:
        config = load_config(layout)
        server = ApiServer(layout, config, host=args.host, port=args.port, uds=args.uds,
                           max_body_bytes=args.max_body_bytes)
    except (ConfigError, ServeError) as exc:
        _err(str(exc))
        return EXIT_INVALID
    except OSError as exc:
        _err(f"cannot bind: {exc.strerror or exc}")
        return EXIT_FAIL
    sys.stderr.write(f"phh: API on {server.url} (auth: {server.auth.mode}); "
                     f"OpenAPI at /openapi.json\n")
    sys.stderr.flush()
    server.run()
    return EXIT_OK


def api_enabled(root: Path) -> bool:
    """interfaces.api_mode.enabled: `phh run` then serves the API without --api."""
    from phh_engine.store.harness_config import ConfigError, load_config

    try:
        return load_config(Layout(root), write=False).interfaces.api_mode.enabled
    except ConfigError:
        return False  # `phh run` reports the config problem itself


def start_api_for_run(root: Path) -> Any:
    """`phh run --api`: the API in a thread beside the engine; None (with a message) when it
    cannot start. The caller stops it."""
    from phh_engine.interfaces.api import ApiServer, ServeError
    from phh_engine.store.harness_config import ConfigError, load_config

    layout = Layout(root)
    try:
        server = ApiServer(layout, load_config(layout), log_level="warning")
    except (ConfigError, ServeError, OSError) as exc:
        _err(f"API not started: {exc}")
        return None
    sys.stderr.write(f"phh: API on {server.url} (auth: {server.auth.mode})\n")
    return server.start()


# ---------------------------------------------------------------------------- parser
def add_commands(add: AddFn) -> None:
    """Register the automation subcommands through cli.build_parser's `add` helper."""
    sp = add("serve", "HTTP API (JSON, OpenAPI at /openapi.json); auth from the harness config",
             json_flag=False)
    sp.add_argument("--host", help="bind address (default: interfaces.api_mode.host, 127.0.0.1)")
    sp.add_argument("--port", type=int, help="port (default: interfaces.api_mode.port; 0: any)")
    sp.add_argument("--uds", help="serve on this Unix socket instead of TCP")
    sp.add_argument("--max-body-bytes", type=int, default=16 << 20,
                    help="largest request body accepted (413 beyond)")
    sp.set_defaults(func=cmd_serve)

    sp = add("current", "a job's current.json (latest / latest successful attempt per step)")
    sp.add_argument("batch")
    sp.add_argument("job")
    sp.set_defaults(func=cmd_current)

    sp = add("jobs", "jobs of a batch with each step's derived status")
    sp.add_argument("batch")
    from phh_tui.cli_history import add_paging

    add_paging(sp)  # any of them: one page from the catalog
    sp.set_defaults(func=cmd_jobs)

    sp = add("attempts", "attempts of a step, oldest first")
    sp.add_argument("batch")
    sp.add_argument("job")
    sp.add_argument("step")
    add_paging(sp, failure_class=False)
    sp.set_defaults(func=cmd_attempts)

    sp = add("artifact", "print one attempt file: BATCH JOB STEP NAME, or --attempt-dir DIR NAME "
             f"(NAME: {', '.join(ARTIFACT_NAMES)})")
    sp.add_argument("what", nargs="+", metavar="ARG", help="BATCH JOB STEP NAME | NAME")
    sp.add_argument("--run", help="run_id (default: the step's latest attempt)")
    sp.add_argument("--attempt-dir", help="an attempt directory as printed by phh")
    sp.set_defaults(func=cmd_artifact)

    sp = add("tail", "an attempt's Codex events, readable (--json: one JSON object per line)")
    sp.add_argument("ids", nargs="*", metavar="ID", help="BATCH JOB STEP")
    sp.add_argument("--run", help="run_id (default: the step's latest attempt)")
    sp.add_argument("--attempt-dir", help="an attempt directory as printed by phh")
    sp.add_argument("-n", "--lines", type=bounded_int(0, 100_000), default=0,
                    help="only the last N events (default: all)")
    sp.add_argument("--offset", type=bounded_int(0, 2**62),
                    help="start at this byte offset (a cursor)")
    sp.add_argument("-f", "--follow", action="store_true",
                    help="keep printing new events until the attempt ends")
    sp.set_defaults(func=cmd_tail)

    sp = add("ingest", "ingest the filesystem queue once (a running engine does it by itself)")
    sp.set_defaults(func=cmd_ingest)
