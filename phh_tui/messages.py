"""What a screen asks the app to do (intents), as Textual messages.

Screens post these and never call the app: `PhhApp` handles them (`on_run_action`,
`on_open_batch`, `on_open_step`). A message posted on a screen bubbles to the app, so a
screen needs no import of the app at run time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from textual.message import Message

#: the operator actions a screen can ask for (the engine's override actions)
ActionName = Literal["cancel", "retry", "resume", "mark_failed", "promote"]
#: the step screen's lower tabs
StepTab = Literal["events", "report", "state", "diff"]


class StepRef(NamedTuple):
    """One step of a batch, as an action's target."""

    job_id: str
    step_id: str


class RunAction(Message):
    """Apply `action` to `targets` (steps of `batch_id`); `options` are the action's keyword
    arguments (e.g. `reason`, `prompt`, `run_id`). The app reports each outcome."""

    def __init__(self, action: ActionName, batch_id: str, targets: Sequence[StepRef],
                 options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.action: ActionName = action
        self.batch_id = batch_id
        self.targets = list(targets)
        self.options = dict(options or {})


class OpenBatch(Message):
    """Show the batch screen of `batch_id`."""

    def __init__(self, batch_id: str) -> None:
        super().__init__()
        self.batch_id = batch_id


class OpenStep(Message):
    """Show the step screen of `job_id.step_id` in `batch_id`, on `tab`; `run_id` selects an
    attempt (None: follow the newest)."""

    def __init__(self, batch_id: str, job_id: str, step_id: str, *, tab: StepTab = "events",
                 run_id: str | None = None) -> None:
        super().__init__()
        self.batch_id = batch_id
        self.job_id = job_id
        self.step_id = step_id
        self.tab: StepTab = tab
        self.run_id = run_id
