"""A description's renderers: its text (what `print(oi.describe(tree))` shows) and its notebook
view (nested `<details>`), both read from the rows' fields (`_rows`), never from a summary's text.

>>> from optree_inspect._leaf import LeafSummary
>>> from optree_inspect._rows import Row
>>> row = Row((), "", 1, "b1", "ArrayImpl", "", False, None, kind="leaf",
...           leaf=LeafSummary("ArrayImpl", "f32", (), value="0.9"))
>>> text_line(row)
'  b1: f32[] = 0.9'
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from jax.tree_util import keystr

from ._errors import bounded
from ._keys import KeyPath
from ._leaf import bytes_text, leaf_text
from ._rows import Held, Leaves, Range, Row, Scheduled

# Text ------------------------------------------------------------------------------------------


def text_line(row: Row) -> str:
    """The row as a line of `str(description)`: indented two spaces a level, `label: summary`."""
    indent = "  " * row.depth
    if not row.label:
        return f"{indent}{summary_text(row)}"
    return f"{indent}{row.label}: {summary_text(row)}"


def summary_text(row: Row) -> str:
    """The row's summary: what it shows of its node, its scheduled mark, its values' note."""
    text = _base_text(row)
    if row.scheduled is not None:
        text += " " + _mark_text(row.scheduled)
    if row.stats is None and row.nonfinite is None:
        return text
    bad, rest = _note_parts(row)
    note = "; ".join(filter(None, [bad, *rest]))
    return f"{text}  [{note}]" if note else text


def leaves_text(leaves: Leaves) -> str:
    """`3 leaves (dense1.w, head.w), 2 masked, f32/i32, 36 B, 1 deleted (mu.w)`, led by `other
    shardings` for a `like` or run row whose leaves are placed otherwise than its reference's."""
    parts = ["other shardings"] if leaves.other_shardings else []
    parts.append(f"{leaves.total:,} lea{'ves' if leaves.total != 1 else 'f'}")
    if leaves.held is not None:
        parts[-1] += f" ({', '.join(leaves.held)}{', ...' if leaves.more_held else ''})"
    if leaves.masked:
        parts.append(f"{leaves.masked:,} masked")
    if leaves.dtypes:
        parts.append("/".join(leaves.dtypes[:4]) + ("/..." if len(leaves.dtypes) > 4 else ""))
        parts.append(bytes_text(leaves.nbytes))
    if leaves.deleted:
        names = ", ".join(bounded(name, 60) for name in leaves.deleted_names)
        more = ", ..." if leaves.deleted > len(leaves.deleted_names) else ""
        parts.append(f"{leaves.deleted:,} deleted ({names}{more})")
    return ", ".join(parts)


def _base_text(row: Row) -> str:
    """What the row shows of its node, before its mark and note."""
    kind = row.kind
    if kind == "leaf" and row.leaf is not None:
        return leaf_text(row.leaf)
    if kind == "more":
        return f"... {row.siblings:,} more children"
    if kind == "optimizer":
        assert row.held is not None
        return f"{row.held.value} ({_held_text(row.held)})"
    if kind == "unmatched":
        return f"(optimizer) not matched: {row.message}"
    if kind == "run":
        return _run_text(row)
    if row.leaves is None:
        return row.type
    leaves = leaves_text(row.leaves)
    if kind == "like":
        return f"like {_reference(row.like)}, {leaves}"
    if kind == "fold":
        return f"{row.type}, {row.arity:,} key{'s' * (row.arity != 1)}, {leaves}"
    return f"{row.type}: {leaves}"


def _run_text(row: Row) -> str:
    if row.arity == 0:  # empty nodes: MaskedNode, EmptyState
        return f"{row.siblings:,} more {row.type}"
    if row.leaves is None:
        return f"{row.siblings:,} like {_reference(row.like)}, no leaves"
    text = f"{row.siblings:,} like {_reference(row.like)}, {leaves_text(row.leaves)}"
    if row.ranges:
        shown = [_range_text(r) for r in row.ranges[:8]]
        text += "; " + ", ".join(shown) + (", ..." if len(row.ranges) > 8 else "")
    return text


def _range_text(span: Range) -> str:
    if span.low is None or span.high is None:
        return f"{span.name} ?"
    if span.low == span.high:
        return f"{span.name} {span.low:.4g}"
    return f"{span.name} {span.low:.4g} ... {span.high:.4g}"


def _reference(path: KeyPath | None) -> str:
    return keystr(path or ()) or "<root>"


def _mark_text(scheduled: Scheduled | None) -> str:
    if scheduled is None:
        return ""
    if scheduled.counter is None:
        return "(scheduled)"
    if scheduled.counter == 0:
        return "(scheduled, for step 0)"
    return f"(scheduled, used at step {scheduled.counter - 1})"


def _held_text(held: Held) -> str:
    if not held.schedule:
        return "constant in the optimizer"
    step = "for the next update" if held.step is None else f"for step {held.step}, the next update"
    return "schedule in the optimizer, " + step


def _note_parts(row: Row) -> tuple[str, list[str]]:
    """The row's values note in two parts: what is flagged (`!! ...`, or `""`) and the rest."""
    if row.nonfinite is not None:
        nan, inf = row.nonfinite
        parts = [
            f"{n:,} lea{'ves' if n != 1 else 'f'} with {what}"
            for n, what in ((nan, "NaN"), (inf, "Inf"))
            if n
        ]
        return (f"!! {', '.join(parts)}{_first_text(row)}" if parts else ""), []
    if row.stats is None:
        return "", []
    shown = row.leaf is not None and row.leaf.value is not None  # a scalar's value needs no range
    bad, rest = _stats_parts(row.stats, range_shown=not shown)
    return (bad + _first_text(row) if bad else bad), rest


def _first_text(row: Row) -> str:
    """` (first: mu.l2.b, nu.l2.b)`: where a row of several leaves holds its NaN or Inf."""
    if not row.first_nonfinite:
        return ""
    return f" (first: {', '.join(bounded(name, 60) for name in row.first_nonfinite)})"


def _stats_parts(values: dict[str, Any], range_shown: bool) -> tuple[str, list[str]]:
    bad = [
        f"{values[k]:,} {k.replace('nan', 'NaN').replace('inf', 'Inf')}" for k in ("nan", "inf") if values[k]
    ]
    rest = []
    if range_shown and not math.isnan(values["min"]):
        low, high = _distinct(values["min"], values["max"])
        rest.append(f"{low} .. {high}" if low != high else f"all {low}")
        if low != high:
            rest.append(f"rms {_short(values['rms'])}")
            zeros = values["zero_fraction"]
            if zeros >= 0.1:
                rest.append(f"{zeros:.0%} zeros")
    return ("!! " + ", ".join(bad) if bad else ""), rest


def _short(value: float) -> str:
    return f"{value:.3g}"


def _distinct(low: float, high: float) -> tuple[str, str]:
    """`low` and `high` in 3 significant digits, or in as many more as it takes to tell them
    apart where they differ (`1 .. 1.001`, never `all 1`)."""
    for digits in (3, 6, 9, 17):
        shown = f"{low:.{digits}g}", f"{high:.{digits}g}"
        if shown[0] != shown[1] or low == high:
            return shown
    return shown


# HTML ------------------------------------------------------------------------------------------

_STYLE = """<style>
.optree-inspect { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px;
  line-height: 1.5; }
.optree-inspect summary { cursor: pointer; }
.optree-inspect .oi-kids { margin-left: 1.6em; }
.optree-inspect .oi-hyper > .oi-label { font-weight: bold; color: #d97706; }
.optree-inspect .oi-counter .oi-label { color: #0891b2; }
.optree-inspect .oi-optimizer .oi-label { font-style: italic; color: #d97706; }
.optree-inspect .oi-tag { color: #d97706; }
.optree-inspect .oi-bad { color: #dc2626; font-weight: bold; }
.optree-inspect .oi-keys { color: #8b949e; }
.optree-inspect .oi-q { color: #8b949e; font-size: 11px; margin-left: 1.2em; user-select: all; }
</style>"""
"""Colours that read on light and dark notebook themes alike; no JavaScript."""


def html_of(rows: Sequence[Row]) -> str:
    """Nested `<details>` (open for shown children, closed for folded subtrees, which list their
    first keys), hyperparameters and counters emphasised, each row's query selectable."""
    parts = [_STYLE, '<div class="optree-inspect">']
    open_depths: list[int] = []
    for number, row in enumerate(rows):
        while open_depths and open_depths[-1] >= row.depth:
            parts.append("</div></details>")
            open_depths.pop()
        kind = _css_class(row)
        line = _html_line(row)
        title = html.escape(bounded(keystr(row.path), 200) or "<root>", quote=True)
        has_children = number + 1 < len(rows) and rows[number + 1].depth > row.depth
        if has_children:
            parts.append(
                f'<details open class="{kind}"><summary title="{title}">{line}</summary><div class="oi-kids">'
            )
            open_depths.append(row.depth)
        elif row.kind in ("fold", "like", "run") and row.arity:
            parts.append(
                f'<details class="{kind}"><summary title="{title}">{line}</summary>'
                f'<div class="oi-kids oi-keys">{_keys_html(row)}</div></details>'
            )
        else:
            parts.append(f'<div class="{kind}" title="{title}">{line}</div>')
    parts.extend("</div></details>" for _ in open_depths)
    parts.append("</div>")
    return "\n".join(parts)


def _css_class(row: Row) -> str:
    if row.kind in ("optimizer", "unmatched"):
        return "oi-optimizer"
    return {"hyperparameter": "oi-hyper", "counter": "oi-counter"}.get(row.role, "")


def _keys_html(row: Row) -> str:
    """What a folded subtree holds, for its closed `<details>`: its first keys."""
    keys = row.first_keys
    more = f", ... {row.arity - len(keys):,} more" if row.arity > len(keys) else ""
    return html.escape(", ".join(bounded(key, 40) for key in keys) + more)


def _html_line(row: Row) -> str:
    summary = html.escape(_base_text(row))
    mark = _mark_text(row.scheduled)
    if mark:
        summary += f' <span class="oi-tag">{html.escape(mark)}</span>'
    bad, rest = _note_parts(row)
    if bad or rest:
        flagged = [f'<span class="oi-bad">{html.escape(bad)}</span>'] if bad else []
        summary += "  [" + "; ".join([*flagged, *map(html.escape, rest)]) + "]"
    query = f'<code class="oi-q" title="the query that selects it alone">{html.escape(row.query)}</code>'
    shown = summary + (query if row.query else "")
    if not row.label:
        return shown
    return f'<span class="oi-label">{html.escape(row.label)}</span>: {shown}'
