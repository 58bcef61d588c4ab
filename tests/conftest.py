"""Shared fixtures: one scripted model stand-in per session, fresh phh roots pointed at it."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# every engine under test checks its incremental scheduler against a full pass on each wake
# (inherited by engines the tests start as subprocesses)
os.environ["PHH_CHECK_SCHEDULER"] = "1"

from phh_engine.engine.loop import Engine, EngineEvent
from phh_engine.interfaces.submit import submit
from phh_engine.models import HarnessSettings
from phh_engine.runners.codex_cli import CodexNotFound, locate_codex
from phh_engine.standin import StandIn, script
from phh_engine.store.catalog import Catalog
from phh_engine.store.files import atomic_write_json
from phh_engine.store.harness_config import materialize
from phh_engine.store.paths import Layout

GOAL = " ".join(f"word{i}" for i in range(160))


@pytest.fixture(scope="session")
def codex_bin() -> str:
    try:
        return locate_codex()
    except CodexNotFound as exc:  # make test installs it; a missing binary is a real failure
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def standin() -> Iterator[StandIn]:
    with StandIn() as s:
        yield s


class Harness:
    """A phh root wired to the stand-in, plus helpers to submit and run to idle."""

    def __init__(self, root: Path, standin: StandIn) -> None:
        self.root = root
        self.layout = Layout(root)
        self.standin = standin
        self.workspace = root / "ws"
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.codex_config = standin.write_config(root / "codex_config.toml")
        self.settings = HarnessSettings()
        self.settings.codex.config_toml = str(self.codex_config)
        self.settings.codex.cancel_grace_seconds = 2.0
        self.settings.runners[0].capacity = 4
        self.events: list[EngineEvent] = []
        self._threads: list[tuple[Engine, Any, list[BaseException]]] = []
        self.write_settings()

    def write_settings(self) -> None:
        atomic_write_json(self.layout.settings_path,
                          self.settings.model_dump(mode="json", exclude_none=True))
        materialize(self.layout, self.settings)

    def table(self, jobs: list[dict[str, Any]], **batch: Any) -> dict[str, Any]:
        return {
            "batch_goal_summary": GOAL,
            "working_root": str(self.workspace),
            "allow_shared_directory_concurrency": True,
            **batch,
            "jobs": jobs,
        }

    def submit(self, jobs: list[dict[str, Any]], **batch: Any) -> str:
        path = self.root / f"lt_{len(list(self.root.glob('lt_*.json')))}.json"
        path.write_text(json.dumps(self.table(jobs, **batch)))
        return submit(self.layout, path).batch_id

    def engine(self, **kw: Any) -> Engine:
        eng = Engine(self.root, until_idle=True, on_event=self.events.append, **kw)
        eng.setup()
        return eng

    def run(self, timeout: float = 120, **kw: Any) -> Engine:
        eng = self.engine(**kw)
        asyncio.run(asyncio.wait_for(eng.serve(), timeout))
        return eng

    def start(self, **kw: Any) -> Engine:
        """An engine serving in a background thread (stop it with `stop`)."""
        import threading

        eng = Engine(self.root, on_event=self.events.append, **kw)
        eng.setup()
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                asyncio.run(eng.serve())
            except BaseException as exc:  # surfaced by stop()
                errors.append(exc)

        t = threading.Thread(target=serve, name="phh-test-engine", daemon=True)
        t.start()
        assert eng.wait_serving(10), "engine loop"
        self._threads.append((eng, t, errors))
        return eng

    def stop(self, eng: Engine, cancel_running: bool = True, timeout: float = 60) -> None:
        for e, t, errors in self._threads:
            if e is eng:
                eng.stop(cancel_running=cancel_running)
                t.join(timeout)
                assert not t.is_alive(), "engine did not stop"
                if errors:
                    raise errors[0]

    def call(self, eng: Engine, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on a serving engine's loop and return its result."""
        return eng.run_threadsafe(coro).result(timeout)

    def attempts(self, batch_id: str, job_id: str, step_id: str) -> list[Path]:
        d = self.layout.attempts_dir(batch_id, job_id, step_id)
        return sorted(p for p in d.iterdir() if not p.name.startswith(".")) if d.is_dir() else []

    @staticmethod
    def state(attempt: Path) -> dict[str, Any]:
        """Like every reader: a missing state.json (attempt just created) means queued."""
        try:
            return json.loads((attempt / "state.json").read_text())
        except FileNotFoundError:
            return {"status": "queued"}

    @staticmethod
    def meta(attempt: Path) -> dict[str, Any]:
        return json.loads((attempt / "meta.json").read_text())


@pytest.fixture
def harness(tmp_path: Path, standin: StandIn, codex_bin: str) -> Iterator[Harness]:
    # Codex refuses an -o path under a symlink: use the resolved tmp path (docs/codex.md)
    h = Harness(tmp_path.resolve(), standin)
    yield h
    for eng, t, _ in h._threads:  # never leave an engine (or its Codex) behind
        if t.is_alive():
            eng.stop(cancel_running=True)
            t.join(60)


def step(step_id: str, *actions: dict[str, Any], prompt: str = "Do the task.",
         **kw: Any) -> dict[str, Any]:
    return {"step_id": step_id, "prompt": prompt + ("\n\n" + script(*actions) if actions else ""),
            **kw}


def final(summary: str = "done", **kw: Any) -> dict[str, Any]:
    return {"final": {"summary": summary, **kw}}


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll a condition with a deadline (tests never sleep as synchronisation)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(autouse=True)
def _no_real_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never talk to a real model: drop any real key from the environment."""
    for key in ("OPENAI_API_KEY", "CODEX_API_KEY"):
        if os.environ.get(key):
            monkeypatch.delenv(key)


def rebuilt(layout: Layout, tmp: Path) -> dict[str, Any]:
    """A from-scratch catalog of the root's files (a scratch file under `tmp`): its
    snapshot, what a kept catalog must equal."""
    cat = Catalog.open(layout, tmp / f"scratch-{os.urandom(4).hex()}.sqlite3")
    try:
        cat.rebuild()
        return cat.snapshot()
    finally:
        cat.close()


def as_left(layout: Layout) -> dict[str, Any]:
    """The catalog exactly as its writers left it: no refresh from the files."""
    cat = Catalog.open(layout)
    try:
        return cat.snapshot()
    finally:
        cat.close()
