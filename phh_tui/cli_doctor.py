"""`phh doctor`, `phh --version`, the preflight of `phh run`, and bare `phh` (the dashboard)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from phh_engine.store.paths import Layout
from phh_tui.cli_common import EXIT_FAIL, EXIT_INVALID, EXIT_OK, err, print_json, root_of

AddFn = Callable[..., argparse.ArgumentParser]


def version_text(root: str | None = None) -> str:
    """`phh X.Y.Z` and the Codex CLI phh would run (version and path), or why there is none."""
    from phh_engine import __version__
    from phh_engine.runners.codex_cli import PINNED_CODEX_VERSION, CodexNotFound, codex_version
    from phh_engine.runners.doctor import context_for

    lines = [f"phh {__version__}"]
    try:
        ctx = context_for(Layout(root_of(argparse.Namespace(root=root))))
        found = ctx.codex_bin
    except Exception as exc:  # --version must answer whatever the root looks like
        found = CodexNotFound(str(exc))
    if isinstance(found, CodexNotFound):
        lines.append(f"codex: not found: {found}")
    else:
        version = codex_version(found) or "(version unreadable)"
        tested = ("the version phh is tested with" if version == PINNED_CODEX_VERSION
                  else f"phh is tested with {PINNED_CODEX_VERSION}")
        lines.append(f"codex {version} at {found} ({tested})")
    return "\n".join(lines)


class VersionAction(argparse.Action):
    """Like argparse's `version` action, but the text (a Codex probe) is made only when
    asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        # the root's harness config may name codex.bin (`phh --root R --version`)
        print(version_text(getattr(namespace, "root", None)))
        parser.exit(EXIT_OK)


def cmd_doctor(args: argparse.Namespace) -> int:
    from phh_engine.runners import ray_doctor  # registers the Ray cluster check
    from phh_engine.runners.doctor import context_for, run_checks

    del ray_doctor
    rows = run_checks(context_for(Layout(root_of(args))))
    failed = any(r.status == "fail" for r in rows)
    if args.json:
        print_json({"ok": not failed, "checks": [r.as_dict() for r in rows]})
        return EXIT_FAIL if failed else EXIT_OK
    from rich.console import Console
    from rich.table import Table

    style = {"ok": "green", "warn": "yellow", "fail": "bold red"}
    table = Table(title=f"phh doctor: {root_of(args)}", title_justify="left")
    for col in ("check", "", "found", "fix"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.name, f"[{style[r.status]}]{r.status}[/]", r.found, r.fix)
    Console().print(table)
    return EXIT_FAIL if failed else EXIT_OK


def refuse_unrunnable(root: Path) -> int | None:
    """Before `phh run` (or bare `phh`) starts anything: exit 2 with one line per problem
    when no attempt could succeed (no Codex, a Codex config missing or not TOML, an unknown
    provider, no credential); None when it may go on. A broken harness config is left to
    the engine's own error."""
    from phh_engine.runners.doctor import PreflightError, preflight
    from phh_engine.store.harness_config import ConfigError, load_config

    layout = Layout(root)
    try:
        config = load_config(layout, write=False)
    except ConfigError:  # the engine names the harness config's error and its path
        return None
    except Exception:  # e.g. a root that cannot be read: the engine reports it
        return None
    try:
        preflight(layout, config)
    except PreflightError as exc:
        for r in exc.failures:
            err(f"cannot run: {r.found}" + (f"; {r.fix}" if r.fix else ""))
        return EXIT_INVALID
    return None


def refuse_without_codex() -> int | None:
    """For commands that run Codex on a root of their own (`phh demo`)."""
    from phh_engine.runners.doctor import PreflightError, check_codex_present, preflight

    try:
        preflight(Layout(Path.cwd()), None, (check_codex_present,))
    except PreflightError as exc:
        for r in exc.failures:
            err(f"cannot run the demo: {r.found}; {r.fix}")
        return EXIT_INVALID
    return None


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Bare `phh`: the dashboard on the root; it runs an engine unless one already serves
    the root (then it observes, and actions go to that engine)."""
    from phh_engine.runners.doctor import serving_runners
    from phh_engine.store.paths import is_phh_root

    root = root_of(args)
    layout = Layout(root)
    if not is_phh_root(layout):
        err(f"{root} is not a phh root (no runs/ or phh_config.json); `phh init` makes it "
            "one, `phh demo` tries phh on a bundled batch, `phh --help` lists the commands")
        return EXIT_INVALID
    try:
        from phh_tui.app import run_app
    except ImportError:
        err("the dashboard is not available in this build; use `phh run --no-ui`")
        return EXIT_FAIL
    if serving_runners(layout):
        return run_app(root, observe=True)
    rc = refuse_unrunnable(root)
    if rc is not None:
        return rc
    return run_app(root)


def add_commands(add: AddFn) -> None:
    sp = add("doctor", "check what phh needs (Codex, its config and credentials, git, disk, "
             "inotify, the engine); exit 1 when something fails")
    sp.set_defaults(func=cmd_doctor)
