"""A description's rows as data: for each line of the plan (`_layout`), what it says of its node
(the leaf's dtype, shape and value, the subtree's leaves, dtypes and bytes, the scheduled mark),
read from the leaves' metadata and the few scalars shown, never from other array data.

The rows' text is `_render`'s: it reads these fields and never parses a summary.

>>> import jax.numpy as jnp
>>> from optree_inspect._leaf import leaf_summary
>>> leaf_summary(jnp.float32(0.5))[1:]
('f32', (), False, '0.5', '', False, '')
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import operator
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple

from ._cache import on_clear
from ._errors import bounded
from ._index import StructureIndex
from ._keys import KeyPath, edge_label
from ._layout import Line, run_members, run_reference
from ._leaf import (
    LeafSummary,
    dtype_name,
    is_concrete_array_type,
    is_placed,
    leaf_summary,
    scalar_number,
    scalar_text,
    sharding_text,
    unwrap,
    unwrap_all,
)
from ._naming import shortest_query
from ._optax.states import hyperparameter_nodes, is_counter, scheduled_slot_on
from ._paths import value_at
from ._placement import device_bytes, is_abstract_mesh, widest

RowKind = Literal["node", "leaf", "fold", "like", "run", "more", "optimizer", "unmatched"]
Role = Literal["", "hyperparameter", "counter"]
FIRST_KEYS = 12
"""A folded row keeps this many of its node's first keys (a notebook lists them)."""


class Leaves(NamedTuple):
    """The leaves a folded, `like`, run or root row stands for: how many (`total`), their dtypes' short
    names (sorted), their bytes, how many masked holes lie among them, the first names of those a
    label's share of masked parameters holds (`held`, None where not shown; `more_held` when
    there are more), how many were deleted, with the queries of the first three, and, for a
    `like` or run row in a tree with arrays over several devices, whether some leaf is placed
    otherwise than the leaf at its position in the row it is like (`other_shardings`)."""

    total: int
    dtypes: tuple[str, ...]
    nbytes: int
    masked: int = 0
    held: tuple[str, ...] | None = None
    more_held: bool = False
    deleted: int = 0
    deleted_names: tuple[str, ...] = ()
    other_shardings: bool = False


class Range(NamedTuple):
    """An injected hyperparameter across a run's members: its least and greatest value, both
    None where some member's is not a concrete number."""

    name: str
    low: float | None
    high: float | None


class Scheduled(NamedTuple):
    """The mark of an injected hyperparameter a schedule sets: `counter` is its schedule's step
    counter's value (None where it is not concrete). The value shown is the one the update at
    step `counter - 1` used (at `counter` 0, the one for step 0)."""

    counter: int | None


class Held(NamedTuple):
    """A hyperparameter the optimizer holds in its closures: its value (`?` where traced or
    abstract), whether a schedule gives it, and the step of the next update (None where unknown)."""

    value: str
    schedule: bool
    step: int | None


class Row(NamedTuple):
    """One line of a description: the node's path, the shortest query that selects it alone, and
    what is shown for it; the fields after `stats` hold what the summary says as data."""

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
    kind: RowKind = "node"
    """`node` (an expanded node, or the root), `leaf` (a leaf, an nnx Variable or a None), `fold`,
    `like`, `run` (siblings like the one before), `more` (children left out), `optimizer` (a
    hyperparameter the optimizer holds) or `unmatched` (what the optimizer's reading missed)."""
    role: Role = ""
    """`hyperparameter` for an injected hyperparameter, `counter` for an optax state's counter."""
    arity: int = 0
    """How many children the row's node has (a run's: each member's)."""
    first_keys: tuple[str, ...] = ()
    """A folded, `like` or run row's: the first keys of its node (its first member's)."""
    leaf: LeafSummary | None = None
    """A leaf, nnx Variable or None row's: the leaf as shown (in a tree with arrays over several
    devices, an array on one device has the `sharding` `@ device 3`)."""
    leaves: Leaves | None = None
    """A folded, `like`, run or root row's: the leaves it stands for."""
    siblings: int = 0
    """A run row's: how many members; a `more` row's: how many children it leaves out."""
    ranges: tuple[Range, ...] = ()
    """A run row's: each injected hyperparameter's range across the members."""
    scheduled: Scheduled | None = None
    """An injected hyperparameter's that a schedule sets: the step its value is for."""
    held: Held | None = None
    """An `optimizer` row's: the value the optimizer holds."""
    message: str = ""
    """An `unmatched` row's: what could not be matched."""
    nonfinite: tuple[int, int] | None = None
    """With `stats=True`, the root's: how many leaves hold NaN, and how many Inf."""
    first_nonfinite: tuple[str, ...] = ()
    """With `stats=True`, a row that stands for several leaves (a folded, `like`, run or "more"
    row): the queries of its first leaves (at most 3) that hold NaN or Inf, in tree order."""


def rows_of(index: StructureIndex, tree: Any, leaves: list[Any], lines: list[Line]) -> list[Row]:
    """A row for each line of the plan, its query and summary left empty (see `_render`)."""
    metadata = _LeafMetadata(leaves)
    return [_row(index, tree, leaves, metadata, line) for line in lines]


def row_node(index: StructureIndex, leaf: int) -> int:
    """The node whose row shows `leaf`: its nnx Variable where one holds it."""
    parent = index.parents[leaf] if leaf else 0
    return parent if leaf and index.variables[parent] else leaf


def is_hyperparameter(index: StructureIndex, node: int) -> bool:
    """Whether `node` is an injected hyperparameter (the set is memoised on the index)."""
    nodes = index.memo.results.get(_HYPERPARAMETERS)
    if nodes is None:
        nodes = index.memo.results[_HYPERPARAMETERS] = frozenset(hyperparameter_nodes(index))
    return node in nodes


_HYPERPARAMETERS = ("describe", "hyperparameter nodes")


def step_of(tree: Any, counter: KeyPath) -> int | None:
    """The concrete value of the step counter at `counter`, or None (traced, abstract, deleted)."""
    try:
        text = scalar_text(value_at(tree, counter))
    except Exception:  # a counter that is not where the schedule's state keeps it
        return None
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


def _row(index: StructureIndex, tree: Any, leaves: list[Any], metadata: _LeafMetadata, line: Line) -> Row:
    node = line.node
    path = index.path(node)
    type_name = index.types[node].__name__
    if node in index.restored_names and index.restored_names[node][0] != type_name:
        type_name = f"{type_name} ({index.restored_names[node][0]})"
    if line.kind == "more":
        return Row(path, "", line.depth, "", type_name, "", True, None, kind="more", siblings=line.other)
    role = _role(index, node)
    if line.kind == "run":
        return _run_row(index, leaves, metadata, line, path, role)
    kind: RowKind = "node"
    like: KeyPath | None = None
    first_keys: tuple[str, ...] = ()
    subtree: Leaves | None = None
    leaf: LeafSummary | None = None
    scheduled: Scheduled | None = None
    if line.kind in ("fold", "like"):
        kind, first_keys = line.kind, _first_keys(index, node)
        like = index.path(line.other) if line.kind == "like" else None
    if kind != "node" or node == 0:
        subtree = _leaves(index, node, node + 1, metadata)
        if kind == "like" and metadata.spread and not _placed_alike(index, leaves, line.other, [node]):
            subtree = subtree._replace(other_shardings=True)
    elif index.is_leaf[node]:
        kind, leaf = "leaf", _leaf_row(leaves[index.leaf_starts[node]], metadata.spread)
    elif index.variables[node] and index.leaf_counts[node]:
        kind, leaf = "leaf", _leaf_row(leaves[index.leaf_starts[node]], metadata.spread)
        if index.types[node] is not dict:  # a restored Variable's type is not known
            leaf = leaf._replace(variable=type_name)
    elif index.types[node] is type(None) or index.variables[node]:  # a Variable of a masked parameter
        kind, leaf = "leaf", leaf_summary(None)
    if role == "hyperparameter":
        slot = scheduled_slot_on(tree, path)
        if slot is not None:
            scheduled = Scheduled(step_of(tree, slot.field_path("count")))
    label, folded = edge_label(index.keys[node]), kind in ("fold", "like")
    return Row(
        path,
        "",
        line.depth,
        label,
        type_name,
        "",
        folded,
        like,
        kind=kind,
        role=role,
        arity=index.arities[node],
        first_keys=first_keys,
        leaf=leaf,
        leaves=subtree,
        scheduled=scheduled,
    )


def _role(index: StructureIndex, node: int) -> Role:
    if is_hyperparameter(index, node):
        return "hyperparameter"
    return "counter" if is_counter(index, node) else ""


def _first_keys(index: StructureIndex, node: int) -> tuple[str, ...]:
    return tuple(
        edge_label(index.keys[child]) for child in itertools.islice(index.children(node), FIRST_KEYS)
    )


def _run_row(
    index: StructureIndex, leaves: list[Any], metadata: _LeafMetadata, line: Line, path: KeyPath, role: Role
) -> Row:
    """One line for the siblings `line.node` ... `line.other`, all of the structure of the sibling
    shown before them, with the range of each injected hyperparameter across them."""
    first, last = line.node, line.other
    reference = run_reference(index, line)
    members = run_members(index, line)
    label = f"{edge_label(index.keys[first])} ... {edge_label(index.keys[last])}"
    row = Row(
        path,
        "",
        line.depth,
        label,
        index.types[first].__name__,
        "",
        True,
        index.path(reference),
        kind="run",
        role=role,
        arity=index.arities[first],
        first_keys=_first_keys(index, first),
        siblings=len(members),
    )
    if index.sizes[reference] == 1 or not index.leaf_counts[reference]:  # empty nodes, or no leaves
        return row
    ranges = []
    for offset in range(1, index.sizes[reference]):
        if not is_hyperparameter(index, reference + offset) or not index.is_leaf[reference + offset]:
            continue
        values = [scalar_number(leaves[index.leaf_starts[m + offset]]) for m in members]
        numbers = [v for v in values if v is not None]
        name = edge_label(index.keys[reference + offset])
        complete = len(numbers) == len(values)
        ranges.append(Range(name, min(numbers) if complete else None, max(numbers) if complete else None))
    subtree = _leaves(index, first, last + 1, metadata)
    if metadata.spread and not _placed_alike(index, leaves, reference, members):
        subtree = subtree._replace(other_shardings=True)
    return row._replace(leaves=subtree, ranges=tuple(ranges))


class _LeafMetadata:
    """Each leaf's dtype and the running total of bytes, read once per call (no array data)."""

    def __init__(self, leaves: list[Any]) -> None:
        nbytes: Iterable[int]
        try:
            avals = list(map(operator.attrgetter("aval"), leaves))  # one attribute read a jax.Array
        except AttributeError:
            avals = leaves
        try:
            self.dtypes = list(map(operator.attrgetter("dtype"), avals))
            sizes = list(map(math.prod, map(operator.attrgetter("shape"), avals)))
            nbytes = map(operator.mul, sizes, map(operator.attrgetter("itemsize"), self.dtypes))
        except AttributeError:  # some leaves are not arrays
            self.dtypes = [getattr(leaf, "dtype", None) for leaf in leaves]
            nbytes = [
                math.prod(getattr(leaf, "shape", ())) * (d.itemsize if d else 0)
                for leaf, d in zip(leaves, self.dtypes, strict=True)
            ]
        self.cumulative_bytes = [0, *itertools.accumulate(nbytes)]
        types = set(map(type, leaves))
        concrete = {kind for kind in types if is_concrete_array_type(kind)}
        deleted = operator.methodcaller("is_deleted")
        if types <= concrete:  # every leaf a concrete array: the calls alone, in C
            flags: Iterable[bool] = map(deleted, leaves)
        else:
            flags = (type(leaf) in concrete and deleted(leaf) for leaf in leaves)
        self.deleted = list(itertools.compress(itertools.count(), flags))  # donated arrays, ascending
        self.spread = spans_devices(leaves)

    def summary(self, start: int, stop: int) -> tuple[tuple[str, ...], int]:
        names = sorted({dtype_name(d) for d in set(self.dtypes[start:stop]) if d is not None})
        return tuple(names), self.cumulative_bytes[stop] - self.cumulative_bytes[start]


def _leaves(index: StructureIndex, node: int, end: int, metadata: _LeafMetadata) -> Leaves:
    """Leaves, dtypes and bytes of the subtrees of the sibling nodes `node` to `end - 1`."""
    last = end - 1
    start = index.leaf_starts[node]
    total = index.leaf_starts[last] + index.leaf_counts[last] - start
    masked = _masked_in(index, node, last + index.sizes[last])
    held, more_held = None, False
    stop = node + index.sizes[node]
    if masked and node == last and node and not any(index.state_names[node:stop]):
        # a label's share of the params (a `masked` or `partition` moment): which ones it holds
        held, more_held = _held_names(index, node)
    dtypes, nbytes = metadata.summary(start, start + total)
    deleted = metadata.deleted[
        bisect.bisect_left(metadata.deleted, start) : bisect.bisect_left(metadata.deleted, start + total)
    ]
    names = tuple(shortest_query(index, index.leaf_nodes[position]) for position in deleted[:3])
    return Leaves(total, dtypes, nbytes, masked, held, more_held, len(deleted), names)


def _held_names(index: StructureIndex, node: int, shown: int = 3) -> tuple[tuple[str, ...], bool]:
    """The first leaves under `node`, named from it (`dense1.w`, `head.w`), for a masked region,
    and whether there are more."""
    names: list[str] = []
    for leaf in range(node + 1, node + index.sizes[node]):
        if index.is_leaf[leaf]:
            if len(names) == shown:
                return tuple(names), True
            chain = [*index.ancestors(leaf)[index.depths[node] + 1 :], leaf]
            names.append(".".join(bounded(index.texts[n], 40) for n in chain))
    return tuple(names), False


def _masked_in(index: StructureIndex, start: int, stop: int) -> int:
    """How many masked holes (`MaskedNode`s, or `None`s of a restored state: parameters an optax
    `masked` or `partition` leaves out) lie in the nodes `start` to `stop - 1`: a `like` line must
    not read as the full params."""
    holes = index.holes
    return bisect.bisect_left(holes, stop) - bisect.bisect_left(holes, start)


# Placement -------------------------------------------------------------------------------------


def spans_devices(leaves: list[Any]) -> bool:
    """Whether some leaf is placed over several devices, read from the shardings alone: then
    `describe` marks the arrays on one device and the `like` rows placed otherwise.

    >>> import jax.numpy as jnp
    >>> spans_devices([jnp.zeros(3), 1.0])
    False
    """
    return widest(unwrap_all(leaves)) > 1


def _leaf_row(leaf: Any, spread: bool) -> LeafSummary:
    """The leaf as its row shows it; in a tree with arrays over several devices, an array on one
    device is marked with its device (an abstract mesh's by position): `@ device 0`."""
    summary = leaf_summary(leaf)
    if not spread or summary.sharding or summary.deleted or not is_placed(unwrap(leaf)):
        return summary
    found = device_bytes(leaf)
    if not found or len(found) != 1:
        return summary
    return summary._replace(sharding=f"@ device {found[0][0]}")


def _placed_alike(index: StructureIndex, leaves: list[Any], reference: int, nodes: list[int]) -> bool:
    """Whether the leaves of each of `nodes` are placed as those of `reference`, position by
    position (the nodes have its structure)."""
    start, count = index.leaf_starts[reference], index.leaf_counts[reference]
    expected = leaves[start : start + count]
    for node in nodes:
        begin = index.leaf_starts[node]
        if index.leaf_counts[node] != count:
            return False
        if not all(map(_same_placement, expected, leaves[begin : begin + count])):
            return False
    return True


def _same_placement(first: Any, second: Any) -> bool:
    """Whether two leaves lie alike: equivalent shardings of concrete devices, else the same
    sharding text and bytes on each device (an abstract mesh's by position); unplaced alike."""
    first, second = unwrap(first), unwrap(second)
    one = first.sharding if is_placed(first) else None
    other = second.sharding if is_placed(second) else None
    if one is None or other is None:
        return one is other
    if one is other:
        return True
    if not is_abstract_mesh(one) and not is_abstract_mesh(other) and first.ndim == second.ndim:
        return _equivalent(one, other, first.ndim)
    return sharding_text(first) == sharding_text(second) and device_bytes(first) == device_bytes(second)


@functools.lru_cache(maxsize=4096)
def _equivalent(one: Any, other: Any, ndim: int) -> bool:
    return bool(one.is_equivalent_to(other, ndim))


on_clear(_equivalent.cache_clear)
