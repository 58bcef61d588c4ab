"""Repair turns (docs/verification.md#repair-turns): whether a schema-invalid report is sent
back to its own thread for a corrected final message. Pure: no I/O."""

from __future__ import annotations

from ..store.views import AttemptView, StepView


def _schema_invalid(attempt: AttemptView) -> bool:
    st = attempt.state
    return st is not None and st.status == "needs_attention" \
        and st.termination_reason == "schema_invalid"


def repairs_used(step: StepView) -> int:
    """Repair attempts in the chain that ends with the step's latest attempt: walking back
    from it, every attempt started with trigger `repair`. An attempt whose meta.json was not
    read (a scoreboard-only index reads it for the latest only) counts as a repair when it
    and the attempt before it both ended `schema_invalid`, which is how a repair is made."""
    used = 0
    atts = step.attempts
    for i in range(len(atts) - 1, 0, -1):
        a = atts[i]
        if a.meta is not None:
            if a.meta.trigger != "repair":
                break
        elif not (_schema_invalid(a) and _schema_invalid(atts[i - 1])):
            break
        used += 1
    return used


def repair_due(step: StepView) -> str | None:
    """The readiness reason (`repair k/K after schema_invalid`) when the step's latest attempt
    ended `needs_attention` / `schema_invalid`, `repair_turns` allows another repair, and that
    attempt left a thread to continue (a resume base and a thread id); else None."""
    latest = step.latest
    if latest is None or not _schema_invalid(latest):
        return None
    if not latest.resume_base_ready or latest.thread_id is None:
        return None
    used = repairs_used(step)
    allowed = step.spec.repair_turns
    if used >= allowed:
        return None
    return f"repair {used + 1}/{allowed} after schema_invalid"
