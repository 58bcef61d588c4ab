"""The phh dashboard: a Textual app hosting the engine (docs/architecture.md#data-flow,
docs/layout.md#harness-config).

Data flow
- The engine runs in a thread worker (group "engine") on its own asyncio loop, so engine
  bursts never stall rendering. Its `on_event` posts `EngineNotice` messages; the runs-tree
  watcher (watchfiles, 50 ms debounce, on the engine's loop: `backend.RunsWatcher`) re-reads
  attempts written by other processes into the index and posts `Poke` (bursts collapse: its
  `can_replace` is True for its own kind).
- The app keeps a set of dirty batch ids; a refresh recomputes only those scoreboards with the
  engine's pure functions in a thread worker (group "board"; `compute="inline"` does it on the
  UI thread instead: bench/tui.py compares both), at most every 100 ms (longer when a compute
  is slow: 3x its cost), then the active screen updates its tables in place by row key.
- A 1 s tick moves ages and durations on screen from the rows already computed (no scoreboard
  is recomputed for the clock's sake); every 30 s all scoreboards are recomputed anyway (stuck
  detection, steps/min).
- If another engine already serves this runner, the app watches the store instead
  (`StoreBackend`) and requests actions through override files.
"""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

from rich.text import Text
from textual import work
from textual.app import App, ScreenStackError, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.message import Message
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from phh_engine.engine.loop import EngineError, EngineEvent
from phh_engine.models import RunnerHealth, utcnow
from phh_engine.store.files import read_model
from phh_tui.backend import Backend, EngineBackend, Outcome, StoreBackend
from phh_tui.board import Alert, Board, compute_board
from phh_tui.dialogs import HelpScreen, QuitScreen
from phh_tui.messages import OpenBatch, OpenStep, RunAction, StepTab
from phh_tui.screens import BatchScreen, PhhScreen, StepScreen, SystemScreen

AlertMode = Literal["bell", "notify", "off"]
ExitPolicy = Literal["ask", "leave", "cancel"]
MIN_REFRESH_SECONDS = 0.1
FULL_REFRESH_TICKS = 30


class Poke(Message):
    """Something changed in the store; the dirty batch ids wait in the app. Collapses."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, Poke)


class EngineNotice(Message):
    """One engine event (attempt started/ended, override applied, ...). Never collapsed."""

    def __init__(self, event: EngineEvent) -> None:
        super().__init__()
        self.event = event


class BoardReady(Message):
    def __init__(self, board: Board | None, alerts: list[Alert], error: str | None = None
                 ) -> None:
        super().__init__()
        self.board = board
        self.alerts = alerts
        self.error = error


class BackendState(Message):
    def __init__(self, up: bool, error: BaseException | None = None) -> None:
        super().__init__()
        self.up = up
        self.error = error


class PhhApp(App[int]):
    """`phh run` / `phh demo`: system → batch → step screens over the live runs store."""

    CSS_PATH = "app.tcss"
    TITLE = "phh"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("colon", "command_palette", "Commands", show=False),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
        Binding("H", "history", "History", show=False),
    ]

    def __init__(
        self,
        root: Path | str,
        *,
        backend: Backend | None = None,
        concurrency: int | None = None,
        runner_id: str = "local",
        alerts: AlertMode = "bell",
        clock: Callable[[], datetime] = utcnow,
        allow_detach: bool = True,
        exit_policy: ExitPolicy = "ask",
        tick_seconds: float = 1.0,
        compute: Literal["inline", "thread"] = "thread",
        ray_address: str | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root).resolve()
        self.runner_id = runner_id
        self.backend: Backend = backend or EngineBackend(
            self.root, concurrency=concurrency, runner_id=runner_id,
            on_event=self._engine_event, ray_address=ray_address)
        self.alerts: AlertMode = alerts
        self.clock = clock
        self.allow_detach = allow_detach
        self.exit_policy: ExitPolicy = exit_policy
        self.tick_seconds = tick_seconds
        self.compute_mode = compute
        self.board: Board | None = None
        self.backend_up = False
        self.backend_error: str | None = None
        self.detached = False
        self.left_running = 0
        self.quitting: str | None = None
        # refresh machinery
        self._dirty: set[str] = set()
        self._dirty_all = True
        self._dirty_lock = threading.Lock()
        self._computing = False
        self._pending = False
        self._refresh_timer: Any = None
        self._last_refresh = 0.0
        self._min_interval = MIN_REFRESH_SECONDS
        self._ticks = 0
        self._backend_worker: Worker[None] | None = None
        #: settled batches' system rows (from the catalog), re-read when the set of batches
        #: in memory changes and on full refreshes
        self._settled: list[str] = []
        self._views_seen: set[str] = set()
        # Set when the backend thread has returned. Textual's worker state cannot tell: its
        # cancel_all() at the end of the message loop marks a thread worker CANCELLED while
        # the thread (the engine, or the store watcher) runs on until it is stopped.
        self.backend_done = threading.Event()
        # what happened, for tests and the status line
        self.refreshes = 0
        self.alert_log: list[Alert] = []
        self.action_log: list[tuple[str, str, str, str, Outcome]] = []
        self.last_event: EngineEvent | None = None

    # ------------------------------------------------------------ lifecycle
    def get_default_screen(self) -> Screen[Any]:
        return SystemScreen()

    def on_mount(self) -> None:
        self.set_interval(self.tick_seconds, self._tick)
        self._start_backend()

    def _start_backend(self) -> None:
        self.backend_done = threading.Event()
        self._backend_worker = self._serve_backend(self.backend, self.backend_done)

    @work(thread=True, group="engine", exit_on_error=False, name="engine")
    def _serve_backend(self, backend: Backend, done: threading.Event) -> None:
        """Thread worker: setup (index load, recovery), then `asyncio.run(engine.serve())`
        with the runs watcher on the same loop, until stopped."""
        try:
            try:
                if isinstance(backend, EngineBackend):
                    backend.setup()
                elif isinstance(backend, StoreBackend):
                    backend.load()
            except Exception as exc:
                self.post_message(BackendState(False, exc))
                return
            self.post_message(BackendState(True))
            backend.serve(self.store_changed)
        finally:
            done.set()

    def on_backend_state(self, msg: BackendState) -> None:
        if msg.up:
            self.backend_up = True
            self.mark_dirty(None)
            return
        err = msg.error
        if isinstance(self.backend, EngineBackend) and self.quitting is None:
            why = str(err) if isinstance(err, EngineError) else f"engine cannot start: {err}"
            self.backend_error = why
            self.notify(why + "\nWatching the store instead; actions go to the engine that "
                        "serves it.", title="observer mode",
                        severity="warning" if isinstance(err, EngineError) else "error",
                        timeout=10)
            self.backend = StoreBackend(self.root, self.runner_id, reason=why)
            self._start_backend()
        else:
            self.backend_error = str(err)
            self.notify(f"cannot read the store: {err}", severity="error", timeout=10)

    def on_unmount(self) -> None:
        """Never leave the backend thread behind: it runs in the app loop's default executor,
        which `asyncio.run` (and pytest-asyncio) join on the way out, so the process would
        hang there. Ask `backend_done`, not the worker: by now Textual has usually marked the
        worker CANCELLED (always so after an exception in a handler), thread still running.
        Stopping a backend that already returned is harmless."""
        if self.quitting is None and not self.backend_done.is_set():
            self.left_running = self.backend.running_here()
            self.backend.stop(cancel_running=self.exit_policy == "cancel",
                              detach=self.exit_policy != "cancel")

    # ------------------------------------------------------------ change intake
    def _engine_event(self, ev: EngineEvent) -> None:
        """Engine thread: one message per event (they are few: starts, ends, overrides)."""
        self.post_message(EngineNotice(ev))

    def store_changed(self, batch_ids: set[str]) -> None:
        """Any thread: remember what changed and poke the app (pokes collapse)."""
        with self._dirty_lock:
            self._dirty.update(batch_ids)
        self.post_message(Poke())

    def mark_dirty(self, batch_id: str | None) -> None:
        with self._dirty_lock:
            if batch_id is None:
                self._dirty_all = True
            else:
                self._dirty.add(batch_id)
        self.request_refresh()

    def on_poke(self, _msg: Poke) -> None:
        self.request_refresh()

    def on_engine_notice(self, msg: EngineNotice) -> None:
        ev = msg.event
        self.last_event = ev
        if ev.kind == "stopping" and ev.detail:
            self.notify(ev.detail, title="engine", timeout=4)
        elif ev.kind == "admission_blocked" and ev.detail:
            # e.g. a spent credential: "sign in again: `codex login`" must not be missed
            self.notify(ev.detail, title="no new starts", severity="warning", timeout=30)
        elif ev.kind == "admission_resumed" and ev.detail:
            self.notify(ev.detail, title="engine", timeout=4)
        self.mark_dirty(ev.batch_id)

    def _tick(self) -> None:
        """Ages and durations move on screen every second from the rows already computed;
        every FULL_REFRESH_TICKS all scoreboards are recomputed (stuck detection, rates)."""
        self._ticks += 1
        if self._ticks % FULL_REFRESH_TICKS == 0:
            self.mark_dirty(None)
        screen = self.phh_screen()
        if screen is not None and self.board is not None and screen.is_mounted:
            with contextlib.suppress(NoMatches):  # a screen on its way out
                screen.tick(self.clock())

    def phh_screen(self) -> PhhScreen | None:
        """The active system/batch/step screen; None under a dialog, and once the app shuts
        down (`is_running` turns False first): Textual then prunes the screens, widgets first,
        while the message queue still drains, and a board computed in its thread or a tick
        still arrives. Updating a screen then raises (ScreenStackError with the stack empty,
        NoMatches on a half-pruned screen) and ends the app with an error."""
        if not self.is_running:
            return None
        try:
            screen = self.screen
        except ScreenStackError:
            return None
        return screen if isinstance(screen, PhhScreen) else None

    # ------------------------------------------------------------ refresh
    def request_refresh(self) -> None:
        if not self.backend_up:
            return
        if self._computing:
            self._pending = True
            return
        if self._refresh_timer is not None:
            return
        wait = max(0.0, self._last_refresh + self._min_interval - time.monotonic())
        self._refresh_timer = self.set_timer(max(wait, 0.005), self._start_compute)

    def _start_compute(self) -> None:
        self._refresh_timer = None
        with self._dirty_lock:
            dirty: set[str] | None = None if self._dirty_all else set(self._dirty)
            self._dirty.clear()
            self._dirty_all = False
        if self.compute_mode == "inline":
            self.on_board_ready(self._compute_board(dirty))
        else:
            self._computing = True
            self._compute(dirty)

    @work(thread=True, group="board", exit_on_error=False)
    def _compute(self, dirty: set[str] | None) -> None:
        self.post_message(self._compute_board(dirty))

    def _compute_board(self, dirty: set[str] | None) -> BoardReady:
        t0 = time.perf_counter()
        try:
            views = self.backend.views()
            if dirty is None or set(views) != self._views_seen:  # a batch settled, or new
                self._settled = self.backend.settled_rows()
                self._views_seen = set(views)
            board, alerts = compute_board(views, self.clock(), self.board, dirty,
                                          beat_ages=self.backend.beat_ages(),
                                          extra_rows=self._settled)
        except Exception as exc:  # a view changed under us (engine thread): try again
            with self._dirty_lock:
                if dirty is None:
                    self._dirty_all = True
                else:
                    self._dirty.update(dirty)
            return BoardReady(None, [], error=repr(exc))
        if dirty is None:
            board.runners = self._read_runners()
        board.cost_seconds = time.perf_counter() - t0
        return BoardReady(board, alerts)

    def _read_runners(self) -> list[RunnerHealth]:
        out = []
        with contextlib.suppress(OSError):
            for path in sorted(self.backend.layout.runners.glob("*/health.json")):
                health = read_model(path, RunnerHealth)
                if health is not None:
                    out.append(health)
        return out

    def on_board_ready(self, msg: BoardReady) -> None:
        self._computing = False
        self._last_refresh = time.monotonic()
        if msg.board is None:
            self._pending = True
        else:
            if self.board is None:
                # The index is loaded: move it (and Textual's own objects) out of the cyclic
                # GC's sight. With 2,000 steps a full collection walks ~100k long-lived
                # objects (~90 ms) and fires mid-refresh; frozen, they are never walked again.
                gc.collect()
                gc.freeze()
            self.board = msg.board
            cost = msg.board.cost_seconds
            # at most ~1/4 of the time recomputing, however big the store (a 20,000-step
            # batch costs over a second: capping the pause at 1 s kept the worker computing,
            # and holding the interpreter, most of the time, which every keystroke felt)
            self._min_interval = max(MIN_REFRESH_SECONDS, 3 * cost)
            self.refreshes += 1
            for alert in msg.alerts:
                self._alert(alert)
            if msg.alerts and self.alerts == "bell":
                self.bell()
            screen = self.phh_screen()
            if screen is not None and screen.is_mounted:
                with contextlib.suppress(NoMatches):  # a screen on its way out
                    screen.show(msg.board)
            elif screen is not None:
                # just pushed, still composing (show would find no widgets): its on_mount
                # draws self.board; one more refresh covers a board that lands in between
                self._pending = True
        if self._pending:
            self._pending = False
            self.request_refresh()

    def _alert(self, alert: Alert) -> None:
        self.alert_log.append(alert)
        if self.alerts == "off":
            return
        severity: Literal["information", "warning", "error"] = (
            "information" if alert.kind == "batch_finished" else
            "warning" if alert.kind == "needs_attention" else "error")
        self.notify(alert.message, title=alert.kind.replace("_", " "), severity=severity,
                    timeout=8)

    def status_line(self) -> Text:
        b = self.backend
        out = Text(style="dim")
        if self.quitting:
            out.append(f"stopping ({self.quitting})…", style="yellow")
        elif isinstance(b, EngineBackend):
            slots = b.slots()
            out.append(f"engine {b.runner_id}")
            if not self.backend_up or slots is None:
                out.append(" starting…")
            else:
                out.append(f" · {slots[0]}/{slots[1]} slots")
                for note in b.header_notes():
                    out.append(f" · {note}", style="yellow")
        elif isinstance(b, StoreBackend):
            out.append("observing: another phh engine serves this runner" if b.reason
                       else "observing", style="yellow" if b.reason else "dim")
        return out

    # ------------------------------------------------------------ operator actions
    def on_run_action(self, msg: RunAction) -> None:
        """A screen asked for an operator action."""
        self.act(msg.action, msg.batch_id, msg.targets, **msg.options)

    def on_open_batch(self, msg: OpenBatch) -> None:
        """A screen asked for a batch (from the system screen: its row under the cursor)."""
        self.open_batch(msg.batch_id)

    def on_open_step(self, msg: OpenStep) -> None:
        """A screen asked for a step (a batch row, or an attempt's resume source)."""
        self.open_step(msg.batch_id, msg.job_id, msg.step_id, tab=msg.tab, run_id=msg.run_id)

    def act(self, action: str, batch_id: str, targets: Iterable[tuple[str, str]],
            **kw: Any) -> Worker[None]:
        """cancel | retry | resume | mark_failed on steps, through the engine's API; each
        result (or error) shows as a notification."""
        return self.run_worker(self._act(action, batch_id, list(targets), kw), group="actions",
                               exit_on_error=False)

    async def _act(self, action: str, batch_id: str, targets: list[tuple[str, str]],
                   kw: dict[str, Any]) -> None:
        results: list[tuple[str, Outcome]] = []
        for job_id, step_id in targets:
            try:
                out = await self.backend.request(action, batch_id, job_id, step_id, **kw)
            except Exception as exc:
                out = Outcome("error", f"{type(exc).__name__}: {exc}")
            results.append((f"{job_id}.{step_id}", out))
            self.action_log.append((action, batch_id, job_id, step_id, out))
        name = action.replace("_", " ")
        bad = [(w, o) for w, o in results if o.outcome in ("rejected", "error")]
        if len(results) == 1:
            where, out = results[0]
            self.notify(out.message, title=f"{name} {where}: {out.outcome}",
                        severity="error" if bad else "information")
        else:
            good = len(results) - len(bad)
            detail = "\n".join(f"{w}: {o.message}" for w, o in bad[:5])
            self.notify(f"{good} applied, {len(bad)} rejected" + (f"\n{detail}" if detail
                                                                   else ""),
                        title=f"{name} x{len(results)}",
                        severity="warning" if bad else "information")
        self.mark_dirty(batch_id)

    # ------------------------------------------------------------ keys
    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_history(self) -> None:
        """History across batches, from the catalog (phh_tui/history_screen.py)."""
        from phh_tui.history_screen import HistoryScreen

        if not isinstance(self.screen, HistoryScreen):
            self.push_screen(HistoryScreen(self.backend.layout))

    async def action_quit(self) -> None:
        if self.quitting is not None:
            return
        running = self.backend.running_here()
        if running == 0:
            self.begin_exit("stop")
        elif self.exit_policy != "ask":
            self.begin_exit(self.exit_policy)
        elif not isinstance(self.screen, QuitScreen):
            self.push_screen(QuitScreen(running, self.allow_detach), self._quit_choice)

    def _quit_choice(self, choice: str | None) -> None:
        if choice in ("leave", "cancel"):
            self.begin_exit(choice)

    def begin_exit(self, how: str) -> None:
        """stop (nothing running) | leave (detach; a headless engine adopts them) | cancel."""
        self.quitting = how
        running = self.backend.running_here()
        if how == "leave":
            self.detached = True
            self.left_running = running
            self.backend.stop(detach=True)
            self.notify(f"leaving {running} attempt(s) running…", timeout=4)
        elif how == "cancel":
            self.backend.stop(cancel_running=True)
            self.notify(f"canceling {running} attempt(s)…", timeout=10)
        else:
            self.backend.stop(detach=True)  # nothing to detach, unless one started just now
        if isinstance(self.screen, PhhScreen):
            self.screen.refresh_crumbs()
        self.run_worker(self._wait_then_exit(), group="quit", exit_on_error=False)

    async def _wait_then_exit(self) -> None:
        worker = self._backend_worker
        if worker is not None and not worker.is_finished:
            with contextlib.suppress(Exception):
                await worker.wait()
        self.exit(0)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "board" and event.state in (WorkerState.ERROR,
                                                             WorkerState.CANCELLED):
            self._computing = False  # never leave the refresh loop stuck
            self.mark_dirty(None)
        if event.worker.group == "engine" and event.state == WorkerState.ERROR:
            self.notify(f"the engine stopped: {event.worker.error!r}", severity="error",
                        timeout=15)

    # ------------------------------------------------------------ command palette
    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        if isinstance(screen, PhhScreen):
            seen: set[str] = set()
            for b in screen.BINDINGS:
                if not isinstance(b, Binding) or not b.description or b.action in seen:
                    continue
                if b.action in ("cursor_down", "cursor_up", "top", "bottom", "back") or \
                        b.action.startswith("tab("):
                    continue
                if screen.check_action(b.action.split("(")[0], ()) is not True:
                    continue
                seen.add(b.action)
                yield SystemCommand(b.description, f"key {b.key_display or b.key} · "
                                    f"{type(screen).__name__.replace('Screen', '').lower()}",
                                    partial(screen.run_action, b.action))
        yield SystemCommand("Help", "every key of the dashboard (?)", self.action_help)
        if self.board is not None and self.board.system is not None:
            for row in self.board.system.batches:
                yield SystemCommand(f"Open batch {row.batch_id}", row.batch_goal_summary_preview,
                                    partial(self.open_batch, row.batch_id), discover=False)
        yield from super().get_system_commands(screen)

    def batch_screen(self, batch_id: str) -> str:
        """One BatchScreen per batch, installed (so popping keeps it): going back to a
        2,000-step batch redraws only what changed instead of building its tables again."""
        name = f"batch:{batch_id}"
        if not self.is_screen_installed(name):
            self.install_screen(BatchScreen(batch_id), name=name)
        return name

    def open_batch(self, batch_id: str) -> None:
        while len(self.screen_stack) > 1:
            self.pop_screen()
        self.push_screen(self.batch_screen(batch_id))

    def open_step(self, batch_id: str, job_id: str, step_id: str, tab: StepTab = "events",
                  run_id: str | None = None) -> None:
        self.push_screen(StepScreen(batch_id, job_id, step_id, tab=tab, run_id=run_id))


# ---------------------------------------------------------------- entry point
def headless_log(root: Path, runner_id: str) -> Path:
    return root / "runners" / runner_id / "headless.log"


def spawn_headless(root: Path, runner_id: str = "local", concurrency: int | None = None,
                   ray_address: str | None = None) -> tuple[int, Path]:
    """`phh --root ROOT run --no-ui` in its own session: it adopts the attempts the dashboard
    left running and carries on scheduling after the terminal closes."""
    log_path = headless_log(root, runner_id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "phh_tui.cli", "--root", str(root), "run", "--no-ui",
            "--runner-id", runner_id]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    if ray_address:
        argv += ["--ray", ray_address]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ), cwd=str(root))
    return proc.pid, log_path


def run_app(root: Path | str, *, concurrency: int | None = None, runner_id: str = "local",
            alerts: AlertMode = "bell", allow_detach: bool = True,
            observe: bool = False, ray_address: str | None = None) -> int:
    """The dashboard with the engine inside (with `observe`: watching the store an engine
    elsewhere serves); returns the exit code. `alerts`: ring the bell and notify (bell),
    notify only, or neither (off) when a step becomes stuck, needs_attention or failed, and
    when a batch finishes."""
    root = Path(root).resolve()
    backend = (StoreBackend(root, runner_id, reason="an engine already serves this root")
               if observe else None)
    app = PhhApp(root, backend=backend, concurrency=concurrency, runner_id=runner_id,
                 alerts=alerts, allow_detach=allow_detach, ray_address=ray_address)
    rc = app.run()
    if app.detached and app.left_running:
        pid, log = spawn_headless(root, runner_id, concurrency, ray_address)
        print(f"phh: {app.left_running} attempt(s) keep running under a headless engine "
              f"(pid {pid}, log {log}); `phh --root {root} run` reopens the dashboard",
              file=sys.stderr)
    elif app.left_running:
        print(f"phh: {app.left_running} attempt(s) were left running; the next "
              f"`phh --root {root} run` adopts them", file=sys.stderr)
    return rc or 0
