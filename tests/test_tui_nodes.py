"""The system screen's cluster nodes (issue 13): one row per node of each serving cluster
runner, from the health.json its engine writes (RunnerHealth.nodes, the runner's `nodes()`),
shown by the real app with its own engine on a temp root."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from conftest import Harness
from test_tui_keys import SIZE, make_app, until

from phh_engine.models import RunnerHealth, utcnow
from phh_engine.models.health import RunnerNode
from phh_engine.store.files import atomic_write_json
from phh_tui.nodes_view import NodeTable
from phh_tui.screens import SystemScreen

pytestmark = pytest.mark.codex


def _write_cluster(h: Harness, nodes: list[RunnerNode]) -> None:
    now = utcnow()
    atomic_write_json(h.layout.runner_health("cluster"), RunnerHealth(
        runner_id="cluster", host="head", pid=1, started_at=now, last_seen_at=now,
        capacity=16, running=4, draining=False, phh_version="0", nodes=nodes))


def _cells(t: NodeTable) -> dict[str, list[str]]:
    return {k: [str(c) for c in t.get_row(k)] for k in t.keys}


async def test_system_screen_shows_one_row_per_cluster_node(harness: Harness) -> None:
    now = utcnow()
    _write_cluster(harness, [
        RunnerNode(label="a", node_id="n1", alive=True, slots_total=8, slots_used=3,
                   agents_running=3, last_seen_at=now - timedelta(seconds=2)),
        RunnerNode(label="b", node_id="n2", alive=True, slots_total=8, slots_used=1,
                   agents_running=1, last_seen_at=now - timedelta(seconds=40),
                   error="GetTimeoutError: no answer"),
    ])
    app = make_app(harness, tick_seconds=0.1)
    async with app.run_test(size=SIZE) as pilot:
        screen = await until(pilot, lambda: isinstance(app.screen, SystemScreen)
                             and app.screen, what="the system screen")
        table = screen.query_one("#nodes", NodeTable)
        await until(pilot, lambda: table.keys == ["cluster/a", "cluster/b"], 60,
                    "a row per node")
        assert table.display
        rows = _cells(table)
        runner, label, state, slots, agents, beat, error = rows["cluster/a"]
        assert (runner, label, state, slots, agents, error) == (
            "cluster", "a", "alive", "3/8", "3", "")
        assert beat.endswith("s ago"), beat
        assert rows["cluster/b"][2:5] == ["no agent", "1/8", "1"]
        assert rows["cluster/b"][5].startswith("4") and "no answer" in rows["cluster/b"][6]
        # the batch list keeps the focus and the keys
        assert app.focused is screen.query_one("#batches") and screen.table() is app.focused

        # node b is lost, a new node c joins (never answered yet): the rows follow
        _write_cluster(harness, [
            RunnerNode(label="a", alive=True, slots_total=8, slots_used=8, agents_running=8,
                       last_seen_at=utcnow()),
            RunnerNode(label="b", alive=False, slots_total=8, slots_used=0, agents_running=0),
            RunnerNode(label="c", alive=True, slots_total=4, slots_used=0, agents_running=0),
        ])

        def updated() -> dict[str, Any] | None:
            rows = _cells(table)
            return rows if len(rows) == 3 and rows["cluster/b"][2] == "lost" else None
        rows = await until(pilot, updated, 60, "b lost and c joined")
        assert rows["cluster/a"][3] == "8/8"
        assert rows["cluster/c"][2:6] == ["alive", "0/4", "0", "never"]

        # a runner whose health is stale is not serving: no node rows, table hidden
        stale = utcnow() - timedelta(hours=1)
        atomic_write_json(harness.layout.runner_health("cluster"), RunnerHealth(
            runner_id="cluster", host="head", pid=1, started_at=stale, last_seen_at=stale,
            capacity=16, running=0, draining=False, phh_version="0",
            nodes=[RunnerNode(label="a", alive=True, slots_total=8, slots_used=0,
                              agents_running=0)]))
        await until(pilot, lambda: not table.keys and not table.display, 60, "table hidden")
