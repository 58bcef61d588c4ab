"""Runner health, drain and admission (docs/architecture.md#scheduling,
docs/layout.md#harness-config limits): shared by the engine and the CLI.

Files (all atomic snapshots):
- `runners/<runner_id>/health.json` — written by the runner's engine every
  `runner_health.interval_seconds` (default 5 s): capacity, running, disk free, memory
  available, load, draining, accepting_work and the `problems` that stop new starts.
- `runners/<runner_id>/drain.json` — the drain switch. ANY process may write it
  (`phh runner drain|undrain ID`, API, TUI); the engine reads it on every health tick. Chosen
  over editing the harness config because draining is operational state, not configuration:
  it needs no new config version, survives engine restarts, and is per runner. The harness
  config's `runners[].draining` is the static form (a runner kept out of the pool); a runner
  drains when either says so.

Semantics:
- draining: the runner finishes its running attempts and starts none.
- stale: `health.json` older than `runner_health.stale_after_seconds` (default 30 s) and not
  marked stopped. Schedulers treat a stale runner as gone: a step that only *prefers* it
  (`same_runner_as`) runs elsewhere, and its `running` count no longer counts against the
  global concurrency. For an engine's own runner, stale means it could not publish its health
  for that long (store unwritable, disk full, stalled loop): others would think it dead, so it
  starts nothing until a write succeeds again.
- low resources: disk free under `limits.min_free_disk_bytes` or free inodes under
  `limits.min_free_inodes` (on the runs store) or memory available under
  `limits.min_available_memory_bytes` stops new starts (running ones go on),
  shown as a system note in the scoreboards and an `admission_blocked` EngineEvent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psutil

from ..models import HarnessConfig, RunnerHealth, utcnow
from ..models.harness_config import Limits
from ..models.health import DrainRequest
from ..models.scoreboard import SystemNote
from ..store.files import atomic_write_json, read_model
from ..store.paths import Layout

DRAIN_FILE = "drain.json"
#: inodes one attempt takes on the runs store (its files and Codex's codex_home/), measured
INODES_PER_ATTEMPT = 90


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# ----------------------------------------------------------------------------- drain
def drain_path(layout: Layout, runner_id: str) -> Path:
    return layout.runners / runner_id / DRAIN_FILE


def read_drain(layout: Layout, runner_id: str) -> DrainRequest | None:
    return read_model(drain_path(layout, runner_id), DrainRequest)


def set_drain(layout: Layout, runner_id: str, draining: bool, *, reason: str | None = None,
              requested_by: str = "cli") -> DrainRequest:
    """Drain (or undrain) a runner from any process: one atomic file the engine reads."""
    req = DrainRequest(runner_id=runner_id, draining=draining, reason=reason,
                       requested_at=utcnow(), requested_by=requested_by)
    atomic_write_json(drain_path(layout, runner_id), req)
    return req


def drain_state(layout: Layout, config: HarnessConfig, runner_id: str) -> tuple[bool, str | None]:
    """(draining, why): the runtime switch (drain.json) or the static pool config."""
    req = read_drain(layout, runner_id)
    if req is not None and req.draining:
        by = f" by {req.requested_by}" if req.requested_by else ""
        return True, (req.reason or f"drain requested{by}")
    spec = next((r for r in config.runners if r.runner_id == runner_id), None)
    if spec is not None and spec.draining:
        return True, "draining in the harness config (runners[].draining)"
    return False, None


# ----------------------------------------------------------------------------- resources
@dataclass(slots=True)
class Resources:
    disk_free_bytes: int | None = None
    #: None where the filesystem has no inode limit (statvfs reports 0 inodes in all)
    disk_free_inodes: int | None = None
    memory_available_bytes: int | None = None
    load_1m: float | None = None


def sample_resources(path: Path) -> Resources:
    """Disk free where attempts are written, memory available (Codex is memory-bound:
    ~150 MiB per process, docs/codex.md), 1-minute load."""
    r = Resources()
    with contextlib.suppress(OSError):
        r.disk_free_bytes = shutil.disk_usage(path).free
    with contextlib.suppress(OSError):
        vfs = os.statvfs(path)
        if vfs.f_files > 0:  # btrfs and some network filesystems have no fixed inode count
            r.disk_free_inodes = vfs.f_favail
    with contextlib.suppress(Exception):
        r.memory_available_bytes = int(psutil.virtual_memory().available)
    with contextlib.suppress(OSError):
        r.load_1m = os.getloadavg()[0]
    return r


def resource_problems(res: Resources, limits: Limits) -> list[str]:
    """Why new starts must wait, one line per threshold crossed (empty: all fine)."""
    out: list[str] = []
    if res.disk_free_bytes is not None and res.disk_free_bytes < limits.min_free_disk_bytes:
        out.append(f"low disk: {fmt_bytes(res.disk_free_bytes)} free on the runs store, below "
                   f"limits.min_free_disk_bytes = {fmt_bytes(limits.min_free_disk_bytes)}")
    inodes = res.disk_free_inodes
    if inodes is not None and inodes < limits.min_free_inodes:
        out.append(f"low inodes: {inodes} free on the runs store, below "
                   f"limits.min_free_inodes = {limits.min_free_inodes} (an attempt takes "
                   f"about {INODES_PER_ATTEMPT})")
    mem = res.memory_available_bytes
    if mem is not None and mem < limits.min_available_memory_bytes:
        out.append(f"low memory: {fmt_bytes(mem)} available, below "
                   f"limits.min_available_memory_bytes = "
                   f"{fmt_bytes(limits.min_available_memory_bytes)}")
    return out


# ----------------------------------------------------------------------------- health files
def read_health(layout: Layout, runner_id: str) -> RunnerHealth | None:
    return read_model(layout.runner_health(runner_id), RunnerHealth)


def all_health(layout: Layout) -> dict[str, RunnerHealth]:
    out: dict[str, RunnerHealth] = {}
    if not layout.runners.is_dir():
        return out
    for d in sorted(layout.runners.iterdir()):
        if d.name.startswith(".") or not d.is_dir():
            continue
        h = read_health(layout, d.name)
        if h is not None:
            out[d.name] = h
    return out


def health_age(health: RunnerHealth, now: datetime) -> float:
    return (now - health.last_seen_at).total_seconds()


def is_stale(health: RunnerHealth | None, now: datetime, stale_after: float) -> bool:
    """Gone for scheduling: no health, a clean stop, or not seen for `stale_after` seconds."""
    if health is None or health.stopped_at is not None:
        return True
    return health_age(health, now) > stale_after


def available(health: RunnerHealth | None, now: datetime, stale_after: float) -> bool:
    """Fresh and accepting work: a runner other schedulers may defer to."""
    return health is not None and not is_stale(health, now, stale_after) and \
        health.accepting_work and not health.draining


@dataclass(slots=True)
class RunnerStatus:
    """One row of `phh runner list`: the config's view plus what its health.json says."""

    runner_id: str
    configured: bool
    capacity: int | None
    health: RunnerHealth | None
    state: str  # running | draining | blocked | stale | stopped | never_seen
    age_seconds: float | None
    draining: bool
    drain_reason: str | None
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        h = self.health
        return {
            "runner_id": self.runner_id, "configured": self.configured,
            "state": self.state, "capacity": self.capacity,
            "running": h.running if h else None, "draining": self.draining,
            "drain_reason": self.drain_reason, "problems": self.problems,
            "last_seen_at": h.last_seen_at.isoformat() if h else None,
            "seconds_since_last_seen": round(self.age_seconds, 3)
            if self.age_seconds is not None else None,
            "host": h.host if h else None, "pid": h.pid if h else None,
            "nodes": [n.model_dump(mode="json") for n in h.nodes] if h else [],
            "disk_free_bytes": h.disk_free_bytes if h else None,
            "memory_available_bytes": h.memory_available_bytes if h else None,
            "load_1m": h.load_1m if h else None,
        }


def runner_statuses(layout: Layout, config: HarnessConfig, now: datetime | None = None
                    ) -> list[RunnerStatus]:
    """Every runner in the config or with a health file, in config order then by id."""
    now = now or utcnow()
    stale_after = config.runner_health.stale_after_seconds
    healths = all_health(layout)
    ids = [r.runner_id for r in config.runners]
    ids += sorted(set(healths) - set(ids))
    ids += sorted({p.parent.name for p in layout.runners.glob(f"*/{DRAIN_FILE}")} - set(ids)) \
        if layout.runners.is_dir() else []
    out: list[RunnerStatus] = []
    for rid in ids:
        spec = next((r for r in config.runners if r.runner_id == rid), None)
        h = healths.get(rid)
        draining, why = drain_state(layout, config, rid)
        age = health_age(h, now) if h else None
        if h is None:
            state = "never_seen"
        elif h.stopped_at is not None:
            state = "stopped"
        elif is_stale(h, now, stale_after):
            state = "stale"
        elif draining or h.draining:
            state = "draining"
        elif h.problems:
            state = "blocked"
        else:
            state = "running"
        out.append(RunnerStatus(
            runner_id=rid, configured=spec is not None,
            capacity=h.capacity if h else (spec.capacity if spec else None), health=h,
            state=state, age_seconds=age, draining=draining or bool(h and h.draining and
                                                                   h.stopped_at is None),
            drain_reason=why or (h.drain_reason if h else None),
            problems=list(h.problems) if h and state not in ("stale", "stopped") else []))
    return out


def notes_for(status: RunnerStatus, stale_after: float) -> list[SystemNote]:
    """System-level attention items for one runner (empty when it is healthy or stopped)."""
    h = status.health
    rid = status.runner_id
    out: list[SystemNote] = []
    if status.state == "stale" and h is not None:
        out.append(SystemNote(
            kind="runner_stale", runner_id=rid, since=h.last_seen_at,
            message=f"runner {rid} not seen for {status.age_seconds or 0:.0f}s (health older "
                    f"than {stale_after:g}s): it gets no new work; its running attempts "
                    f"({h.running}) end as runner_lost when an engine recovers them"))
        return out
    if status.state in ("stopped", "never_seen"):
        if status.draining:
            out.append(SystemNote(kind="draining", runner_id=rid,
                                  message=f"runner {rid} is drained ({status.drain_reason}); "
                                          f"`phh runner undrain {rid}` to accept work again"))
        return out
    if status.draining:
        running = h.running if h else 0
        out.append(SystemNote(
            kind="draining", runner_id=rid, since=None,
            message=f"runner {rid} is draining ({status.drain_reason}): finishes {running} "
                    f"running attempt(s), starts none; `phh runner undrain {rid}` to resume"))
    for p in status.problems:
        kind = "health_unwritable" if p.startswith("health") else "low_resources"
        out.append(SystemNote(kind=kind, runner_id=rid,
                              message=f"runner {rid} starts no new attempts: {p}"))
    return out


def system_notes(layout: Layout, config: HarnessConfig, now: datetime | None = None
                 ) -> list[SystemNote]:
    """What the system scoreboard shows above the batches: runners taking no new work."""
    stale_after = config.runner_health.stale_after_seconds
    out: list[SystemNote] = []
    for st in runner_statuses(layout, config, now):
        out.extend(notes_for(st, stale_after))
    return out
