"""Modal screens: confirm, prompt (resume), quit choice, and the help screen."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

#: every key of the dashboard, for the help screen (tests check it matches the bindings)
KEYS: tuple[tuple[str, str, str], ...] = (
    ("j / k", "move down / up", "everywhere"),
    ("g / G", "first / last row", "everywhere"),
    ("enter", "open: batch → steps → attempts; on an attempt, follow its resume link", ""),
    ("esc", "back (or close the filter)", ""),
    ("/", "filter as you type (enter keeps it, esc clears it)", ""),
    (":", "command palette (also ctrl+p)", ""),
    ("?", "this help", ""),
    ("1-5", "tabs: Attention · Running · Blocked · Failures · All steps", "batch"),
    ("c", "cancel the running attempt (asks first)", "batch, step"),
    ("r", "retry now (ignores backoff and the retry budget)", "batch, step"),
    ("R", "resume the conversation with an extra prompt", "batch, step"),
    ("m", "mark failed for good (asks first; dependants stay blocked)", "batch, step"),
    ("space", "mark rows; c / r / R / m then act on every marked row (step: mark "
              "candidates of a best-of-N step)", "batch, step"),
    ("l", "logs: the readable event tail", "batch, step"),
    ("s", "autoscroll the event tail on/off", "step"),
    ("d", "git diff of the attempt; with two candidates marked: what one did differently "
          "from the other", "batch, step"),
    ("p", "promote the candidate under the cursor (best-of-N steps; asks first)", "step"),
    ("H", "history across batches: attempts and failures per hour, retry rates, tokens, "
          "slowest (from the catalog)", ""),
    ("q", "quit (asks what to do with running attempts)", ""),
)


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no; `y`/enter confirm, `n`/esc refuse."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "No", show=False),
    ]

    def __init__(self, title: str, detail: str = "", yes: str = "Yes") -> None:
        super().__init__()
        self.title_text = title
        self.detail = detail
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            if self.detail:
                yield Static(self.detail, classes="dialog-detail")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.yes} (y)", id="yes", variant="error")
                yield Button("No (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class PromptScreen(ModalScreen[str | None]):
    """One line of text; enter submits (not when empty), esc cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, detail: str = "", placeholder: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.detail = detail
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            if self.detail:
                yield Static(self.detail, classes="dialog-detail")
            yield Input(placeholder=self.placeholder, id="prompt")
            yield Static("enter: send · esc: cancel", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#prompt", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value.strip():
            self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


class QuitScreen(ModalScreen[str]):
    """Attempts are running: leave them to a headless engine, cancel them, or stay."""

    BINDINGS = [
        Binding("l", "choose('leave')", "Leave running"),
        Binding("c", "choose('cancel')", "Cancel them"),
        Binding("escape", "choose('stay')", "Stay"),
        Binding("s", "choose('stay')", "Stay", show=False),
    ]

    def __init__(self, running: int, allow_detach: bool = True) -> None:
        super().__init__()
        self.running = running
        self.allow_detach = allow_detach

    def compose(self) -> ComposeResult:
        n = self.running
        with Vertical(classes="dialog", id="quit-dialog"):
            yield Label(f"{n} run attempt{'s' if n != 1 else ''} still running",
                        classes="dialog-title")
            detail = ("Leave them running: a headless engine (phh run --no-ui) takes them "
                      "over and keeps scheduling; `phh run` later reopens the dashboard.\n"
                      if self.allow_detach else "")
            yield Static(detail + "Cancel them: stop every Codex process now (each attempt "
                         "ends canceled).", classes="dialog-detail")
            with Horizontal(classes="dialog-buttons"):
                if self.allow_detach:
                    yield Button("Leave running (l)", id="leave", variant="primary")
                yield Button("Cancel them (c)", id="cancel", variant="error")
                yield Button("Stay (esc)", id="stay")

    def on_mount(self) -> None:
        self.query_one("#stay", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(str(event.button.id))

    def action_choose(self, choice: str) -> None:
        if choice == "leave" and not self.allow_detach:
            return
        self.dismiss(choice)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("question_mark", "close", "Close", show=False),
        Binding("q", "close", "Close", show=False),
    ]

    def __init__(self, keys: Sequence[tuple[str, str, str]] = KEYS) -> None:
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=True, header_style="bold", expand=True,
                      pad_edge=False)
        table.add_column("key", style="bold cyan", no_wrap=True)
        table.add_column("what it does")
        table.add_column("where", style="dim", no_wrap=True)
        for key, what, where in self.keys:
            table.add_row(key, what, where)
        with Vertical(classes="dialog", id="help-dialog"):
            yield Label("phh dashboard keys", classes="dialog-title")
            with VerticalScroll():
                yield Static(table)
            yield Static(Text("esc / ? / q: close", style="dim"), classes="dialog-hint")

    def action_close(self) -> None:
        self.dismiss(None)
