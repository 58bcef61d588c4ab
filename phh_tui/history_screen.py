"""The dashboard's "history" screen (key H): attempts and failures per hour (sparklines),
retry rates by failure class, token usage per day and per model, the slowest attempts; all
from the catalog (phh_engine/interfaces/history.py, the same queries as `phh history`)."""

from __future__ import annotations

from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Sparkline, Static

from phh_engine.store.paths import Layout

#: hours shown by the sparklines (the most recent ones that had attempts)
HOURS = 72


class HistoryScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self, layout: Layout) -> None:
        super().__init__()
        self.store_layout = layout

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Static("attempts per hour", id="hist-attempts-label")
            yield Sparkline([], id="hist-attempts")
            yield Static("failures per hour", id="hist-failed-label")
            yield Sparkline([], id="hist-failed")
            yield Static("retry rates by failure class")
            yield DataTable(id="hist-retries", cursor_type="row")
            yield Static("tokens per day")
            yield DataTable(id="hist-day", cursor_type="row")
            yield Static("tokens per model")
            yield DataTable(id="hist-model", cursor_type="row")
            yield Static("slowest attempts")
            yield DataTable(id="hist-slowest", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "phh · history"
        self.action_reload()

    def action_reload(self) -> None:
        self._load()

    @work(thread=True, exclusive=True)
    def _load(self) -> None:
        from phh_engine.interfaces import history

        reader = history.Reader(self.store_layout)
        try:
            data = {
                "hourly": reader.run(history.per_hour),
                "retries": reader.run(history.retry_rates),
                "day": reader.run(history.token_usage, by="day"),
                "model": reader.run(history.token_usage, by="model"),
                "slowest": reader.run(history.slowest_steps, limit=20),
            }
        except Exception as exc:  # a catalog that cannot be used here: say why, stay up
            message = getattr(exc, "message", str(exc))
            self.app.call_from_thread(self.notify, f"history: {message}", severity="error")
            return
        finally:
            reader.close()
        self.app.call_from_thread(self._show, data)

    def _show(self, data: dict[str, Any]) -> None:
        rows = data["hourly"]["rows"][-HOURS:]
        self.query_one("#hist-attempts", Sparkline).data = [r["attempts"] for r in rows]
        self.query_one("#hist-failed", Sparkline).data = [r["failed"] for r in rows]
        span = f" ({rows[0]['hour']}h .. {rows[-1]['hour']}h UTC)" if rows else " (none yet)"
        total = sum(r["attempts"] for r in rows)
        failed = sum(r["failed"] for r in rows)
        self.query_one("#hist-attempts-label", Static).update(
            f"attempts per hour{span}: {total}")
        self.query_one("#hist-failed-label", Static).update(f"failures per hour: {failed}")
        _fill(self.query_one("#hist-retries", DataTable), data["retries"]["rows"],
              ["failure_class", "failures", "retried", "retry_succeeded", "retry_rate"])
        tok = ["key", "attempts", "input_tokens", "cached_input_tokens", "output_tokens"]
        _fill(self.query_one("#hist-day", DataTable), data["day"]["rows"], tok)
        _fill(self.query_one("#hist-model", DataTable), data["model"]["rows"], tok)
        _fill(self.query_one("#hist-slowest", DataTable), data["slowest"]["attempts"],
              ["batch_id", "job_id", "step_id", "run_id", "status", "duration_seconds"])


def _fill(table: DataTable[Any], rows: list[dict[str, Any]], cols: list[str]) -> None:
    table.clear(columns=True)
    table.add_columns(*cols)
    for r in rows:
        table.add_row(*("-" if r.get(c) is None else str(r[c]) for c in cols))
