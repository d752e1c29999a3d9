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

import functools
import html
import math
import numbers
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import DictKey, GetAttrKey, SequenceKey, keystr
from jaxtyping import PyTree

from ._compat import is_nnx_variable_type, variable_value
from ._describe import _leaf_summary, _sharding_text
from ._errors import DeletedArrayError, InvalidArgumentError, bounded, raised_here
from ._keys import KeyEntry, KeyPath, path_text
from ._naming import shortest_query
from ._optax.fields import INSIDE, is_state_type, restored_state_name
from ._registry import children_with_keys
from ._tree import StructureIndex, structure_index

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


class Diff:
    """What `diff` returns: rows in tree order; truthy when anything differs."""

    def __init__(self, rows: list[DiffRow]) -> None:
        self.rows = tuple(rows)

    def __iter__(self) -> Iterator[DiffRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def __str__(self) -> str:
        if not self.rows:
            return "No differences."
        lines = [row.summary for row in self.rows[:_SHOWN]]
        if len(self.rows) > _SHOWN:
            lines.append(f"... {len(self.rows) - _SHOWN:,} more differences (iterate the diff for all)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        lines = "".join(f"<div>{html.escape(line)}</div>" for line in str(self).splitlines())
        return f'<div class="optree-inspect" style="font-family: monospace">{lines}</div>'


class _Pair(NamedTuple):
    """Two concrete leaves of one shape whose values are compared: `words` values make one element
    (a PRNG key's key data), and `numeric` tells numbers (compared exactly, with tolerances) from
    text and objects (compared with `==`)."""

    a: Any
    b: Any
    words: int
    numeric: bool


class _Pending(NamedTuple):
    """Leaf pairs whose values are compared together, for one value row (several in a folded one)."""

    path: KeyPath
    pairs: list[_Pair]
    leaves: int
    folded: bool


class _Compared(NamedTuple):
    """One pair's comparison: elements that differ, of how many; of those, how many became NaN,
    Inf or -Inf in `b` and how many were NaN or Inf in `a`; how many have a finite difference, the
    largest of these and the largest relative one (over a nonzero `|b|`)."""

    changed: int
    size: int
    nan: int
    inf: int
    neginf: int
    unfinite: int
    measured: int
    largest: int | float | Decimal
    relative: float


_Row = tuple[KeyPath, str, str, str, str, str]


@raised_here
def diff(a: PyTree, b: PyTree, /, *, rtol: float = 0.0, atol: float = 0.0) -> Diff:
    """What differs between `a` and `b`: rows for nodes only in one, changed types, shapes, dtypes
    (weak types included), shardings and values (elements beyond `atol + rtol * |b|`, compared
    exactly in their own dtypes; NaN equals NaN in the same place), in tree order. Large
    params-shaped regions are one row of each kind.

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


def _name(key: KeyEntry) -> Any:
    """What matches children across forms: a field name (attribute or str key), or an index."""
    if isinstance(key, GetAttrKey):
        return ("name", key.name)
    if isinstance(key, DictKey):
        return ("name", key.key) if isinstance(key.key, str) else ("key", key.key)
    if isinstance(key, SequenceKey):
        return ("index", key.idx)
    return ("other", str(key))


def _type_name(node: Any) -> str:
    return "None" if node is None else type(node).__name__


def _unwrap(node: Any) -> Any:
    return variable_value(node) if is_nnx_variable_type(type(node)) else node


def _match_children(
    pairs_a: list[tuple[KeyEntry, Any]], pairs_b: list[tuple[KeyEntry, Any]]
) -> tuple[list[tuple[KeyEntry, Any, tuple[KeyEntry, Any] | None]], list[tuple[KeyEntry, Any]]]:
    """Each child of `a` with its match in `b` (None if it has none), in `a`'s order, and the
    children only in `b`. Children match by name (`_name`); then a dict key that is no `str` (`0`)
    left without a match matches the one `str` key of its text (`'0'`) left without one on the
    other side, as orbax restores `{0: x}` as `{'0': x}`. A dict holding both `0` and `'0'` matches
    each exactly."""
    by_name_b = {_name(key): (key, child) for key, child in pairs_b}
    names_a = {_name(key) for key, _ in pairs_a}
    only_b = [(key, child) for key, child in pairs_b if _name(key) not in names_a]
    by_text: dict[str, tuple[list[KeyEntry], list[tuple[KeyEntry, Any]]]] = {}
    for key, _ in pairs_a:
        if isinstance(key, DictKey) and _name(key) not in by_name_b:
            by_text.setdefault(str(key.key), ([], []))[0].append(key)
    for key, child in only_b:
        if isinstance(key, DictKey) and str(key.key) in by_text:
            by_text[str(key.key)][1].append((key, child))
    paired: dict[Any, tuple[KeyEntry, Any]] = {}
    for keys_a, found_b in by_text.values():
        if len(keys_a) == len(found_b) == 1:
            key_a, (key_b, child_b) = keys_a[0], found_b[0]
            if isinstance(key_a.key, str) != isinstance(key_b.key, str):
                paired[_name(key_a)] = (key_b, child_b)
    matched = [(key, child, by_name_b.get(_name(key)) or paired.get(_name(key))) for key, child in pairs_a]
    taken = {id(found[0]) for found in paired.values()}
    return matched, [(key, child) for key, child in only_b if id(key) not in taken]


def _compare(
    a: Any, b: Any, path_a: KeyPath, path_b: KeyPath, rows: list[_Row | int], pending: list[_Pending]
) -> None:
    pairs_a, pairs_b = children_with_keys(a), children_with_keys(b)
    if pairs_a is None and pairs_b is None:
        findings, pair = _leaf_findings(_unwrap(a), _unwrap(b), path_a, path_b)
        rows.extend(
            (path_b, "b", kind, before, after, f"{before} -> {after}") for kind, before, after in findings
        )
        if pair is not None:
            rows.append(len(pending))
            pending.append(_Pending(path_b, [pair], 1, False))
        return
    if (pairs_a is None) != (pairs_b is None) or type(a) is not type(b):
        before, after = _describe_node(a, pairs_a), _describe_node(b, pairs_b)
        rows.append((path_b, "b", "type", before, after, f"{before} -> {after}"))
        if pairs_a is None or pairs_b is None:
            return
    assert pairs_a is not None and pairs_b is not None
    if _foldable(a, b):
        _compare_folded(a, b, path_a, path_b, rows, pending)
        return
    matched, only_b = _match_children(pairs_a, pairs_b)
    for key, child, found in matched:
        if found is not None:
            _compare(child, found[1], (*path_a, key), (*path_b, found[0]), rows, pending)
        else:
            text = _short(child)
            rows.append(((*path_a, key), "a", "removed", text, "", f"only in a ({text})"))
    for key, child in only_b:
        text = _short(child)
        rows.append(((*path_b, key), "b", "added", "", text, f"only in b ({text})"))


def _compare_folded(
    a: Any, b: Any, path_a: KeyPath, path_b: KeyPath, rows: list[_Row | int], pending: list[_Pending]
) -> None:
    """A folded region: one row for each kind of change of its leaves (with how many leaves and the
    first of them), then one value row for the leaves of one shape on both sides."""
    with_paths_a = jax.tree_util.tree_flatten_with_path(a)[0]
    leaves_b = jax.tree_util.tree_flatten_with_path(b)[0]
    changes: dict[str, list[tuple[KeyPath, str, str]]] = {}
    pairs: list[_Pair] = []
    for (relative_a, leaf_a), (relative_b, leaf_b) in zip(with_paths_a, leaves_b, strict=True):
        findings, pair = _leaf_findings(
            _unwrap(leaf_a), _unwrap(leaf_b), (*path_a, *relative_a), (*path_b, *relative_b)
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
    if children_with_keys(node) is None or is_nnx_variable_type(type(node)):
        return _leaf_summary(node)
    count = len(jax.tree.leaves(node))
    return f"{_type_name(node)}, {count:,} lea{'ves' if count != 1 else 'f'}"


def _is_state(node: Any) -> bool:
    return is_state_type(type(node)) or restored_state_name(node, INSIDE) is not None


def _foldable(a: Any, b: Any) -> bool:
    """A params-shaped region of one structure in both trees, large enough to be one row."""
    if _is_state(a) or _is_state(b):
        return False
    try:
        leaves_a, treedef_a = jax.tree.flatten(a)
        treedef_b: Any = jax.tree.structure(b)
    except Exception:
        return False
    if len(leaves_a) <= _FOLD or treedef_b != treedef_a:
        return False
    holds_state = lambda tree: any(  # noqa: E731
        _is_state(node) for node in jax.tree.leaves(tree, is_leaf=lambda n: _is_state(n) and n is not tree)
    )
    return not holds_state(a) and not holds_state(b)


def _leaf_findings(
    a: Any, b: Any, path_a: KeyPath, path_b: KeyPath
) -> tuple[list[tuple[str, str, str]], _Pair | None]:
    """The changes of one leaf (kind, before, after) but its values, and the pair whose values are
    to be compared, if any: values are compared when both leaves are concrete, of one shape, and
    both numbers (bool, integer, float, complex), both PRNG keys of one implementation, or both of
    one other NumPy kind (text, bytes, dates, objects)."""
    dtype_a, dtype_b = _dtype(a), _dtype(b)
    if dtype_a is None or dtype_b is None:  # not arrays: compare as Python values
        if type(a) is not type(b):
            return [("type", _short(a), _short(b))], None
        if not _equal_objects(a, b):
            return [("value", _short(a), _short(b))], None
        return [], None
    for leaf, path, side in ((a, path_a, "a"), (b, path_b, "b")):
        if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) and leaf.is_deleted():
            raise DeletedArrayError(
                f"The array at {path_text(path)} in {side} was deleted (donated to a jitted function?): "
                "its values cannot be compared. Use the state the jitted call returned."
            )
    findings: list[tuple[str, str, str]] = []
    if np.shape(a) != np.shape(b):
        return [("shape", _short(a), _short(b))], None
    if dtype_a != dtype_b:  # the short texts only where a row needs them: most leaves have none
        findings.append(("dtype", _short(a), _short(b)))
    sharding_a, sharding_b = _sharding(a), _sharding(b)
    if sharding_a is not None and sharding_b is not None and not _same_placement(a, b):
        findings.append(("sharding", sharding_a or "one device", sharding_b or "one device"))
    if not (_concrete(a) and _concrete(b)):
        return findings, None
    kind_a, kind_b = _value_kind(a.dtype), _value_kind(b.dtype)
    if kind_a != kind_b:
        return findings, None
    if kind_a == "key":
        if jax.random.key_impl(a) != jax.random.key_impl(b):
            return findings, None
        key_ndim = np.ndim(a)
        a, b = jax.random.key_data(a), jax.random.key_data(b)
        return findings, _Pair(a, b, math.prod(a.shape[key_ndim:]), True)
    return findings, _Pair(a, b, 1, kind_a == "number")


def _value_kind(dtype: Any) -> str:
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return "key"
    if jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_):
        return "number"
    return np.dtype(dtype).kind


def _dtype(leaf: Any) -> Any:
    """A leaf's dtype, with its weak type (a weak f32 is not an f32), or None if not an array."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        return None
    try:
        weak = getattr(jax.typeof(leaf), "weak_type", False) if not isinstance(leaf, np.ndarray) else False
    except Exception:
        weak = False
    return (dtype, weak)


def _sharding(leaf: Any) -> str | None:
    """The placement text of a concrete array (`""` on one device), or None where it has none."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return _sharding_text(leaf) if leaf.sharding is not None else None
    if not isinstance(leaf, jax.Array) or isinstance(leaf, jax.core.Tracer):
        return None
    return _sharding_text(leaf)


def _same_placement(a: Any, b: Any) -> bool:
    sharding_a, sharding_b = a.sharding, b.sharding
    try:
        return bool(sharding_a.is_equivalent_to(sharding_b, len(a.shape)))
    except Exception:
        return sharding_a == sharding_b


def _concrete(leaf: Any) -> bool:
    if isinstance(leaf, jax.core.Tracer | jax.ShapeDtypeStruct):
        return False
    return isinstance(leaf, jax.Array | np.ndarray | np.generic)


def _equal_objects(a: Any, b: Any) -> bool:
    """`a == b` for Python values, where a float or complex NaN equals NaN."""
    if isinstance(a, float | complex) and isinstance(b, float | complex) and a != a and b != b:
        return True
    try:
        return bool(a == b)
    except Exception:
        return a is b


# Values ----------------------------------------------------------------------------------------


def _value_rows(pending: list[_Pending], rtol: float, atol: float) -> list[list[_Row]]:
    """The value rows of each `pending` item, from one comparison of all their pairs."""
    flat = [pair for item in pending for pair in item.pairs]
    results = iter(_compare_values(flat, rtol, atol))
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


def _leaf_value_text(pair: _Pair, c: _Compared) -> tuple[str, str, str]:
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


def _details(compared: list[_Compared], relative: bool) -> str:
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


_SMALL = 1 << 16
"""Leaves with fewer elements are fetched to the host and compared there, in batches."""
_DEVICE_GROUP = 1 << 22
"""Larger leaves are compared where they live, by one compiled function per shape, dtypes and
placement, when the leaves of that key hold at least this many elements together: so that each
compilation is paid for by as much data, and many distinct shapes cost no compilation."""
_HOST_BATCH = 1 << 27
"""The most bytes of leaf data fetched to the host at once."""
_COUNTS = 6


def _compare_values(pairs: list[_Pair], rtol: float, atol: float) -> list[_Compared]:
    """Each pair compared (see `_Compared`): numbers exactly in their own dtypes (`_elementwise`);
    text, dates and objects with `==`. Small leaves, and larger ones whose shape the others do not
    share enough, are compared on the host; the rest where they live, without gathering them."""
    results: list[_Compared | None] = [None] * len(pairs)
    totals: dict[Any, int] = {}
    for pair in pairs:
        if _on_device(pair, None):
            key = _device_key(pair)
            totals[key] = totals.get(key, 0) + pair.a.size
    device = [i for i, pair in enumerate(pairs) if _on_device(pair, totals)]
    host = [i for i, pair in enumerate(pairs) if not _on_device(pair, totals)]
    outputs = [_device_compare_pair(pairs[i], rtol, atol) for i in device]
    for i, output in zip(device, _fetch(outputs), strict=True):
        results[i] = _compared(pairs[i], *output)
    batch: list[int] = []
    size = 0
    for i in [*host, -1]:
        if i < 0 or (batch and size + _nbytes(pairs[i]) > _HOST_BATCH):
            fetched = jax.device_get([(pairs[j].a, pairs[j].b) for j in batch])
            for j, found in zip(
                batch, _host_compare([pairs[j] for j in batch], fetched, rtol, atol), strict=True
            ):
                results[j] = found
            batch, size = [], 0
        if i >= 0:
            batch.append(i)
            size += _nbytes(pairs[i])
    return results  # type: ignore[return-value]


def _nbytes(pair: _Pair) -> int:
    return int(np.size(pair.a)) * (np.dtype(pair.a.dtype).itemsize + np.dtype(pair.b.dtype).itemsize)


def _on_device(pair: _Pair, totals: dict[Any, int] | None) -> bool:
    a, b = pair.a, pair.b
    if not (pair.numeric and isinstance(a, jax.Array) and isinstance(b, jax.Array)):
        return False
    if not (a.is_fully_addressable and b.is_fully_addressable):
        return True  # another process holds part of it: only a compiled function sees it all
    if a.size < _SMALL:
        return False
    return totals is None or totals[_device_key(pair)] >= _DEVICE_GROUP


def _device_key(pair: _Pair) -> Any:
    return (pair.a.shape, pair.a.dtype, pair.b.dtype, pair.a.sharding, pair.b.sharding, pair.words)


def _device_compare_pair(pair: _Pair, rtol: float, atol: float) -> Any:
    a, b = pair.a, pair.b
    if a.sharding.device_set != b.sharding.device_set:
        b = jax.device_put(b, a.sharding)  # a compiled function takes arrays on one set of devices
    return _device_compare(a, b, rtol, atol, rtol > 0 or atol > 0, pair.words)


def _fetch(outputs: list[Any]) -> list[Any]:
    """The small results, in one transfer; a result that is not fully addressable (a replicated
    result of arrays of several processes) from this process's own copy."""
    local = [
        tuple(x if x.is_fully_addressable else x.addressable_data(0) for x in output) for output in outputs
    ]
    return jax.device_get(local)


@functools.partial(jax.jit, static_argnums=(4, 5))
def _device_compare(a: Any, b: Any, rtol: Any, atol: Any, tolerant: bool, words: int) -> Any:
    parts = _elementwise(jnp, a.reshape(-1), b.reshape(-1), rtol, atol, tolerant, _wide(jnp))
    counts, gap, half, rel = _units(jnp, parts, words)
    largest = gap.max(initial=0)
    return (
        jnp.stack([_count(mask) for mask in counts], axis=-1),
        largest,
        half.max(initial=0),
        rel.max(initial=0),
    )


def _count(mask: Any) -> Any:
    """Partial counts of `mask`, each below 2**31 (int32 without x64), to add up on the host."""
    flat = mask.reshape(-1)
    if flat.size < 1 << 31:
        return flat.sum(dtype=jnp.int32)[None]
    rows = -(-flat.size // (1 << 30))
    return jnp.pad(flat, (0, rows * (1 << 30) - flat.size)).reshape(rows, 1 << 30).sum(1, dtype=jnp.int32)


def _compared(pair: _Pair, counts: Any, largest: Any, half: Any, rel: Any) -> _Compared:
    changed, nan, inf, neginf, unfinite, measured = map(
        int, np.asarray(counts, dtype=np.int64).reshape(-1, _COUNTS).sum(0)
    )
    size = int(np.size(pair.a)) // pair.words
    return _Compared(changed, size, nan, inf, neginf, unfinite, measured, _largest(largest, half), float(rel))


def _largest(largest: Any, half: Any) -> int | float | Decimal:
    """The largest difference: `2 * half` where a difference of finite floats overflowed."""
    if float(half) > 0:
        return Decimal(float(half)) * 2
    value = np.asarray(largest)
    return int(value) if np.issubdtype(value.dtype, np.integer) else float(value)


def _host_compare(
    pairs: list[_Pair], fetched: list[tuple[Any, Any]], rtol: float, atol: float
) -> list[_Compared]:
    """The pairs compared with NumPy, those of one pair of dtypes together, flattened end to end
    and reduced per leaf (`reduceat`)."""
    results: list[_Compared | None] = [None] * len(pairs)
    groups: dict[Any, list[int]] = {}
    for i, (pair, (a, b)) in enumerate(zip(pairs, fetched, strict=True)):
        a, b = np.asarray(a), np.asarray(b)
        if a.size == 0:
            results[i] = _Compared(0, 0, 0, 0, 0, 0, 0, 0, 0.0)
        elif not pair.numeric:
            count = int(np.count_nonzero(~_same_objects(a.reshape(-1), b.reshape(-1))))
            results[i] = _Compared(count, a.size, 0, 0, 0, 0, 0, 0, 0.0)
        else:
            groups.setdefault((a.dtype, b.dtype, pair.words), []).append(i)
    for (_, _, words), members in groups.items():
        flat_a = np.concatenate([np.asarray(fetched[i][0]).reshape(-1) for i in members])
        flat_b = np.concatenate([np.asarray(fetched[i][1]).reshape(-1) for i in members])
        with np.errstate(all="ignore"):
            parts = _elementwise(np, flat_a, flat_b, rtol, atol, rtol > 0 or atol > 0, np.dtype(np.float64))
            counts, gap, half, rel = _units(np, parts, words)
        units = [int(np.size(fetched[i][0])) // words for i in members]
        starts = np.cumsum([0, *units[:-1]])
        per_leaf = np.stack([np.add.reduceat(mask, starts, dtype=np.int64) for mask in counts], axis=-1)
        largest, halves, rels = (np.maximum.reduceat(x, starts) for x in (gap, half, rel))
        for row, i in enumerate(members):
            results[i] = _compared(pairs[i], per_leaf[row], largest[row], halves[row], rels[row])
    return results  # type: ignore[return-value]


def _same_objects(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element by element `==` of text, dates or objects; NaT equals NaT, and NaN NaN."""
    if a.dtype.kind in "mM":
        return (a == b) | (np.isnat(a) & np.isnat(b))
    if a.dtype.kind == "O" or b.dtype.kind == "O":
        return np.array(
            [_equal_objects(x, y) for x, y in zip(a.tolist(), b.tolist(), strict=True)], dtype=bool
        )
    try:
        return np.asarray(a == b, dtype=bool).reshape(a.shape)
    except Exception:
        return np.array(
            [_equal_objects(x, y) for x, y in zip(a.tolist(), b.tolist(), strict=True)], dtype=bool
        )


def _wide(xp: Any) -> Any:
    """The float that holds integers for tolerances and reporting: float64 (float32 on a device
    without x64)."""
    return np.dtype(np.float64) if xp is np else jax.dtypes.canonicalize_dtype(np.float64)


def _units(xp: Any, parts: tuple[Any, ...], words: int) -> tuple[list[Any], Any, Any, Any]:
    """The per-element results, per element of `words` values (a PRNG key: changed when any of its
    words is; its data has no magnitude)."""
    if words == 1:
        return list(parts[:_COUNTS]), *parts[_COUNTS:]
    changed = parts[0].reshape(-1, words).any(1)
    nothing = xp.zeros_like(changed)
    zeros = xp.zeros(changed.shape, xp.float32)
    return [changed, *[nothing] * (_COUNTS - 1)], zeros, zeros, zeros


def _bitcast(xp: Any, x: Any, dtype: Any) -> Any:
    return x.view(dtype) if xp is np else jax.lax.bitcast_convert_type(x, dtype)


def _float_type(xp: Any, *dtypes: Any) -> Any:
    """A float (complex if one is) that holds every value of these inexact dtypes exactly."""
    complex_ = any(jnp.issubdtype(d, jnp.complexfloating) for d in dtypes)
    width = max(np.dtype(d).itemsize // (2 if jnp.issubdtype(d, jnp.complexfloating) else 1) for d in dtypes)
    real = np.longdouble if width > 8 else np.float64 if width == 8 else np.float32
    found = np.result_type(real, np.complex64) if complex_ else np.dtype(real)
    return found if xp is np else jax.dtypes.canonicalize_dtype(found)


def _elementwise(xp: Any, a: Any, b: Any, rtol: Any, atol: Any, tolerant: bool, wide: Any) -> tuple[Any, ...]:
    """Per element of the flat arrays `a` and `b` (NumPy or jax.numpy, by `xp`): whether it
    changed (not equal as exact values, NaN equal to NaN, and, if `tolerant`, beyond
    `atol + rtol * |b|`); of those, whether it became NaN, Inf, -Inf, whether it was NaN or Inf,
    whether both are finite; the difference of those (exact for integers of one signedness), the
    half difference where that of two finite floats overflows, and the relative difference."""
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if b.dtype == np.bool_:
        b = b.astype(np.uint8)
    inexact_a, inexact_b = (bool(jnp.issubdtype(x.dtype, jnp.inexact)) for x in (a, b))
    if inexact_a and inexact_b:
        return _floats(xp, a, b, rtol, atol, tolerant)
    if not inexact_a and not inexact_b:
        return _integers(xp, a, b, rtol, atol, tolerant, wide)
    return _integer_and_float(xp, a, b, rtol, atol, tolerant, wide)


def _floats(xp: Any, a: Any, b: Any, rtol: Any, atol: Any, tolerant: bool) -> tuple[Any, ...]:
    common = _float_type(xp, a.dtype, b.dtype)
    a, b = a.astype(common), b.astype(common)
    nan_a, nan_b = xp.isnan(a), xp.isnan(b)
    finite_a, finite_b = xp.isfinite(a), xp.isfinite(b)
    finite = finite_a & finite_b
    gap, scale = xp.abs(a - b), xp.abs(b)
    changed = ~((a == b) | (nan_a & nan_b))
    if tolerant:
        changed = changed & ~(gap <= atol + rtol * scale)
    overflow = finite & xp.isinf(gap)
    measured = changed & finite
    if xp.iscomplexobj(b):
        inf, neginf = changed & ~finite_b & ~nan_b, xp.zeros_like(changed)
    else:
        inf, neginf = changed & (b == xp.inf), changed & (b == -xp.inf)
    half = xp.where(measured & overflow, xp.abs(a * 0.5 - b * 0.5), 0)
    gap = xp.where(measured & ~overflow, gap, 0)
    rel = xp.where(scale > 0, gap / xp.where(scale > 0, scale, 1), 0)
    return changed, changed & nan_b, inf, neginf, changed & ~finite_a & finite_b, measured, gap, half, rel


def _integers(xp: Any, a: Any, b: Any, rtol: Any, atol: Any, tolerant: bool, wide: Any) -> tuple[Any, ...]:
    signed_a, signed_b = (bool(jnp.issubdtype(x.dtype, jnp.signedinteger)) for x in (a, b))
    if signed_a != signed_b:
        signed, unsigned = (a, b) if signed_a else (b, a)
        if signed.dtype.itemsize > unsigned.dtype.itemsize:  # the signed type holds every value
            a, b = a.astype(signed.dtype), b.astype(signed.dtype)
            signed_a = signed_b = True
    size = max(a.dtype.itemsize, b.dtype.itemsize)
    unsigned_type = np.dtype(f"uint{8 * size}")
    if signed_a == signed_b:
        common = np.promote_types(a.dtype, b.dtype)
        a, b = a.astype(common), b.astype(common)
        changed = a != b
        gap = _bitcast(xp, xp.maximum(a, b) - xp.minimum(a, b), unsigned_type)  # wraps into the exact gap
        gap_float = gap.astype(wide)
    else:
        negative = signed < 0
        positive = xp.where(negative, 0, signed).astype(unsigned_type)
        other = unsigned.astype(unsigned_type)
        changed = negative | (positive != other)
        gap_float = xp.where(
            negative,
            other.astype(wide) - signed.astype(wide),
            (xp.maximum(positive, other) - xp.minimum(positive, other)).astype(wide),
        )
        gap = gap_float
    scale = xp.abs(b.astype(wide))
    if tolerant:
        changed = changed & ~(gap_float <= atol + rtol * scale)
    nothing = xp.zeros_like(changed)
    gap = xp.where(changed, gap, 0)
    rel = xp.where(changed & (scale > 0), gap_float / xp.where(scale > 0, scale, 1), 0)
    return changed, nothing, nothing, nothing, nothing, changed, gap, xp.zeros(changed.shape, wide), rel


def _integer_and_float(
    xp: Any, a: Any, b: Any, rtol: Any, atol: Any, tolerant: bool, wide: Any
) -> tuple[Any, ...]:
    float_is_b = bool(jnp.issubdtype(b.dtype, jnp.inexact))
    integer, number = (a, b) if float_is_b else (b, a)
    real = xp.real(number).astype(_float_type(xp, xp.real(number).dtype, np.float32))
    info = np.iinfo(integer.dtype)
    whole = xp.isfinite(real) & (xp.floor(real) == real)
    if xp.iscomplexobj(number):
        whole = whole & (xp.imag(number) == 0)
    fits = whole & (real >= float(info.min)) & (real < float(info.max) + 1)  # bounds: powers of two
    changed = ~(fits & (xp.where(fits, real, 0).astype(integer.dtype) == integer))
    finite = xp.isfinite(number)
    wide_number = number.astype(np.result_type(wide, np.complex64) if xp.iscomplexobj(number) else wide)
    gap = xp.abs(integer.astype(wide) - wide_number)
    scale = xp.abs(wide_number if float_is_b else integer.astype(wide))
    if tolerant:
        changed = changed & ~(gap <= atol + rtol * scale)
    measured = changed & finite
    nothing = xp.zeros_like(changed)
    if float_is_b:
        nan = changed & xp.isnan(number)
        if xp.iscomplexobj(number):
            inf, neginf = changed & ~finite & ~xp.isnan(number), nothing
        else:
            inf, neginf = changed & (number == xp.inf), changed & (number == -xp.inf)
        unfinite = nothing
    else:
        nan, inf, neginf, unfinite = nothing, nothing, nothing, changed & ~finite
    gap = xp.where(measured, xp.where(whole, xp.maximum(gap, 1), gap), 0)  # unequal integers: 1 apart
    rel = xp.where(scale > 0, gap / xp.where(scale > 0, scale, 1), 0)
    return changed, nan, inf, neginf, unfinite, measured, gap, xp.zeros(changed.shape, gap.dtype), rel
