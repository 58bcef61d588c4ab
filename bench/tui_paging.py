"""Dashboard keystroke latency on a 20,000-step batch, beside the same keys on a 20-step batch
(the floor), in the same run (issue 14: "a page <= 50 ms").

    .venv/bin/python bench/tui_paging.py [--jobs 10000] [--presses 40] [--keep]

A synthetic root (phh_tui.synthetic: every state the dashboard draws) holds a batch of JOBS
two-step jobs and one of 10 jobs. The real app runs headless (Textual's Pilot driver) over it
with a store backend, twice:

* **in memory** (an open batch): the All steps list is a window of rows from the board
  (phh_tui/paging.py ListPager), while the batch changes every 50 ms as under a busy engine
  (the board recomputed as often as the throttle allows);
* **settled** (the batch is not in memory, as the bounded engine leaves a finished batch):
  every list pages from the catalog (a real SQLite file, built first; CatalogPages).

Timed, key sent -> its effect in the app's state (median / p95 / max): `5` (All steps
shown), `j` at 30/s across window edges (pages fetched), `G` / `g` (last / first rows),
each filter keystroke (`/` then `job_0123`), `esc` (filter cleared). Prints figures, asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from textual import events  # noqa: E402
from textual.app import App  # noqa: E402

from phh_engine.store.catalog import Catalog  # noqa: E402
from phh_engine.store.paths import Layout  # noqa: E402
from phh_tui.app import PhhApp  # noqa: E402
from phh_tui.backend import StoreBackend  # noqa: E402
from phh_tui.paging import WINDOW  # noqa: E402
from phh_tui.screens import BatchScreen  # noqa: E402
from phh_tui.synthetic import FIXED_NOW, SyntheticStore  # noqa: E402
from phh_tui.widgets import KeyedTable  # noqa: E402

SIZE = (160, 50)
TARGET_MS = 50.0
BIG, SMALL = "batch_big", "batch_small"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def stats(samples: list[float]) -> tuple[float, float, float]:
    s = sorted(samples)
    return statistics.median(s), s[min(len(s) - 1, int(len(s) * 0.95))], s[-1]


async def wait(cond: Callable[[], Any], timeout: float = 60.0) -> float:
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.0005)
    return time.perf_counter() - t0


async def key(app: App[Any], name: str, done: Callable[[], bool]) -> float:
    """Send one key through the driver (as a terminal would); time until its effect."""
    ev = events.Key(name, name if len(name) == 1 else None)
    ev.set_sender(app)
    assert app._driver is not None
    t0 = time.perf_counter()
    app._driver.send_message(ev)
    await wait(done, 20)
    return time.perf_counter() - t0


class SettledBackend(StoreBackend):
    """A store backend that leaves `skip` on disk, as the bounded engine leaves settled
    batches: listed from the catalog, paged from it."""

    def __init__(self, root: Path, skip: set[str]) -> None:
        super().__init__(root, watch=False)
        self.left = set(skip)

    def load(self) -> None:  # (the synthetic batch has running attempts: never settled)
        self.index.skip = set(self.left)
        self.index.load()


async def churn(app: PhhApp, batch_id: str, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        app.store_changed({batch_id})


async def keys_on(app: PhhApp, pilot: Any, batch_id: str, presses: int,
                  out: dict[str, list[float]]) -> None:
    """Open `batch_id` from the system screen, then the timed keys, into `out`."""
    while len(app.screen_stack) > 1:
        app.pop_screen()
    await pilot.pause()
    table = app.screen.query_one("#batches", KeyedTable)
    await wait(lambda: batch_id in table.keys)
    table.select_key(batch_id)
    await pilot.pause()
    await key(app, "enter", lambda: isinstance(app.screen, BatchScreen)
              and app.screen.batch_id == batch_id and (app.screen.sb or app.screen.settled))
    screen = app.screen
    assert isinstance(screen, BatchScreen)
    steps = screen.query_one("#t-steps", KeyedTable)
    out.setdefault("5: All steps shown", []).append(
        await key(app, "5", lambda: steps.row_count > 0 and app.focused is steps))
    for _ in range(presses):
        if steps.cursor_row >= steps.row_count - 1:  # the 20-step list's end: start over
            await key(app, "g", lambda: steps.cursor_row == 0)
        before = steps.current_key
        out.setdefault("j (cursor down, 30/s)", []).append(
            await key(app, "j", lambda b=before: steps.current_key != b))
        await asyncio.sleep(0.03)
    for _ in range(5):
        out.setdefault("G (last row)", []).append(await key(
            app, "G", lambda: steps.row_count > 0 and steps.cursor_row == steps.row_count - 1
            and not screen.windows["steps"].more_after))
        out.setdefault("g (first row)", []).append(await key(
            app, "g", lambda: steps.cursor_row == 0 and not screen.windows["steps"].more_before))
    await key(app, "slash", lambda: screen.has_class("filtering"))
    for ch in "job_0123"[: 8 if batch_id == BIG else 6]:
        before = steps.syncs
        out.setdefault("filter keystroke", []).append(
            await key(app, ch, lambda b=before: steps.syncs > b))
    out.setdefault("esc (filter cleared)", []).append(
        await key(app, "escape", lambda: screen.windows["steps"].text == ""
                  and steps.row_count > 0))
    await key(app, "escape", lambda: not screen.has_class("filtering"))


async def run(root: Path, backend: StoreBackend, presses: int, busy: bool) -> None:
    app = PhhApp(root, backend=backend, clock=lambda: FIXED_NOW, alerts="off")
    async with app.run_test(size=SIZE) as pilot:
        await wait(lambda: app.board is not None and app.board.system is not None
                   and len(app.board.system.batches) == 2, 300)
        stir = asyncio.create_task(churn(app, BIG, 0.05)) if busy else None
        big: dict[str, list[float]] = {}
        small: dict[str, list[float]] = {}
        for _ in range(2):  # alternate, so both meet the same background
            await keys_on(app, pilot, BIG, presses // 2, big)
            await keys_on(app, pilot, SMALL, presses // 2, small)
        if stir is not None:
            stir.cancel()
        rows = max(t.row_count for t in app.screen.query(KeyedTable)) if isinstance(
            app.screen, BatchScreen) else 0
        n = max((r.steps_total for r in app.board.system.batches), default=0) \
            if app.board and app.board.system else 0
        print(f"  {'key':<24} {f'{n:,}-step batch (median / p95 / max)':>40}   "
              f"{'20-step floor (median / p95)':>28}")
        for name, samples in big.items():
            m, p, x = stats(samples)
            fm, fp, _ = stats(small[name])
            flag = "ok" if m * 1000 <= TARGET_MS else "over"
            print(f"  {name:<24} {ms(m)} / {ms(p)} / {ms(x)}   {ms(fm)} / {ms(fp)}  "
                  f"[{flag} vs {TARGET_MS:g} ms]")
        print(f"  rows held by the All steps table at most: {WINDOW} (window); "
              f"largest table now {rows}; board recomputes {app.refreshes}, last cost "
              f"{ms(app.board.cost_seconds if app.board else 0)}")
        await pilot.press("q")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--presses", type=int, default=40)
    ap.add_argument("--keep", action="store_true", help="keep the synthetic store")
    ap.add_argument("--store", type=Path, help="a root a --keep run left (not rebuilt)")
    args = ap.parse_args()
    tmp = args.store.resolve() if args.store else Path(
        tempfile.mkdtemp(prefix="phh-bench-paging-")).resolve()
    try:
        if not args.store:
            t = time.perf_counter()
            store = SyntheticStore(tmp)
            store.batch(args.jobs, batch_id=BIG)
            store.batch(10, batch_id=SMALL)
            print(f"synthetic root {tmp}: {args.jobs * 2:,} + 20 steps, written in "
                  f"{time.perf_counter() - t:.1f} s")
            t = time.perf_counter()
            cat = Catalog.open(Layout(tmp))
            cat.rebuild()
            cat.close()
            print(f"catalog built in {time.perf_counter() - t:.1f} s")
        print("in memory (an open batch; the All steps list windows the board's rows), the "
              "big batch changing every 50 ms:")
        asyncio.run(run(tmp, StoreBackend(tmp, watch=False), args.presses, busy=True))
        print("settled (not in memory, as the bounded engine leaves it; every list pages "
              "from the catalog):")
        asyncio.run(run(tmp, SettledBackend(tmp, {BIG}), args.presses, busy=False))
    finally:
        if args.keep or args.store:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
