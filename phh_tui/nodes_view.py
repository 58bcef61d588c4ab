"""The system screen's cluster nodes: one row per node of each serving cluster runner (Ray,
docs/scale-out.md#watching-it), from the `nodes` its engine writes into health.json (the
runner's `nodes()`).

Hidden while no serving runner has nodes (a single host shows nothing extra).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple

from rich.text import Text

from phh_engine.models import RunnerHealth
from phh_engine.models.health import RunnerNode
from phh_tui.render import duration
from phh_tui.widgets import Cell, Column, KeyedTable, Row

NODE_COLUMNS = (
    Column("runner", "runner"), Column("node", "node"), Column("state", "state"),
    Column("slots", "slots used/total"), Column("agents", "agents running"),
    Column("heartbeat", "last heartbeat"), Column("error", "error", 80),
)
#: rows shown before the table scrolls (the batch list below keeps the rest of the screen)
MAX_ROWS = 8


class NodeRow(NamedTuple):
    """One cluster node. `state`: alive | lost | no agent (alive, its agent not answering).
    `heartbeat`: seconds since its agent last answered the engine (None: never)."""

    runner_id: str
    label: str
    state: str
    used: int
    total: int
    agents: int
    heartbeat: float | None
    error: str

    def cells(self) -> Sequence[Cell]:
        style = {"alive": "green", "lost": "bold red", "no agent": "yellow"}[self.state]
        full = self.total > 0 and self.used >= self.total
        return (
            self.runner_id, Text(self.label, style="bold"), Text(self.state, style=style),
            Text(f"{self.used}/{self.total}", style="yellow" if full else ""),
            Text(str(self.agents), style="" if self.agents else "dim"),
            Text(f"{duration(self.heartbeat)} ago" if self.heartbeat is not None else "never",
                 style="dim" if self.heartbeat is None or self.heartbeat < 5 else "yellow"),
            Text(self.error, style="red"),
        )


def node_row(runner_id: str, n: RunnerNode, now: datetime) -> NodeRow:
    state = "lost" if not n.alive else "no agent" if n.error else "alive"
    beat = (now - n.last_seen_at).total_seconds() if n.last_seen_at is not None else None
    # whole seconds: a row's signature changes once a second, not on every board
    return NodeRow(runner_id, n.label, state, n.slots_used, n.slots_total, n.agents_running,
                   None if beat is None else float(max(0, int(beat))), n.error or "")


def node_rows(runners: Iterable[RunnerHealth], now: datetime) -> list[Row]:
    """A row per node of every runner given (the serving ones), runner then label order."""
    out: list[Row] = []
    for h in sorted(runners, key=lambda h: h.runner_id):
        for n in sorted(h.nodes, key=lambda n: n.label):
            sig = node_row(h.runner_id, n, now)
            out.append(Row(f"{h.runner_id}/{n.label}", sig,
                           f"{h.runner_id} {n.label} {sig.state}"))
    return out


def _render(key: str, sig: object) -> Sequence[Cell]:
    assert isinstance(sig, NodeRow), sig
    return sig.cells()


class NodeTable(KeyedTable):
    """The nodes table; never takes focus from the batch list."""

    DEFAULT_CSS = f"""
    NodeTable {{
        height: auto;
        max-height: {MAX_ROWS + 1};
    }}
    """
    can_focus = False

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(NODE_COLUMNS, _render, id=id)

    def set_filter(self, text: str) -> None:
        """Nodes are always all shown: the screen's filter is for its batch list."""

    def show_nodes(self, runners: Iterable[RunnerHealth], now: datetime) -> None:
        rows = node_rows(runners, now)
        self.display = bool(rows)
        self.sync(rows)
