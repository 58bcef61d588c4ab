"""Small widgets: a DataTable kept in sync by row key, and the crumb trail."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.text import Text
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Static, TabbedContent, TabPane
from textual.widgets._data_table import Row as DTRow
from textual.widgets.data_table import CellDoesNotExist, ColumnKey, RowKey

Cell = str | Text
MARK = "●"
#: above this many removals at once, clear and re-add (remove_row is O(rows) each)
REBUILD_THRESHOLD = 64


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    label: str
    #: the most cells the column grows to (content is cropped beyond it)
    max_width: int = 60


@dataclass(frozen=True, slots=True)
class Row:
    """One row to show: `sig` is a cheap value that changes whenever the cells would; cells
    are only rendered for new or changed rows. `search` is what the filter matches."""

    key: str
    sig: Hashable
    search: str


class KeyedTable(DataTable[Cell]):
    """A DataTable updated in place by row key: unchanged rows are not touched, changed rows
    update only the cells that differ, and the cursor stays on its row when rows move.

    Column widths are kept here, from the cells' plain text as they arrive, instead of by
    DataTable, which measures every cell of every new row through Rich (about 30 µs each:
    0.4 s to show 2,000 rows, again on every filter keystroke). Every cell is a Text, so none
    is parsed as markup either.
    """

    BINDINGS = [Binding("enter", "select_cursor", "Open")]

    def __init__(self, columns: Sequence[Column], render: Callable[[str, Hashable],
                 Sequence[Cell]], *, markable: bool = False, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self.spec = list(columns)
        self.render_row = render
        self.markable = markable
        self.marked: set[str] = set()
        self.filter_text = ""
        self._sig: dict[str, Hashable] = {}
        self._cells: dict[str, tuple[Text, ...]] = {}
        self._order: list[str] = []
        self._all: list[Row] = []
        self._widths = [cell_len(c.label) for c in self.spec]
        self.syncs = 0
        self.cells_updated = 0

    def on_mount(self) -> None:
        if self.markable:
            self.add_column(" ", width=1, key="_mark")
        for col, width in zip(self.spec, self._widths, strict=True):
            self.add_column(col.label, width=width, key=col.key)

    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        # widths are ours (see the class docstring): only the virtual size is left to do
        super()._update_dimensions(())

    def _make_cells(self, key: str, sig: Hashable) -> tuple[Text, ...]:
        cells = tuple(c if isinstance(c, Text) else Text(c)
                      for c in self.render_row(key, sig))
        for i, c in enumerate(cells):
            n = cell_len(c.plain)
            if n > self._widths[i]:
                self._widen(i, min(n, self.spec[i].max_width))
        return cells

    def _widen(self, i: int, width: int) -> None:
        if width <= self._widths[i]:
            return
        self._widths[i] = width
        column = self.columns.get(ColumnKey(self.spec[i].key))
        if column is not None:
            column.width = width
            self._clear_caches()
            self._require_update_dimensions = True
            self.refresh()

    # ------------------------------------------------------------ queries
    @property
    def current_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(Coordinate(self.cursor_row, 0)).row_key
        except CellDoesNotExist:
            return None
        return key.value

    @property
    def keys(self) -> list[str]:
        return list(self._order)

    def targets(self) -> list[str]:
        """Marked rows that are shown, else the cursor row."""
        shown = [k for k in self._order if k in self.marked]
        if shown:
            return shown
        cur = self.current_key
        return [cur] if cur else []

    # ------------------------------------------------------------ marks
    def toggle_mark(self) -> None:
        key = self.current_key
        if key is None or not self.markable:
            return
        self.marked.symmetric_difference_update({key})
        self._paint_mark(key)
        self.action_cursor_down()

    def clear_marks(self) -> None:
        old, self.marked = self.marked, set()
        for key in old:
            self._paint_mark(key)

    def _paint_mark(self, key: str) -> None:
        if self.markable and key in self._sig:
            self.update_cell(key, "_mark", Text(MARK, style="bold yellow")
                             if key in self.marked else "")

    # ------------------------------------------------------------ sync
    def set_filter(self, text: str) -> None:
        self.filter_text = text
        self.sync(self._all)

    def sync(self, rows: Sequence[Row]) -> None:
        """Show exactly `rows` (after the filter), in this order, touching only what changed."""
        self.syncs += 1
        self._all = list(rows)
        needle = self.filter_text.lower()
        wanted = [r for r in rows if needle in r.search.lower()] if needle else list(rows)
        keys = [r.key for r in wanted]
        keyset = set(keys)
        cursor_key = self.current_key
        removed = [k for k in self._order if k not in keyset]
        if len(removed) > REBUILD_THRESHOLD:
            self._rebuild(wanted, cursor_key)
            return
        for key in removed:
            self.remove_row(key)
            del self._sig[key], self._cells[key]
        self._order = [k for k in self._order if k in keyset]
        added: list[tuple[str, tuple[Text, ...]]] = []
        for row in wanted:
            old = self._sig.get(row.key)
            if old is None and row.key not in self._sig:
                cells = self._make_cells(row.key, row.sig)
                self._sig[row.key], self._cells[row.key] = row.sig, cells
                added.append((row.key, cells))
                self._order.append(row.key)
            elif old != row.sig:
                cells = self._make_cells(row.key, row.sig)
                before = self._cells[row.key]
                for col, new, was in zip(self.spec, cells, before, strict=True):
                    if new != was:
                        self.update_cell(row.key, col.key, new)
                        self.cells_updated += 1
                self._sig[row.key], self._cells[row.key] = row.sig, cells
        self._append(added)
        if self._order != keys:
            self._reorder(keys, cursor_key)
        elif removed:
            self._restore_cursor(cursor_key)

    def _append(self, rows: list[tuple[str, tuple[Text, ...]]]) -> None:
        """DataTable.add_row for many rows at once. add_row re-assigns the cursor (a reactive
        with always_update: watchers run) once per row, ~150 µs each: 0.3 s for 2,000 rows.
        This does its bookkeeping per row and the cursor part once (Textual is pinned; the
        snapshot tests would show a change in these internals)."""
        if not rows:
            return
        columns = [c.key for c in self.ordered_columns]
        for key, cells in rows:
            row_key = RowKey(key)
            self._row_locations[row_key] = len(self.rows)
            self._data[row_key] = dict(zip(columns, self._with_mark(key, cells), strict=True))
            self.rows[row_key] = DTRow(row_key, 1)
            self._new_rows.add(row_key)
        self._require_update_dimensions = True
        self._update_count += 1
        first = self.row_count == len(rows)
        self.cursor_coordinate = self.cursor_coordinate
        if first and self.show_cursor and self.cursor_type != "none":
            self._highlight_cursor()
        self.check_idle()
        self.refresh()

    def _with_mark(self, key: str, cells: tuple[Cell, ...]) -> tuple[Cell, ...]:
        if not self.markable:
            return cells
        mark: Cell = Text(MARK, style="bold yellow") if key in self.marked else ""
        return (mark, *cells)

    def _rebuild(self, wanted: list[Row], cursor_key: str | None) -> None:
        self.clear()
        self._sig.clear()
        self._cells.clear()
        self._order = []
        added = []
        for row in wanted:
            cells = self._make_cells(row.key, row.sig)
            self._sig[row.key], self._cells[row.key] = row.sig, cells
            added.append((row.key, cells))
            self._order.append(row.key)
        self._append(added)
        self._restore_cursor(cursor_key)

    def _reorder(self, keys: list[str], cursor_key: str | None) -> None:
        """What DataTable.sort does, with our order: re-map row locations, no row rebuilt."""
        from textual._two_way_dict import TwoWayDict

        self._row_locations = TwoWayDict({RowKey(k): i for i, k in enumerate(keys)})
        self._update_count += 1
        self._order = keys
        self.refresh()
        self._restore_cursor(cursor_key)

    def _restore_cursor(self, key: str | None) -> None:
        if key is None or key not in self._sig:
            return
        row = self.get_row_index(key)
        if row != self.cursor_row:
            self.move_cursor(row=row, animate=False, scroll=False)

    def select_key(self, key: str) -> bool:
        if key not in self._sig:
            return False
        self.move_cursor(row=self.get_row_index(key), animate=False)
        return True


class Tabs(TabbedContent):
    """TabbedContent whose active tab is chosen by keys only. Stock TabbedContent also
    activates the pane of any widget that gets focus, by a message handled later: focusing a
    tab's table after switching to it would, on fast key presses (`5` then `2`), switch back
    to the stale tab."""

    def _on_tab_pane_focused(self, event: TabPane.Focused) -> None:
        event.prevent_default()  # the base class handler would set `active`
        event.stop()


class Crumbs(Static):
    """The crumb trail (phh, batch, job.step) on the left, engine status on the right."""

    def show(self, parts: Sequence[str], status: Text | str = "") -> None:
        text = Text()
        text.append("phh", style="bold")
        for p in parts:
            text.append(" \u203a ", style="dim")
            text.append(p, style="bold")
        if status:
            text.append("   ")
            text.append(status if isinstance(status, Text) else Text(status, style="dim"))
        self.update(text)


__all__ = ["Cell", "Column", "ColumnKey", "Crumbs", "KeyedTable", "Row"]
