"""Files of best-of-N steps (docs/verification.md#candidates-best-of-n): the candidate marker
in each attempt directory, the step's candidates/ folder and its promotion.json."""

from __future__ import annotations

import os
from pathlib import Path

from ..models.promotion import (
    CANDIDATE_BASE_FILE,
    CANDIDATE_MARKER,
    CANDIDATES_DIR,
    PROMOTION_FILE,
    CandidateBase,
    Promotion,
)
from .files import atomic_write_json, read_model, write_once_bytes
from .paths import Layout


def step_dir(layout: Layout, batch_id: str, job_id: str, step_id: str) -> Path:
    """runs/<batch>/<job>/steps/<step>: the parent of attempts/."""
    return layout.attempts_dir(batch_id, job_id, step_id).parent


def promotion_path(layout: Layout, batch_id: str, job_id: str, step_id: str) -> Path:
    return step_dir(layout, batch_id, job_id, step_id) / PROMOTION_FILE


def read_promotion(layout: Layout, batch_id: str, job_id: str, step_id: str
                   ) -> Promotion | None:
    """The step's promotion record; None when there is none (or it is unreadable)."""
    return read_model(promotion_path(layout, batch_id, job_id, step_id), Promotion)


def write_promotion(layout: Layout, promo: Promotion) -> None:
    """Atomic and durable: a restarted engine reads either the old or the new record."""
    atomic_write_json(promotion_path(layout, promo.batch_id, promo.job_id, promo.step_id),
                      promo)


def candidates_dir(layout: Layout, batch_id: str, job_id: str, step_id: str) -> Path:
    """steps/<step>/candidates/: base.json, base/ (a copy's snapshot), c<k>/ (workspaces)."""
    return step_dir(layout, batch_id, job_id, step_id) / CANDIDATES_DIR


def candidate_workspace_path(layout: Layout, batch_id: str, job_id: str, step_id: str,
                             candidate: int) -> Path:
    return candidates_dir(layout, batch_id, job_id, step_id) / f"c{candidate}"


def base_path(layout: Layout, batch_id: str, job_id: str, step_id: str) -> Path:
    return candidates_dir(layout, batch_id, job_id, step_id) / CANDIDATE_BASE_FILE


def read_base(layout: Layout, batch_id: str, job_id: str, step_id: str) -> CandidateBase | None:
    return read_model(base_path(layout, batch_id, job_id, step_id), CandidateBase)


def write_marker(attempt_dir: Path, candidate: int) -> None:
    """`<attempt>/candidate`: the candidate index, known from the claim on (meta.json comes
    later), so no second attempt of the same index is claimed meanwhile."""
    write_once_bytes(attempt_dir / CANDIDATE_MARKER, f"{candidate}\n".encode())


def read_marker(attempt_dir: str | Path) -> int | None:
    """The candidate index of an attempt directory; None for an attempt of a plain step."""
    try:
        with open(os.path.join(attempt_dir, CANDIDATE_MARKER), "rb") as fh:
            text = fh.read(32)
    except OSError:
        return None
    try:
        value = int(text.strip() or b"0")
    except ValueError:
        return None
    return value if value >= 1 else None
