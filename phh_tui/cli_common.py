"""What every `phh` subcommand module shares: exit codes, the root, and output helpers."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_INVALID = 2


def root_of(args: argparse.Namespace) -> Path:
    """--root, else $PHH_ROOT, else the current directory."""
    return Path(getattr(args, "root", None) or os.environ.get("PHH_ROOT") or ".").resolve()


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def err(msg: str) -> None:
    sys.stderr.write(f"phh: {msg}\n")


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """argparse `type=` for a count or byte offset: outside [low, high] is a usage error
    (exit 2) naming the range, never an OverflowError deeper down."""
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return n
    return parse


def id_arg(value: str) -> str:
    """argparse `type=` for an id given on the command line (a runner id): a bad one is a
    usage error (exit 2) naming the rule it breaks, never a path phh then creates."""
    from phh_engine.models import check_id

    try:
        return check_id(value, incoming=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
