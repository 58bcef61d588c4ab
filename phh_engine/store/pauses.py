"""Start pauses shared by every engine on a root: `runs/_system/pauses/<name>.json`.

A pause stops new starts fleet-wide (every runner whose engine serves the root reads the
same files) until its `until` time, or until cleared when `until` is null. Running attempts
are not touched. Each cause has its own name (`usage_limit` here; a spent credential can use
another), so one cause is set, extended and cleared without touching another. Admission
(`Admission.reasons`, engine/admission.py) consults `active_pauses`; the message shown on the
scoreboard notes, the dashboard and the `--no-ui` log is `pause_message`:
"paused until 14:15:00 (usage limit)".

The usage-limit policy lives here too (`note_usage_limit`): the reset time Codex printed
("Try again at 2:14 PM.", "try again at Nov 30th, 2026 3:09 PM.") or that an echoed API
error body carries (`resets_at`, `resets_in_seconds`) when there is one, else an
exponential pause (harness config `limits.usage_limit_pause_seconds`, doubling per usage
limit in a row, capped at `limits.usage_limit_pause_max_seconds`).
"""

from __future__ import annotations

import contextlib
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..models.pause import StartPause
from ..models.scoreboard import SystemNote
from .files import atomic_write_json, job_lock, read_model
from .paths import Layout

PAUSES_DIR = "pauses"
USAGE_LIMIT = "usage_limit"
_LOCK = ".lock"


def pauses_dir(layout: Layout) -> Path:
    return layout.system / PAUSES_DIR


def _path(layout: Layout, name: str) -> Path:
    return pauses_dir(layout) / f"{name}.json"


def read_pauses(layout: Layout) -> list[StartPause]:
    """Every pause file, expired or not, by name; unreadable or stray files are skipped."""
    d = pauses_dir(layout)
    try:
        names = sorted(os.listdir(d))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out: list[StartPause] = []
    for n in names:
        if n.startswith(".") or not n.endswith(".json"):
            continue
        p = read_model(d / n, StartPause)
        if p is not None and p.name == n[:-5]:
            out.append(p)
    return out


def is_active(pause: StartPause, now: datetime) -> bool:
    return pause.until is None or pause.until > now


def active_pauses(pauses: list[StartPause], now: datetime) -> list[StartPause]:
    return [p for p in pauses if is_active(p, now)]


def pause_message(pause: StartPause) -> str:
    """`paused until HH:MM:SS (reason)`, local time (the operator's clock), with the date
    when the end is not today; `paused (reason)` for a pause until cleared."""
    if pause.until is None:
        return f"paused ({pause.reason})"
    local = pause.until.astimezone()
    now = datetime.now().astimezone()
    when = local.strftime("%H:%M:%S") if local.date() == now.date() else \
        local.strftime("%Y-%m-%d %H:%M:%S")
    return f"paused until {when} ({pause.reason})"


def pause_notes(pauses: list[StartPause], now: datetime) -> list[SystemNote]:
    """The scoreboard's notes for the active pauses (kind `paused`)."""
    return [SystemNote(kind="paused", since=p.since, message=(
        f"{pause_message(p)}: no engine on this root starts new attempts"
        + ("" if p.reset_known or p.until is None else
           f" (reset time unknown; pause {p.streak} in a row)")))
        for p in active_pauses(pauses, now)]


def set_pause(layout: Layout, name: str, reason: str, until: datetime | None, *, set_by: str,
              detail: str | None = None, reset_known: bool = False, streak: int = 1,
              now: datetime | None = None) -> StartPause:
    """Create or extend a pause. Never shortens an active one (another engine may have set a
    later reset), so concurrent setters converge on the latest end. Returns what is now on
    disk. Raises OSError when the file cannot be written."""
    now = now or datetime.now(UTC)
    with job_lock(pauses_dir(layout) / _LOCK):
        old = read_model(_path(layout, name), StartPause)
        since = now
        if old is not None and is_active(old, now):
            since = old.since
            if old.until is None or (until is not None and old.until >= until):
                until, reset_known = old.until, old.reset_known
            streak = max(streak, old.streak)
        pause = StartPause(name=name, reason=reason, until=until, since=since, set_at=now,
                           set_by=set_by, reset_known=reset_known, streak=streak,
                           detail=detail[:500] if detail else None)
        atomic_write_json(_path(layout, name), pause)
    return pause


def clear_pause(layout: Layout, name: str) -> bool:
    """Remove a pause (e.g. on a success after it ended); True when there was one."""
    with contextlib.suppress(FileNotFoundError):
        _path(layout, name).unlink()
        return True
    return False


# ------------------------------------------------------------------ usage limits
_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
# Codex 0.169: "Try again at 2:14 PM." / "try again at Nov 30th, 2026 3:09 PM." (local time)
_AT = re.compile(
    r"try again at\s+(?:(?P<mon>[a-z]{3})[a-z]*\.?\s+(?P<day>\d{1,2})(?:st|nd|rd|th)?,?\s+"
    r"(?P<year>\d{4}),?\s+)?(?P<h>\d{1,2}):(?P<m>\d{2})(?::(?P<s>\d{2}))?\s*(?P<ampm>[ap]\.?m\.?)?",
    re.IGNORECASE)
_IN = re.compile(r"try again in\s+((?:\d+\s*(?:days?|hours?|hrs?|minutes?|mins?|seconds?|secs?|"
                 r"[dhms])\b[\s,and]*)+)", re.IGNORECASE)
_IN_PART = re.compile(r"(\d+)\s*(d|h|m|s)", re.IGNORECASE)
# an API error body Codex echoed as it is
_RESETS_AT = re.compile(r"\"?resets_at\"?\s*[:=]\s*(\d{9,11})")
_RESETS_IN = re.compile(r"\"?resets_in_seconds\"?\s*[:=]\s*(\d+(?:\.\d+)?)")


#: A reset further away than this is taken as this far: the text comes from a server, and a
#: month is the longest plan period (a wrong "resets_in_seconds: 1e20" must not overflow).
MAX_RESET = timedelta(days=31)


def parse_reset(text: str, now: datetime) -> datetime | None:
    """The usage-limit reset a model API error text names, as an aware UTC datetime (at most
    MAX_RESET away), or None when it names none or names one that is not a time."""
    try:
        at = _parse_reset(text, now)
    except (OverflowError, ValueError, OSError):  # a timestamp past year 9999, ...
        return now + MAX_RESET
    return min(at, now + MAX_RESET) if at is not None else None


def _parse_reset(text: str, now: datetime) -> datetime | None:
    """The usage-limit reset a model API error text names, as an aware UTC datetime, or None.

    Clock times Codex prints have minute precision and are in this machine's local time zone
    (Codex runs with phh's environment): the pause lasts to the end of that minute, so it
    never ends before the reset. A time of day already past is taken as tomorrow's."""
    m = _RESETS_AT.search(text)
    if m:
        return datetime.fromtimestamp(int(m.group(1)), UTC)
    m = _RESETS_IN.search(text)
    if m:
        return now + timedelta(seconds=min(float(m.group(1)), MAX_RESET.total_seconds()))
    m = _AT.search(text)
    if m:
        return _clock_time(m, now)
    m = _IN.search(text)
    if m:
        secs = 0
        for n, unit in _IN_PART.findall(m.group(1)):
            secs += int(n) * {"d": 86400, "h": 3600, "m": 60, "s": 1}[unit.lower()]
        return now + timedelta(seconds=min(secs, MAX_RESET.total_seconds())) if secs else None
    return None


def _clock_time(m: re.Match[str], now: datetime) -> datetime | None:
    hour, minute = int(m.group("h")), int(m.group("m"))
    second = int(m.group("s") or 0)
    ampm = (m.group("ampm") or "").lower().replace(".", "")
    if ampm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    local_now = now.astimezone()
    try:
        if m.group("mon"):
            month = _MONTHS.get(m.group("mon").lower()[:3])
            if month is None:
                return None
            at = local_now.replace(year=int(m.group("year")), month=month,
                                   day=int(m.group("day")), hour=hour, minute=minute,
                                   second=second, microsecond=0)
        else:
            at = local_now.replace(hour=hour, minute=minute, second=second, microsecond=0)
            if at + timedelta(minutes=1) < local_now:
                at += timedelta(days=1)
    except ValueError:  # hour 25, Feb 30th: not a time
        return None
    if not m.group("s"):
        at += timedelta(minutes=1)  # Codex rounds down to the minute: wait it out
    return at.astimezone(UTC)


def usage_limit_until(text: str, now: datetime, previous: StartPause | None,
                      base_seconds: float, max_seconds: float) -> tuple[datetime, bool, int]:
    """(until, reset_known, streak) for a usage limit seen at `now`.

    A known reset wins. Otherwise the pause doubles for each usage limit in a row: a previous
    usage pause that ended less than `max_seconds` ago continues the streak (its retries hit
    the limit again); an active one is kept as it is (attempts started before it began end
    with the same error)."""
    reset = parse_reset(text, now)
    if reset is not None and reset > now:
        return reset, True, previous.streak if previous is not None else 1
    if previous is not None and is_active(previous, now) and previous.until is not None:
        return previous.until, previous.reset_known, previous.streak
    streak = 1
    if previous is not None and previous.until is not None and \
            (now - previous.until).total_seconds() < max_seconds:
        streak = previous.streak + 1
    delay = min(base_seconds * 2 ** min(streak - 1, 30), max_seconds)
    return now + timedelta(seconds=delay), False, streak


def note_usage_limit(layout: Layout, text: str, *, set_by: str, base_seconds: float,
                     max_seconds: float, now: datetime | None = None) -> StartPause:
    """Pause every start on the root after an attempt hit a usage limit (see module doc)."""
    now = now or datetime.now(UTC)
    previous = read_model(_path(layout, USAGE_LIMIT), StartPause)
    until, known, streak = usage_limit_until(text, now, previous, base_seconds, max_seconds)
    return set_pause(layout, USAGE_LIMIT, "usage limit", until, set_by=set_by, detail=text,
                     reset_known=known, streak=streak, now=now)
