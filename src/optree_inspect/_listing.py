"""The base of the verbs' listings (`Description`, `Report`, `Diff`): rows to iterate and count,
truthy when any, printed one line a row up to a bound (then how many more), with the IPython and
notebook hooks. A new listing is one subclass: its line for a row, its bound and its words.

>>> class Names(Listing[str]):
...     shown, empty, more = 2, "No names.", "... {count:,} more names"
>>> names = Names(["a", "b", "c"])
>>> print(names)
a
b
... 1 more names
>>> len(names), bool(Names([])), str(Names([]))
(3, False, 'No names.')
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Generic, TypeVar

T = TypeVar("T")


class Listing(Generic[T]):
    """Rows in order: iterate them, take their `len`, test them (truthy when any), print them."""

    shown: ClassVar[int | None] = None
    """At most this many rows are printed (None: all), then a line saying how many more."""
    empty: ClassVar[str] = ""
    """What prints when there is no row."""
    more: ClassVar[str] = "... {count:,} more rows"
    """The line for the rows left out (`count` of them)."""

    def __init__(self, items: Iterable[T]) -> None:
        self._items = tuple(items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def _line(self, item: T) -> str:
        """The printed line of one row."""
        return str(item)

    def _header(self) -> str:
        """A line before the rows in the repr (`Report(2 findings)`), or `""` for none."""
        return ""

    def __str__(self) -> str:
        items = self._items
        if not items:
            return self.empty
        bound = self.shown
        lines = [self._line(item) for item in (items if bound is None else items[:bound])]
        if bound is not None and len(items) > bound:
            lines.append(self.more.format(count=len(items) - bound))
        return "\n".join(lines)

    def __repr__(self) -> str:
        header = self._header()
        if not header:
            return str(self)
        return header + ("\n" + str(self) if self._items else "")

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def _repr_html_(self) -> str | None:
        """The repr's lines in a monospace block (None: the notebook shows the plain repr)."""
        lines = "".join(f"<div>{html.escape(line)}</div>" for line in repr(self).splitlines())
        return f'<div class="optree-inspect" style="font-family: monospace">{lines}</div>'


def print_once(*values: Any, **options: Any) -> None:
    """`print(*values, **options)` on process 0 only: in a multi-process JAX run every process
    calls the verbs and gets the same answer; this prints it once. Without `jax.distributed`, it
    is `print`.

    ```python
    oi.print_once(oi.check(state))  # every process calls check (a collective); one prints it
    ```
    """
    import jax

    if jax.process_index() == 0:
        print(*values, **options)
