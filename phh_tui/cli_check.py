"""`phh submit --check FILE|DIR...`: a verdict per Launch Table, nothing written."""

from __future__ import annotations

import argparse
from pathlib import Path

from phh_engine.store.paths import Layout
from phh_tui.cli_common import EXIT_INVALID, EXIT_OK, err, print_json, root_of


def print_notes(notes: list[dict[str, str]], indent: str = "") -> None:
    """One `note:` line per translation, on stdout beside the answer it qualifies."""
    for note in notes:
        print(f"{indent}note: {note['path']}: {note['message']}")


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0 only if every table passes; 2 if any is rejected (or nothing was found)."""
    from phh_engine.interfaces.table_check import check_paths
    from phh_engine.store.harness_config import ConfigError, load_config

    layout = Layout(root_of(args))
    try:
        config = load_config(layout, write=False)
    except ConfigError as exc:
        err(str(exc))
        return EXIT_INVALID
    verdicts = check_paths(layout, [Path(f) for f in args.file], config)
    passed = sum(v.ok for v in verdicts)
    ok = passed == len(verdicts) and bool(verdicts)
    if args.json:
        print_json({"ok": ok, "passed": passed, "failed": len(verdicts) - passed,
                    "files": [v.as_dict() for v in verdicts]})
        return EXIT_OK if ok else EXIT_INVALID
    for v in verdicts:
        d = v.as_dict()
        if v.ok:
            print(f"ok        {v.file}: {len(v.job_ids)} job(s)"
                  + (f", batch {v.batch_id}" if v.batch_id else ""))
        else:
            print(f"rejected  {v.file}: {len(v.errors)} error(s)")
            for e in d["errors"]:
                print(f"  error: {e['path']}: {e['message']}")
        print_notes(d["notes"], "  ")
    print(f"{passed} of {len(verdicts)} Launch Table(s) pass; nothing was written")
    return EXIT_OK if ok else EXIT_INVALID
