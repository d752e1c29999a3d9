"""`diff`: what changed between two trees, node by node, values compared on the device.

Children are matched by name, so a restored raw state (NamedTuples as dicts, tuples as lists,
`EmptyState` as `None`) is compared field by field with the live one: each container that changed
type is one `type` row, and its fields are compared below it.

>>> import jax.numpy as jnp, optree_inspect as oi
>>> print(oi.diff({"w": jnp.zeros(3), "n": jnp.int32(1)}, {"w": jnp.ones(3), "n": jnp.int32(2)}))
['n']: value: i32[] = 1 -> i32[] = 2
['w']: value: 3 of 3 elements differ, max |diff| 1, max rel 1
"""

from __future__ import annotations

import math
import numbers
import operator
from decimal import Decimal
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.tree_util import keystr
from jaxtyping import PyTree

from ._cache import index_and_leaves, structure_index
from ._compare import Compared, Pair, compare_values, equal_objects, values_equal
from ._errors import DeletedArrayError, InvalidArgumentError, bounded, raised_here
from ._index import StructureIndex
from ._keys import KeyEntry, KeyPath, path_text
from ._leaf import (
    dtype_and_weak,
    is_any_variable,
    is_concrete,
    is_concrete_array_type,
    is_deleted,
    is_variable,
    sharding_text_if_placed,
    short_text,
    unwrap,
    value_kind,
    value_of,
)
from ._listing import Listing
from ._naming import shortest_query
from ._registry import children_with_keys
from ._state_rules import is_state_node
from ._treekit import Children, OneSided, zip_by_name

KINDS = ("added", "removed", "type", "shape", "dtype", "sharding", "value")
_FOLD = 16
"""A params-shaped region (no optax state inside) of more leaves than this is one row."""
_SHOWN = 120


class DiffRow(NamedTuple):
    """One difference: where (the path as in `b`, as in `a` for a removed node), the query that
    selects it (in `b`, or `a`), its kind (one of `KINDS`), each side in short, and the line."""

    path: KeyPath
    query: str
    kind: str
    before: str
    after: str
    summary: str


class Diff(Listing[DiffRow]):
    """What `diff` returns: rows in tree order; truthy when anything differs."""

    shown = _SHOWN
    empty = "No differences."
    more = "... {count:,} more differences (iterate the diff for all)"

    def __init__(self, rows: list[DiffRow]) -> None:
        super().__init__(rows)

    @property
    def rows(self) -> tuple[DiffRow, ...]:
        """Every difference, in tree order."""
        return self._items

    def _line(self, item: DiffRow) -> str:
        return item.summary


class _Pending(NamedTuple):
    """Leaf pairs whose values are compared together, for one value row (several in a folded one)."""

    path: KeyPath
    pairs: list[Pair]
    leaves: int
    folded: bool


_Row = tuple[KeyPath, str, str, str, str, str]


@raised_here
def diff(a: PyTree, b: PyTree, /, *, rtol: float = 0.0, atol: float = 0.0) -> Diff:
    """What differs between `a` and `b`: rows for nodes only in one, changed types, shapes, dtypes
    (weak types included), shardings and values (elements beyond `atol + rtol * |b|`, which a
    value that became or was NaN or Inf always is; compared exactly in their own dtypes; NaN
    equals NaN in the same place), in tree order. Large params-shaped regions are one row of each
    kind.

    ```python
    >>> import jax.numpy as jnp, optree_inspect as oi
    >>> [row.kind for row in oi.diff((jnp.zeros(2),), [jnp.zeros(2)])]
    ['type']

    ```
    """
    for name, tolerance in (("rtol", rtol), ("atol", atol)):
        real = isinstance(tolerance, numbers.Real) and not isinstance(tolerance, bool | np.bool_)
        if not real or not tolerance >= 0:  # NumPy's scalars too: `jnp.finfo(...).eps` is one
            raise InvalidArgumentError(
                f"{name}= takes a number at least 0, got {bounded(repr(tolerance), 60)}."
            )
    rtol, atol = _as_float(rtol), _as_float(atol)
    if _equal_by_position(a, b, rtol, atol):
        return Diff([])
    rows: list[_Row | int] = []  # a row, or the number of the `_Pending` whose value rows stand here
    pending: list[_Pending] = []
    _compare(a, b, (), (), rows, pending)
    values = _value_rows(pending, float(rtol), float(atol))
    nodes_a, nodes_b = _Nodes(a), _Nodes(b)
    result: list[DiffRow] = []
    for entry in rows:  # in tree order: each container's rows before its children's
        for path, side, kind, before, after, what in values[entry] if isinstance(entry, int) else [entry]:
            query = (nodes_b if side == "b" else nodes_a).query(path)
            where = keystr(path) or "<root>"
            result.append(DiffRow(path, query, kind, before, after, f"{where}: {kind}: {what}"))
    return Diff(result)


def _as_float(tolerance: Any) -> float:
    """A tolerance as a float: one beyond float64's range (`10**400`) is `inf`."""
    try:
        return float(tolerance)
    except OverflowError:
        return math.inf


def _equal_by_position(a: Any, b: Any, rtol: float, atol: float) -> bool:
    """Whether `a` and `b` are trees of one structure (one structure index: equal treedefs and
    leaf types) of concrete numeric arrays alike in shape, dtype and placement, whose values
    compare equal: then `diff` has no rows, found by one comparison pass over the leaves paired
    by position, without the walk by names (a state and its restore, a state and its copy)."""
    try:
        index_a, leaves_a = index_and_leaves(a)
        index_b, leaves_b = index_and_leaves(b)
    except Exception:  # the walk reports it
        return False
    if index_a is not index_b or not all(map(is_concrete_array_type, set(map(type, leaves_a)))):
        return False
    avals = operator.attrgetter("aval")
    if list(map(avals, leaves_a)) != list(map(avals, leaves_b)):
        return False
    shardings = operator.attrgetter("sharding")
    if list(map(shardings, leaves_a)) != list(map(shardings, leaves_b)):
        return False
    if any(value_kind(dtype) != "number" for dtype in {leaf.dtype for leaf in leaves_a}):
        return False  # PRNG keys and text: compared by the walk
    deleted = operator.methodcaller("is_deleted")
    if any(map(deleted, leaves_a)) or any(map(deleted, leaves_b)):
        return False  # the walk names the deleted array
    return values_equal(leaves_a, leaves_b, rtol, atol)


class _Nodes:
    """The node numbers of one tree's paths, from one map built once per `diff` call: finding a
    row's node costs O(depth), whatever the number of siblings."""

    def __init__(self, tree: Any) -> None:
        try:
            self.index: StructureIndex | None = structure_index(tree)
        except Exception:  # a tree JAX cannot flatten has no queries; its rows keep their keystrs
            self.index = None
        self.children: dict[tuple[int, KeyEntry], int] | None = None

    def number_of(self, path: KeyPath) -> int | None:
        index = self.index
        if index is None:
            return None
        if self.children is None:
            keys, parents = index.keys, index.parents
            self.children = {(parents[n], keys[n]): n for n in range(1, len(keys)) if keys[n] is not None}
        node: int | None = 0
        for key in path:
            node = self.children.get((node, key))  # type: ignore[arg-type]
            if node is None:
                return index.number_of(path)  # a path through a node without a key
        return node

    def query(self, path: KeyPath) -> str:
        node = self.number_of(path)
        if node is None or self.index is None:
            return keystr(path)
        return shortest_query(self.index, node) if node else ""


def _type_name(node: Any) -> str:
    return "None" if node is None else type(node).__name__


def _compare(
    a: Any, b: Any, path_a: KeyPath, path_b: KeyPath, rows: list[_Row | int], pending: list[_Pending]
) -> None:
    """The rows of what differs between `a` and `b` at `path_a` and `path_b`, in tree order (each
    node's before its children's), their children zipped by name; value rows wait in `pending`."""
    for item in zip_by_name(a, b, enter=_enter, paths=(path_a, path_b)):
        if isinstance(item, OneSided):
            text = _short(item.node)
            if item.side == "a":
                rows.append((item.path, "a", "removed", text, "", f"only in a ({text})"))
            else:
                rows.append((item.path, "b", "added", "", text, f"only in b ({text})"))
            continue
        pairs_a, pairs_b = item.children_a, item.children_b
        variables = is_any_variable(item.a) and is_any_variable(item.b)
        if variables and is_variable(item.a) and is_variable(item.b) and type(item.a) is not type(item.b):
            before, after = _type_name(item.a), _type_name(item.b)
            rows.append((item.path_b, "b", "type", before, after, f"{before} -> {after}"))
        if (pairs_a is None and pairs_b is None) or variables:
            findings, pair = _leaf_findings(value_of(item.a), value_of(item.b), item.path_a, item.path_b)
            rows.extend(
                (item.path_b, "b", kind, before, after, f"{before} -> {after}")
                for kind, before, after in findings
            )
            if pair is not None:
                rows.append(len(pending))
                pending.append(_Pending(item.path_b, [pair], 1, False))
            continue
        if (pairs_a is None) != (pairs_b is None) or type(item.a) is not type(item.b):
            before, after = _describe_node(item.a, pairs_a), _describe_node(item.b, pairs_b)
            rows.append((item.path_b, "b", "type", before, after, f"{before} -> {after}"))
        if pairs_a is not None and pairs_b is not None and not item.entered:
            _compare_folded(item.a, item.b, item.path_a, item.path_b, rows, pending)


def _enter(a: Any, b: Any, pairs_a: Children | None, pairs_b: Children | None) -> bool:
    """Compare the children of two nodes, unless they are a region folded into one row or two nnx
    Variables (one row each, as `describe` shows them)."""
    if is_any_variable(a) and is_any_variable(b):
        return False
    return pairs_a is not None and pairs_b is not None and not _foldable(a, b)


def _compare_folded(
    a: Any, b: Any, path_a: KeyPath, path_b: KeyPath, rows: list[_Row | int], pending: list[_Pending]
) -> None:
    """A folded region: one row for each kind of change of its leaves (with how many leaves and the
    first of them), then one value row for the leaves of one shape on both sides."""
    with_paths_a = jax.tree_util.tree_flatten_with_path(a)[0]
    leaves_b = jax.tree_util.tree_flatten_with_path(b)[0]
    changes: dict[str, list[tuple[KeyPath, str, str]]] = {}
    pairs: list[Pair] = []
    for (relative_a, leaf_a), (relative_b, leaf_b) in zip(with_paths_a, leaves_b, strict=True):
        findings, pair = _leaf_findings(
            unwrap(leaf_a), unwrap(leaf_b), (*path_a, *relative_a), (*path_b, *relative_b)
        )
        for kind, before, after in findings:
            changes.setdefault(kind, []).append((relative_b, before, after))
        if pair is not None:
            pairs.append(pair)
    total = len(leaves_b)
    for kind in KINDS:
        if kind in changes:
            (first, before, after), count = changes[kind][0], len(changes[kind])
            what = f"{count:,} of {total:,} leaves, first {keystr(first)}: {before} -> {after}"
            rows.append((path_b, "b", kind, f"{total:,} leaves", f"{count:,} changed", what))
    if pairs:
        rows.append(len(pending))
        pending.append(_Pending(path_b, pairs, total, True))


def _describe_node(node: Any, pairs: Any) -> str:
    return _short(node) if pairs is None else _type_name(node)


def _short(node: Any) -> str:
    """A node in a few characters: a leaf as `describe` shows it, a subtree by type and leaves."""
    if children_with_keys(node) is None or is_variable(node):
        return short_text(node)
    count = len(jax.tree.leaves(node))
    return f"{_type_name(node)}, {count:,} lea{'ves' if count != 1 else 'f'}"


def _foldable(a: Any, b: Any) -> bool:
    """A params-shaped region of one structure in both trees, large enough to be one row."""
    if is_state_node(a) or is_state_node(b):
        return False
    try:
        leaves_a, treedef_a = jax.tree.flatten(a)
        treedef_b: Any = jax.tree.structure(b)
    except Exception:
        return False
    if len(leaves_a) <= _FOLD or treedef_b != treedef_a:
        return False
    holds_state = lambda tree: any(  # noqa: E731
        is_state_node(node)
        for node in jax.tree.leaves(tree, is_leaf=lambda n: is_state_node(n) and n is not tree)
    )
    return not holds_state(a) and not holds_state(b)


def _leaf_findings(
    a: Any, b: Any, path_a: KeyPath, path_b: KeyPath
) -> tuple[list[tuple[str, str, str]], Pair | None]:
    """The changes of one leaf (kind, before, after) but its values, and the pair whose values are
    to be compared, if any: values are compared when both leaves are concrete, of one shape, and
    both numbers (bool, integer, float, complex), both PRNG keys of one implementation, or both of
    one other NumPy kind (text, bytes, dates, objects)."""
    dtype_a, dtype_b = dtype_and_weak(a), dtype_and_weak(b)
    if dtype_a is None or dtype_b is None:  # not arrays: compare as Python values
        if type(a) is not type(b):
            return [("type", _short(a), _short(b))], None
        if not equal_objects(a, b):
            return [("value", _short(a), _short(b))], None
        return [], None
    for leaf, path, side in ((a, path_a, "a"), (b, path_b, "b")):
        if is_deleted(leaf):
            raise DeletedArrayError(
                f"The array at {path_text(path)} in {side} was deleted (donated to a jitted function?): "
                "its values cannot be compared. Use the state the jitted call returned."
            )
    findings: list[tuple[str, str, str]] = []
    if np.shape(a) != np.shape(b):
        return [("shape", _short(a), _short(b))], None
    if dtype_a != dtype_b:  # the short texts only where a row needs them: most leaves have none
        findings.append(("dtype", _short(a), _short(b)))
    sharding_a, sharding_b = sharding_text_if_placed(a), sharding_text_if_placed(b)
    if sharding_a is not None and sharding_b is not None and not _same_placement(a, b):
        findings.append(("sharding", sharding_a or "one device", sharding_b or "one device"))
    if not (is_concrete(a) and is_concrete(b)):
        return findings, None
    kind_a, kind_b = value_kind(a.dtype), value_kind(b.dtype)
    if kind_a != kind_b:
        return findings, None
    if kind_a == "key":
        if jax.random.key_impl(a) != jax.random.key_impl(b):
            return findings, None
        key_ndim = np.ndim(a)
        a, b = jax.random.key_data(a), jax.random.key_data(b)
        return findings, Pair(a, b, math.prod(a.shape[key_ndim:]), True)
    return findings, Pair(a, b, 1, kind_a == "number")


def _same_placement(a: Any, b: Any) -> bool:
    sharding_a, sharding_b = a.sharding, b.sharding
    try:
        return bool(sharding_a.is_equivalent_to(sharding_b, len(a.shape)))
    except Exception:
        return sharding_a == sharding_b


# Values ----------------------------------------------------------------------------------------


def _value_rows(pending: list[_Pending], rtol: float, atol: float) -> list[list[_Row]]:
    """The value rows of each `pending` item, from one comparison of all their pairs."""
    flat = [pair for item in pending for pair in item.pairs]
    results = iter(compare_values(flat, rtol, atol))
    rows: list[list[_Row]] = []
    for item in pending:
        compared = [(pair, next(results)) for pair in item.pairs]
        changed = [(pair, c) for pair, c in compared if c.changed]
        if not changed:
            rows.append([])
        elif item.folded:
            what = f"{len(changed):,} of {item.leaves:,} leaves changed" + _details(
                [c for _, c in changed], False
            )
            rows.append(
                [(item.path, "b", "value", f"{item.leaves:,} leaves", f"{len(changed):,} changed", what)]
            )
        else:
            [(pair, c)] = changed
            rows.append([(item.path, "b", "value", *_leaf_value_text(pair, c))])
    return rows


def _leaf_value_text(pair: Pair, c: Compared) -> tuple[str, str, str]:
    if pair.words > 1:  # PRNG keys: their data is shown by neither side
        a, b = f"{c.size:,} keys", f"{c.changed:,} changed"
        return a, b, f"{c.changed:,} of {c.size:,} keys differ"
    before, after = _short(pair.a), _short(pair.b)
    if np.ndim(pair.a) == 0:
        what = f"{before} -> {after}"
        if before == after and c.measured:
            what += f" (|diff| {_number(c.largest)})"
        return before, after, what
    return before, after, f"{c.changed:,} of {c.size:,} elements differ" + _details([c], True)


def _details(compared: list[Compared], relative: bool) -> str:
    """How many elements became NaN or Inf and the largest differences, as `, ...` clauses."""
    text = ""
    for label, count in (
        ("became NaN", sum(c.nan for c in compared)),
        ("became Inf", sum(c.inf for c in compared)),
        ("became -Inf", sum(c.neginf for c in compared)),
        ("were NaN or Inf", sum(c.unfinite for c in compared)),
    ):
        if count:
            text += f", {count:,} {label}" if relative else f", {count:,} element{'s' * (count != 1)} {label}"
    measured = [c for c in compared if c.measured]
    if measured:
        text += f", max |diff| {_number(max(c.largest for c in measured))}"
        largest_relative = max(c.relative for c in measured)
        if relative and 0 < largest_relative < math.inf:
            text += f", max rel {_number(largest_relative)}"
    return text


def _number(value: int | float | Decimal) -> str:
    if isinstance(value, Decimal):  # beyond float64: shown as a float would be
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"
    return f"{value:.3g}"
