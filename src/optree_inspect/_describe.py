"""Rendering: `describe` (text, IPython, HTML) and `hyperparams` (README: The verbs).

The layout (which nodes are shown, folded, or "like" an earlier one) depends on the structure only,
so it is memoised on the structure index; each call reads the leaves' shapes and dtypes and the few
scalars it shows, never other array data.
"""

from __future__ import annotations

import bisect
import collections
import functools
import html
import itertools
import math
import operator
import re
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import GetAttrKey, keystr
from jaxtyping import PyTree

from ._compat import is_nnx_variable_type, partition_spec_text, variable_value
from ._errors import bounded, raised_here
from ._keys import KeyPath, edge_label
from ._naming import attached_query, shortest_query
from ._optax.closures import ConstantHyperparameter, Optimizer, OptimizerReading, read_optimizer
from ._optax.states import hyperparameter_nodes, is_counter, protected_nodes, scheduled_slot_on
from ._tree import StructureIndex, index_and_leaves, value_at
from ._values import LeafTable, leaf_table, summarise

FOLD_LEAVES = 16
"""A params-shaped subtree with more leaves than this is one line."""
MAX_CHILDREN = 24
"""A node shows at most this many children; the rest are counted on one line."""
RUN_MIN = 4
"""This many consecutive siblings of one structure or more show the first, then one line for the rest."""
MAX_LINES = 120
"""A description has at most this many lines (and a line for what the optimizer could not match):
below the deepest level that fits, subtrees are folded."""

_DTYPE_NAMES = {"float": "f", "bfloat": "bf", "int": "i", "uint": "u", "complex": "c"}


class Row(NamedTuple):
    """One line of a description: the node's path, the shortest query that selects it alone, and
    what is shown for it."""

    path: KeyPath
    query: str
    depth: int
    label: str
    type: str
    summary: str
    folded: bool
    like: KeyPath | None
    stats: dict[str, Any] | None = None
    """With `describe(tree, stats=True)`: the statistics of the row's leaves (as `oi.stats`)."""


class _Line(NamedTuple):
    node: int
    depth: int
    kind: str  # "node", "fold", "like", "run" or "more"
    other: int  # the node it is like, the last node of a run, or how many children were left out


class Description:
    """What `describe` returns: print it, iterate its rows, or show it in IPython or a notebook."""

    def __init__(self, index: StructureIndex, rows: tuple[Row, ...], nodes: tuple[int | None, ...]) -> None:
        self._index = index
        self._rows = rows
        self._nodes = nodes

    @functools.cached_property
    def rows(self) -> tuple[Row, ...]:
        """Every shown line, in order, with the shortest query that selects its node alone."""
        index = self._index
        return tuple(
            row._replace(query=shortest_query(index, node)) if node and not row.query else row
            for row, node in zip(self._rows, self._nodes, strict=True)
        )

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __str__(self) -> str:
        return "\n".join(_text_line(row) for row in self._rows)

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        return _html(self)

    def to_dict(self) -> dict[str, dict[str, str]]:
        """`{keystr: {"query", "type", "summary"}}` for every shown node, for logs and tests."""
        return {
            keystr(row.path): {"query": row.query, "type": row.type, "summary": row.summary}
            for row in self.rows
            if row.type != "optimizer" or row.path
        }


@raised_here
def describe(tree: PyTree, /, *, optimizer: Optimizer | None = None, stats: bool = False) -> Description:
    """A compact picture of `tree`: one line a node, params-shaped subtrees folded.

    Arrays are summarised as `f32[4,4]` (`weak_f32[]` for weak types), scalars show their value,
    scheduled hyperparameters are marked, and a non-trivial sharding is shown. A params-shaped
    subtree (containers and arrays only) of more than 16 leaves is one line with its key, leaf
    count, dtypes and bytes; one with the structure of a subtree already shown says which it is
    like. Hyperparameters and counters are never folded. Safe on tracers and on sharded arrays: it
    reads no array data but the scalars it shows. With `optimizer=`, the hyperparameters the
    optimizer keeps in its closures are shown under the state node of their transformation,
    marked as held by the optimizer, and what could not be matched is said on a last line. With
    `stats=True`, each row also shows its values (NaN and Inf counts first, marked `!!`, then the
    range, RMS and share of zeros of the finite values), computed on the device.

    ```python
    >>> import jax.numpy as jnp, optax, optree_inspect as oi
    >>> print(oi.describe(optax.adam(1e-3).init({"w": jnp.zeros(3), "b": jnp.zeros(1)})))
    tuple: 5 leaves, f32/i32, 36 B
      [0]: ScaleByAdamState
        count: i32[] = 0
        mu: dict
          b: f32[1]
          w: f32[3]
        nu: like [0].mu, 2 leaves, f32, 16 B
      [1]: EmptyState

    ```
    """
    index, leaves = index_and_leaves(tree)
    reading = read_optimizer(optimizer, tree) if optimizer is not None else None
    lines = layout_of(index)
    leaf_stats = _LeafStats(leaves)
    rows = [_row(index, tree, leaves, leaf_stats, line) for line in lines]
    nodes: list[int | None] = [line.node if line.kind != "more" else None for line in lines]
    if stats and not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        rows = _with_values(index, leaves, lines, rows)
    if reading is not None:
        rows, nodes = _with_optimizer(tree, index, rows, nodes, reading)
    return Description(index, tuple(rows), tuple(nodes))


def layout_of(index: StructureIndex) -> list[_Line]:
    """The lines `describe` shows for this structure (memoised on the index)."""
    if index.memo.layout is None:
        index.memo.layout = _layout(index)
    return index.memo.layout


def line_entries(index: StructureIndex, lines: list[_Line], number: int) -> list[tuple[int, slice]]:
    """The nodes whose values layout line `number` stands for, each with its leaves: a leaf's or
    an nnx Variable's row its node, a folded or `like` row its subtree, a run row each member, the
    "... N more children" row each child it leaves out, an expanded node's row none (its children's
    rows stand for its leaves). So every leaf is in exactly one line's entries."""
    line = lines[number]
    if line.kind == "run":
        nodes = _siblings_between(index, line.node, line.other)
    elif line.kind == "more":
        previous = next(
            other for other in reversed(lines[:number]) if other.depth == line.depth and other.kind != "more"
        )
        last = previous.other if previous.kind == "run" else previous.node
        siblings = list(index.children(index.parents[last]))
        nodes = siblings[siblings.index(last) + 1 :]
    elif line.kind == "node" and _has_children(index, line.node):
        nodes = []
    else:
        nodes = [line.node]
    return [
        (node, slice(index.leaf_starts[node], index.leaf_starts[node] + index.leaf_counts[node]))
        for node in nodes
        if index.leaf_counts[node]
    ]


def _siblings_between(index: StructureIndex, first: int, last: int) -> list[int]:
    siblings = list(index.children(index.parents[first]))
    return siblings[siblings.index(first) : siblings.index(last) + 1]


def _with_values(index: StructureIndex, leaves: list[Any], lines: list[_Line], rows: list[Row]) -> list[Row]:
    """`rows` with the statistics of the leaves they stand for (`line_entries`; the root's, all
    leaves), NaN and Inf first, and totals on the root."""
    table = leaf_table(leaves)
    result = []
    for number, (line, row) in enumerate(zip(lines, rows, strict=True)):
        spans = [span for _, span in line_entries(index, lines, number)]
        if line.node == 0 and line.kind == "node":
            spans = [slice(0, len(leaves))]
        positions = [p for span in spans for p in range(span.start, span.stop)]
        if not table.numeric[positions].any():
            result.append(row)  # no numbers, or an expanded node's: on its children's rows
            continue
        values = {key: value.item() for key, value in summarise(table, positions).items()}
        shown = " = " in row.summary and line.kind == "node"
        text = stats_text(values, range_shown=not shown)
        if line.node == 0 and _has_children(index, 0):
            text = _totals(table)
        summary = f"{row.summary}  [{text}]" if text else row.summary
        result.append(row._replace(summary=summary, stats=values))
    return result


def _totals(table: LeafTable) -> str:
    """The root's note: how many leaves hold NaN or Inf."""
    counts = np.asarray(table.counts)
    nan, inf = int((counts[:, 0] > 0).sum()), int((counts[:, 1] > 0).sum())
    parts = [
        f"{n:,} lea{'ves' if n != 1 else 'f'} with {what}" for n, what in ((nan, "NaN"), (inf, "Inf")) if n
    ]
    return f"!! {', '.join(parts)}" if parts else ""


def stats_text(values: dict[str, Any], range_shown: bool = True) -> str:
    """A few characters for a row's values: `!! 3 NaN, 1 Inf` first when any, then the range,
    RMS and share of zeros of the finite values."""
    parts = []
    bad = [
        f"{values[k]:,} {k.replace('nan', 'NaN').replace('inf', 'Inf')}" for k in ("nan", "inf") if values[k]
    ]
    if bad:
        parts.append("!! " + ", ".join(bad))
    if range_shown and not math.isnan(values["min"]):
        low, high = _short(values["min"]), _short(values["max"])
        parts.append(f"{low} .. {high}" if low != high else f"all {low}")
        if low != high:
            parts.append(f"rms {_short(values['rms'])}")
            zeros = values["zero_fraction"]
            if zeros >= 0.1:
                parts.append(f"{zeros:.0%} zeros")
    return "; ".join(parts)


def _short(value: float) -> str:
    return f"{value:.3g}"


def _with_optimizer(
    tree: Any, index: StructureIndex, rows: list[Row], nodes: list[int | None], reading: OptimizerReading
) -> tuple[list[Row], list[int | None]]:
    """`rows` with a row for each optimizer-held hyperparameter under its state node's row."""
    by_node: dict[KeyPath, list[ConstantHyperparameter]] = {}
    for constant in reading.constants:
        by_node.setdefault(constant.node_path, []).append(constant)
    result: list[Row] = []
    result_nodes: list[int | None] = []
    for row, node in zip(rows, nodes, strict=True):
        result.append(row)
        result_nodes.append(node)
        for constant in by_node.pop(row.path, []) if not row.folded else []:
            value = "?" if constant.value is None else _number(constant.value)
            held = "constant in the optimizer"
            if constant.schedule is not None:
                step = _step_of(tree, constant.step_path) if constant.step_path else None
                held = "schedule in the optimizer, " + (
                    "for the next update" if step is None else f"for step {step}, the next update"
                )
            query = attached_query(tree, index, constant, reading.constants)
            summary = f"{value} ({held})"
            result.append(
                Row(constant.path, query, row.depth + 1, constant.name, "optimizer", summary, False, None)
            )
            result_nodes.append(None)
    for line in reading.unmatched[:8]:
        summary = f"(optimizer) not matched: {bounded(line, 200)}"
        result.append(Row((), "", 0, "", "optimizer", summary, False, None))
        result_nodes.append(None)
    return result, result_nodes


def _number(value: Any) -> str:
    """A value read from the optimizer: a number, or `?` where it is traced or abstract."""
    if isinstance(value, bool | int | float):
        return f"{value:.6g}" if isinstance(value, float) else str(value)
    text = _scalar_value(value) if hasattr(value, "dtype") else None
    return "?" if text is None else text


def _step_of(tree: Any, counter: KeyPath) -> int | None:
    """The concrete value of the step counter at `counter`, or None (traced, abstract, deleted)."""
    try:
        text = _scalar_value(value_at(tree, counter))
    except Exception:  # a counter that is not where the schedule's state keeps it
        return None
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


# Layout (structure only) ------------------------------------------------------------------------


def _layout(index: StructureIndex) -> list[_Line]:
    """Which nodes are shown and how, in pre-order; then cut to `MAX_LINES` by depth."""
    protected = protected_nodes(index)
    signatures = index.signatures
    holds_state = index.holds_state
    seen: dict[int, int] = {}
    lines: list[_Line] = []
    stack: list[tuple[_Line, bool]] = [(_Line(0, 0, "node", 0), False)]
    while stack:
        line, in_region = stack.pop()
        node, depth = line.node, line.depth
        if line.kind in ("more", "run"):
            lines.append(line)
            continue
        # Only the root of a params-shaped region (a mu, nu, trace, params) folds or is "like".
        foldable = not in_region and node > 0 and node not in protected and not holds_state[node]
        if foldable and index.leaf_counts[node] > 1:
            signature = signatures[node]
            if signature in seen:
                lines.append(_Line(node, depth, "like", seen[signature]))
                continue
            seen[signature] = node
        if foldable and index.leaf_counts[node] > FOLD_LEAVES:
            lines.append(_Line(node, depth, "fold", 0))
            continue
        lines.append(line)
        if is_nnx_variable_type(index.types[node]):
            continue  # a Variable is one node: its value is shown on its line
        region = in_region or foldable
        entries = _sibling_runs(index, signatures, protected, _shown_children(index, node), depth + 1)
        if len(entries) > MAX_CHILDREN:
            hidden = sum(1 if e.kind == "node" else e.other - e.node + 1 for e in entries[MAX_CHILDREN:])
            entries = [*entries[:MAX_CHILDREN], _Line(node, depth + 1, "more", hidden)]
        stack.extend((entry, region) for entry in reversed(entries))
    return _cut_to_budget(index, lines)


def _shown_children(index: StructureIndex, node: int) -> list[int]:
    """The children a description shows: all but private fields that hold no array (flax's
    `_pytree__state` bookkeeping in an nnx Object, say)."""
    return [
        child
        for child in index.children(node)
        if not (
            isinstance(index.keys[child], GetAttrKey)
            and index.texts[child].startswith("_")
            and index.leaf_counts[child] == 0
        )
    ]


def _sibling_runs(
    index: StructureIndex, signatures: list[int], protected: set[int], children: list[int], depth: int
) -> list[_Line]:
    """The children as lines: the first of `RUN_MIN` or more consecutive siblings of one structure
    is shown, the others are one "run" line (from its `node` to `other`, like the first)."""
    entries: list[_Line] = []
    start = 0
    # Leaves never join a run (their shapes differ); empty nodes (MaskedNode, EmptyState) run apart.
    kinds = [(signatures[c], index.is_leaf[c], index.leaf_counts[c] == 0) for c in children]
    while start < len(children):
        end = start + 1
        while end < len(children) and kinds[end] == kinds[start]:
            end += 1
        entries.append(_Line(children[start], depth, "node", 0))
        first = children[start]
        if (
            end - start >= RUN_MIN
            and not index.is_leaf[first]
            and first not in protected
            and not is_nnx_variable_type(index.types[first])
        ):
            entries.append(_Line(children[start + 1], depth, "run", children[end - 1]))
        else:
            entries.extend(_Line(child, depth, "node", 0) for child in children[start + 1 : end])
        start = end
    return entries


def _cut_to_budget(index: StructureIndex, lines: list[_Line]) -> list[_Line]:
    """At most `MAX_LINES` lines: below the deepest level that fits, nodes are folded."""
    if len(lines) <= MAX_LINES:
        return lines
    per_depth = collections.Counter(line.depth for line in lines)
    shown, cut = 0, 0
    for depth in range(max(per_depth) + 1):
        if shown + per_depth[depth] > MAX_LINES and depth > 1:
            break
        shown += per_depth[depth]
        cut = depth
    return [
        line._replace(kind="fold")
        if line.depth == cut and line.kind == "node" and index.sizes[line.node] > 1
        else line
        for line in lines
        if line.depth <= cut
    ]


def _has_children(index: StructureIndex, node: int) -> bool:
    return index.sizes[node] > 1 and not is_nnx_variable_type(index.types[node])


# Rows (structure plus leaf metadata) ------------------------------------------------------------


def _row(index: StructureIndex, tree: Any, leaves: list[Any], stats: _LeafStats, line: _Line) -> Row:
    node = line.node
    path = index.path(node)
    type_name = index.types[node].__name__
    if node in index.restored_names:
        type_name = f"{type_name} ({index.restored_names[node][0]})"
    query = ""  # filled in lazily by Description.rows
    like = None
    if line.kind == "more":
        summary = f"... {line.other:,} more children"
        return Row(path, query, line.depth, "", type_name, summary, True, None)
    if line.kind == "run":
        return _run_row(index, leaves, stats, line, path)
    if line.kind in ("fold", "like") or node == 0:
        summary = _aggregate(index, node, node + 1, stats, line.kind == "fold" or node == 0)
        if line.kind == "like":
            like = index.path(line.other)
            summary = f"like {keystr(like) or '<root>'}, {summary}"
        elif node != 0:
            summary = f"{type_name}, {summary}"
        else:
            summary = f"{type_name}: {summary}"
    elif index.is_leaf[node]:
        summary = _leaf_summary(leaves[index.leaf_starts[node]])
    elif is_nnx_variable_type(index.types[node]):
        inner = leaves[index.leaf_starts[node]] if index.leaf_counts[node] else None
        summary = f"{type_name} {_leaf_summary(inner)}" if index.leaf_counts[node] else type_name
    else:
        summary = "None" if index.types[node] is type(None) else type_name
    slot = scheduled_slot_on(tree, path) if _is_hyperparameter(index, node) else None
    if slot is not None:
        step = _step_of(tree, slot.field_path("count"))
        if step is None:
            summary += " (scheduled)"
        elif step == 0:
            summary += " (scheduled, for step 0)"
        else:
            summary += f" (scheduled, used at step {step - 1})"
    folded = line.kind in ("fold", "like")
    return Row(path, query, line.depth, edge_label(index.keys[node]), type_name, summary, folded, like)


def _run_row(index: StructureIndex, leaves: list[Any], stats: _LeafStats, line: _Line, path: KeyPath) -> Row:
    """One line for the siblings `line.node` ... `line.other`, all of the structure of the sibling
    shown before them, with the range of each injected hyperparameter across them."""
    first, last = line.node, line.other
    parent = index.parents[first]
    siblings = list(index.children(parent))
    position = siblings.index(first)
    reference = siblings[position - 1]
    members = siblings[position : siblings.index(last) + 1]
    if index.sizes[reference] == 1:  # empty nodes: MaskedNode, EmptyState
        summary = f"{len(members):,} more {index.types[first].__name__}"
        label = f"{edge_label(index.keys[first])} ... {edge_label(index.keys[last])}"
        return Row(
            path, "", line.depth, label, index.types[first].__name__, summary, True, index.path(reference)
        )
    if not index.leaf_counts[reference]:
        summary = f"{len(members):,} like {keystr(index.path(reference)) or '<root>'}, no leaves"
        label = f"{edge_label(index.keys[first])} ... {edge_label(index.keys[last])}"
        return Row(
            path, "", line.depth, label, index.types[first].__name__, summary, True, index.path(reference)
        )
    summary = f"{len(members):,} like {keystr(index.path(reference)) or '<root>'}, "
    summary += _aggregate(index, first, last + 1, stats, False)
    ranges = []
    for offset in range(1, index.sizes[reference]):
        if not _is_hyperparameter(index, reference + offset) or not index.is_leaf[reference + offset]:
            continue
        values = [_scalar_number(leaves[index.leaf_starts[m + offset]]) for m in members]
        numbers = [v for v in values if v is not None]
        name = edge_label(index.keys[reference + offset])
        if len(numbers) < len(values):
            ranges.append(f"{name} ?")
        elif min(numbers) == max(numbers):
            ranges.append(f"{name} {min(numbers):.4g}")
        else:
            ranges.append(f"{name} {min(numbers):.4g} ... {max(numbers):.4g}")
    if ranges:
        summary += "; " + ", ".join(ranges[:8]) + (", ..." if len(ranges) > 8 else "")
    label = f"{edge_label(index.keys[first])} ... {edge_label(index.keys[last])}"
    return Row(path, "", line.depth, label, index.types[first].__name__, summary, True, index.path(reference))


def _scalar_number(leaf: Any) -> float | None:
    text = _scalar_value(leaf)
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


class _LeafStats:
    """Each leaf's dtype and the running total of bytes, read once per call (no array data)."""

    def __init__(self, leaves: list[Any]) -> None:
        nbytes: Iterable[int]
        try:
            self.dtypes = list(map(operator.attrgetter("dtype"), leaves))
            sizes = list(map(math.prod, map(operator.attrgetter("shape"), leaves)))
            nbytes = map(operator.mul, sizes, map(operator.attrgetter("itemsize"), self.dtypes))
        except AttributeError:  # some leaves are not arrays
            self.dtypes = [getattr(leaf, "dtype", None) for leaf in leaves]
            nbytes = [
                math.prod(getattr(leaf, "shape", ())) * (d.itemsize if d else 0)
                for leaf, d in zip(leaves, self.dtypes, strict=True)
            ]
        self.cumulative_bytes = [0, *itertools.accumulate(nbytes)]
        concrete = {kind for kind in set(map(type, leaves)) if _is_concrete_array_type(kind)}
        is_deleted = operator.methodcaller("is_deleted")
        self.deleted = [  # positions of deleted (donated) arrays, ascending
            position for position, leaf in enumerate(leaves) if type(leaf) in concrete and is_deleted(leaf)
        ]

    def summary(self, start: int, stop: int) -> tuple[list[str], int]:
        names = sorted({_dtype_name(d) for d in set(self.dtypes[start:stop]) if d is not None})
        return names, self.cumulative_bytes[stop] - self.cumulative_bytes[start]


def _is_concrete_array_type(kind: type) -> bool:
    return issubclass(kind, jax.Array) and not issubclass(kind, jax.core.Tracer)


def _is_hyperparameter(index: StructureIndex, node: int) -> bool:
    """Whether `node` is an injected hyperparameter (the set is memoised on the index)."""
    nodes = index.memo.results.get(_HYPERPARAMETERS)
    if nodes is None:
        nodes = index.memo.results[_HYPERPARAMETERS] = frozenset(hyperparameter_nodes(index))
    return node in nodes


_HYPERPARAMETERS = ("describe", "hyperparameter nodes")


def _aggregate(index: StructureIndex, node: int, end: int, stats: _LeafStats, with_keys: bool) -> str:
    """Leaves, dtypes and bytes of the subtrees of the sibling nodes `node` to `end - 1`."""
    parts = []
    if with_keys and node != 0 and not index.is_leaf[node]:
        count = index.arities[node]
        parts.append(f"{count:,} key{'s' * (count != 1)}")
    last = end - 1
    start = index.leaf_starts[node]
    leaf_count = index.leaf_starts[last] + index.leaf_counts[last] - start
    parts.append(f"{leaf_count:,} lea{'ves' if leaf_count != 1 else 'f'}")
    masked = _masked_in(index, node, last + index.sizes[last])
    if masked:
        stop = node + index.sizes[node]
        if node == last and node and not any(index.state_names[node:stop]):
            # a label's share of the params (a `masked` or `partition` moment): which ones it holds
            parts[-1] += f" ({_held_names(index, node)})"
        parts.append(f"{masked:,} masked")
    dtypes, total = stats.summary(start, start + leaf_count)
    if dtypes:
        parts.append("/".join(dtypes[:4]) + ("/..." if len(dtypes) > 4 else ""))
        parts.append(_bytes(total))
    deleted = stats.deleted[
        bisect.bisect_left(stats.deleted, start) : bisect.bisect_left(stats.deleted, start + leaf_count)
    ]
    if deleted:
        names = [shortest_query(index, index.leaf_nodes[position]) for position in deleted[:3]]
        more = ", ..." if len(deleted) > 3 else ""
        parts.append(f"{len(deleted):,} deleted ({', '.join(bounded(n, 60) for n in names)}{more})")
    return ", ".join(parts)


def _held_names(index: StructureIndex, node: int, shown: int = 3) -> str:
    """The first leaves under `node`, named from it (`dense1.w, head.w`), for a masked region."""
    names: list[str] = []
    for leaf in range(node + 1, node + index.sizes[node]):
        if index.is_leaf[leaf]:
            if len(names) == shown:
                return ", ".join(names) + ", ..."
            chain = [*index.ancestors(leaf)[index.depths[node] + 1 :], leaf]
            names.append(".".join(bounded(index.texts[n], 40) for n in chain))
    return ", ".join(names)


def _masked_in(index: StructureIndex, start: int, stop: int) -> int:
    """How many masked holes (`MaskedNode`s, or `None`s of a restored state: parameters an optax
    `masked` or `partition` leaves out) lie in the nodes `start` to `stop - 1`: a `like` line must
    not read as the full params."""
    holes = index.holes
    return bisect.bisect_left(holes, stop) - bisect.bisect_left(holes, start)


def _dtype_name(dtype: Any) -> str:
    name = str(dtype)
    if name == "bool":
        return "bool"
    for long, short in _DTYPE_NAMES.items():
        if name.startswith(long) and name[len(long) :].isdigit():
            return short + name[len(long) :]
    return name


def _bytes(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.3g} {unit}"
        count /= 1024  # type: ignore[assignment]
    return ""


def _leaf_summary(leaf: Any) -> str:
    if is_nnx_variable_type(type(leaf)):  # flax before 0.11: a Variable is a leaf to JAX
        return f"{type(leaf).__name__} {_leaf_summary(variable_value(leaf))}"
    if type(leaf) in (bool, int, float, complex):
        return bounded(f"{type(leaf).__name__} = {leaf}", 60)
    if leaf is None:
        return "None"
    dtype, shape = getattr(leaf, "dtype", None), getattr(leaf, "shape", None)
    if dtype is None or shape is None:
        return bounded(type(leaf).__name__, 60)
    if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) and leaf.is_deleted():
        return f"{_dtype_name(dtype)}[{','.join(map(str, shape))}] (deleted)"
    weak = "weak_" if getattr(_aval(leaf), "weak_type", False) else ""
    text = f"{weak}{_dtype_name(dtype)}[{','.join(map(str, shape))}]"
    value = _scalar_value(leaf)
    if value is not None:
        text += f" = {value}"
    sharding = _sharding_text(leaf)
    return f"{text} {sharding}" if sharding else text


def _aval(leaf: Any) -> Any:
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    try:
        return jax.typeof(leaf)
    except Exception:  # not a JAX type
        return None


def _scalar_value(leaf: Any) -> str | None:
    """The value of a concrete 0-d number, read from this process's own copy only."""
    if getattr(leaf, "ndim", None) != 0 or isinstance(leaf, jax.core.Tracer | jax.ShapeDtypeStruct):
        return None
    if isinstance(leaf, jax.Array) and leaf.is_deleted():
        return None
    if not jnp.issubdtype(leaf.dtype, jnp.number) and leaf.dtype != np.bool_:
        return None
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        if not leaf.is_fully_replicated:
            return None
        leaf = leaf.addressable_data(0)
    value = np.asarray(leaf).item()
    return _shortest(value, leaf.dtype) if isinstance(value, float) else str(value)


def _shortest(value: float, dtype: Any) -> str:
    """The value at the precision of its dtype, short: the fewest significant digits (at most the
    dtype's decimal precision) that give it back in `dtype`, so a bf16 0.9 is `0.9`, not the
    `0.898438` of its float64 expansion; past that precision, it is cut there."""
    precision = jnp.finfo(dtype).precision if jnp.issubdtype(dtype, jnp.floating) else 15
    for digits in range(1, precision + 1):
        text = f"{value:.{digits}g}"
        with np.errstate(over="ignore"):  # a rounded text can lie beyond the dtype's range
            if np.asarray(float(text), dtype=dtype) == np.asarray(value, dtype=dtype):
                return text
    return f"{value:.{precision}g}"


def _sharding_text(leaf: Any) -> str:
    sharding = getattr(leaf, "sharding", None)
    if sharding is None or isinstance(leaf, jax.core.Tracer) or not hasattr(sharding, "device_set"):
        return ""
    if len(sharding.device_set) <= 1:
        return ""
    spec = getattr(sharding, "spec", None)
    if spec is not None and any(axis is not None for axis in spec):
        return f"@ {partition_spec_text(spec)}"
    return f"@ replicated({len(sharding.device_set)})"


# Text and HTML ---------------------------------------------------------------------------------


def _text_line(row: Row) -> str:
    indent = "  " * row.depth
    if not row.label:
        return f"{indent}{row.summary}"
    return f"{indent}{row.label}: {row.summary}"


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
_FOLD_KEYS = 12


def _html(description: Description) -> str:
    """Nested `<details>` (open for shown children, closed for folded subtrees, which list their
    first keys), hyperparameters and counters emphasised, each row's query selectable."""
    index, rows, nodes = description._index, description.rows, description._nodes
    parts = [_STYLE, '<div class="optree-inspect">']
    open_depths: list[int] = []
    for number, row in enumerate(rows):
        while open_depths and open_depths[-1] >= row.depth:
            parts.append("</div></details>")
            open_depths.pop()
        node = nodes[number]
        kind = _row_kind(index, row, node)
        line = _html_line(row)
        title = html.escape(bounded(keystr(row.path), 200) or "<root>", quote=True)
        has_children = number + 1 < len(rows) and rows[number + 1].depth > row.depth
        if has_children:
            parts.append(
                f'<details open class="{kind}"><summary title="{title}">{line}</summary><div class="oi-kids">'
            )
            open_depths.append(row.depth)
        elif row.folded and node is not None and index.sizes[node] > 1:
            parts.append(
                f'<details class="{kind}"><summary title="{title}">{line}</summary>'
                f'<div class="oi-kids oi-keys">{_first_keys(index, node)}</div></details>'
            )
        else:
            parts.append(f'<div class="{kind}" title="{title}">{line}</div>')
    parts.extend("</div></details>" for _ in open_depths)
    parts.append("</div>")
    return "\n".join(parts)


def _row_kind(index: StructureIndex, row: Row, node: int | None) -> str:
    if row.type == "optimizer":
        return "oi-optimizer"
    if node is not None and _is_hyperparameter(index, node):
        return "oi-hyper"
    if node is not None and is_counter(index, node):
        return "oi-counter"
    return ""


def _first_keys(index: StructureIndex, node: int) -> str:
    """What a folded subtree holds, for its closed `<details>`: its first keys."""
    keys = [edge_label(index.keys[child]) for child in itertools.islice(index.children(node), _FOLD_KEYS)]
    count = index.arities[node]
    more = f", ... {count - len(keys):,} more" if count > len(keys) else ""
    return html.escape(", ".join(bounded(key, 40) for key in keys) + more)


def _html_line(row: Row) -> str:
    summary = re.sub(r"\(scheduled[^)]*\)", r'<span class="oi-tag">\g<0></span>', html.escape(row.summary))
    summary = re.sub(r"!! [^;\]]*", r'<span class="oi-bad">\g<0></span>', summary)
    query = f'<code class="oi-q" title="the query that selects it alone">{html.escape(row.query)}</code>'
    shown = summary + (query if row.query else "")
    if not row.label:
        return shown
    return f'<span class="oi-label">{html.escape(row.label)}</span>: {shown}'
