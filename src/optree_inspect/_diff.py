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
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import DictKey, GetAttrKey, SequenceKey, keystr
from jaxtyping import PyTree

from ._compat import is_nnx_variable_type, variable_value
from ._describe import _leaf_summary, _sharding_text
from ._errors import InvalidArgumentError, bounded, raised_here
from ._keys import KeyEntry, KeyPath
from ._naming import shortest_query
from ._optax.fields import INSIDE, is_state_type, restored_state_name
from ._registry import children_with_keys
from ._tree import StructureIndex, structure_index

KINDS = ("added", "removed", "type", "shape", "dtype", "sharding", "value")
_FOLD = 16
"""A params-shaped region (no optax state inside) of more leaves than this is one row."""
_SHOWN = 120
_CHUNK = 256


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


class _Pending(NamedTuple):
    """Leaf pairs whose values are compared on the device, for one row."""

    path: KeyPath
    pairs: list[tuple[Any, Any]]
    folded: bool


@raised_here
def diff(a: PyTree, b: PyTree, /, *, rtol: float = 0.0, atol: float = 0.0) -> Diff:
    """What differs between `a` and `b`: rows for nodes only in one, changed types, shapes, dtypes
    (weak types included), shardings and values (elements beyond `atol + rtol * |b|`; NaN equals
    NaN in the same place), in tree order. Large params-shaped regions that changed are one row.

    ```python
    >>> import jax.numpy as jnp, optree_inspect as oi
    >>> [row.kind for row in oi.diff((jnp.zeros(2),), [jnp.zeros(2)])]
    ['type']

    ```
    """
    for name, tolerance in (("rtol", rtol), ("atol", atol)):
        if not isinstance(tolerance, int | float) or isinstance(tolerance, bool) or not tolerance >= 0:
            raise InvalidArgumentError(
                f"{name}= takes a number at least 0, got {bounded(repr(tolerance), 60)}."
            )
    rows: list[Any] = []  # (path, side, kind, before, after, what), or where a value row will be
    pending: list[_Pending] = []
    _compare(a, b, (), rows, pending, True)
    values = _value_rows(pending, float(rtol), float(atol))
    index_a, index_b = _index(a), _index(b)
    result: list[DiffRow] = []
    for entry in rows:  # in tree order: each container's rows before its children's
        found = values[entry] if isinstance(entry, int) else entry
        if found is None:
            continue
        path, side, kind, before, after, what = found
        query = _query(index_b if side == "b" else index_a, path)
        where = keystr(path) or "<root>"
        result.append(DiffRow(path, query, kind, before, after, f"{where}: {kind}: {what}"))
    return Diff(result)


def _index(tree: Any) -> StructureIndex | None:
    try:
        return structure_index(tree)
    except Exception:  # a tree JAX cannot flatten has no queries; its rows keep their keystrs
        return None


def _query(index: StructureIndex | None, path: KeyPath) -> str:
    node = index.number_of(path) if index is not None else None
    return keystr(path) if node is None else (shortest_query(index, node) if node else "")  # type: ignore[arg-type]


def _name(key: KeyEntry) -> Any:
    """What matches children across forms: a field name (attribute or str key), or an index."""
    if isinstance(key, GetAttrKey):
        return ("name", key.name)
    if isinstance(key, DictKey):
        return ("name", key.key) if type(key.key) is str else ("key", key.key)
    if isinstance(key, SequenceKey):
        return ("index", key.idx)
    return ("other", str(key))


def _type_name(node: Any) -> str:
    return "None" if node is None else type(node).__name__


def _unwrap(node: Any) -> Any:
    return variable_value(node) if is_nnx_variable_type(type(node)) else node


def _compare(a: Any, b: Any, path: KeyPath, rows: list[Any], pending: list[_Pending], top: bool) -> None:
    pairs_a, pairs_b = children_with_keys(a), children_with_keys(b)
    if pairs_a is None and pairs_b is None:
        _compare_leaves(_unwrap(a), _unwrap(b), path, rows, pending)
        return
    if (pairs_a is None) != (pairs_b is None) or type(a) is not type(b):
        before, after = _describe_node(a, pairs_a), _describe_node(b, pairs_b)
        rows.append((path, "b", "type", before, after, f"{before} -> {after}"))
        if pairs_a is None or pairs_b is None:
            return
    if _foldable(a, b, pairs_a, pairs_b):
        leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
        pairs = list(zip(map(_unwrap, leaves_a), map(_unwrap, leaves_b), strict=True))
        rows.append(len(pending))  # the value row, once compared, stands here
        pending.append(_Pending(path, pairs, True))
        return
    by_name_b = {_name(key): (key, child) for key, child in pairs_b or ()}
    names_a = set()
    for key, child in pairs_a or ():
        name = _name(key)
        names_a.add(name)
        if name in by_name_b:
            key_b, child_b = by_name_b[name]
            _compare(child, child_b, (*path, key_b), rows, pending, False)
        else:
            text = _short(child)
            rows.append(((*path, key), "a", "removed", text, "", f"only in a ({text})"))
    for key, child in pairs_b or ():
        if _name(key) not in names_a:
            text = _short(child)
            rows.append(((*path, key), "b", "added", "", text, f"only in b ({text})"))


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


def _foldable(a: Any, b: Any, pairs_a: Any, pairs_b: Any) -> bool:
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


def _compare_leaves(a: Any, b: Any, path: KeyPath, rows: list[Any], pending: list[_Pending]) -> None:
    shape_a, shape_b = np.shape(a) if _has_shape(a) else None, np.shape(b) if _has_shape(b) else None
    dtype_a, dtype_b = _dtype(a), _dtype(b)
    if dtype_a is None or dtype_b is None:  # not arrays: compare as Python values
        if type(a) is not type(b):
            before, after = _short(a), _short(b)
            rows.append((path, "b", "type", before, after, f"{before} -> {after}"))
        elif not _equal_objects(a, b):
            before, after = _short(a), _short(b)
            rows.append((path, "b", "value", before, after, f"{before} -> {after}"))
        return
    before, after = _short(a), _short(b)
    if shape_a != shape_b:
        rows.append((path, "b", "shape", before, after, f"{before} -> {after}"))
        return
    if dtype_a != dtype_b:
        rows.append((path, "b", "dtype", before, after, f"{before} -> {after}"))
    sharding_a, sharding_b = _sharding(a), _sharding(b)
    if sharding_a is not None and sharding_b is not None and not _same_placement(a, b):
        rows.append((path, "b", "sharding", sharding_a or "one device", sharding_b or "one device",
                     f"{sharding_a or 'one device'} -> {sharding_b or 'one device'}"))  # fmt: skip
    if _concrete(a) and _concrete(b):
        rows.append(len(pending))
        pending.append(_Pending(path, [(a, b)], False))


def _has_shape(leaf: Any) -> bool:
    return hasattr(leaf, "shape") or isinstance(leaf, bool | int | float | complex)


def _dtype(leaf: Any) -> Any:
    """A leaf's dtype, with its weak type (a weak f32 is not an f32), or None if not an array."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        return None
    try:
        weak = getattr(jax.typeof(leaf), "weak_type", False) if not isinstance(leaf, np.ndarray) else False
    except Exception:
        weak = False
    return (str(dtype), weak)


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
    if isinstance(leaf, jax.Array):
        return not leaf.is_deleted() and leaf.is_fully_addressable
    return isinstance(leaf, np.ndarray | np.generic | bool | int | float | complex)


def _equal_objects(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


# Values ----------------------------------------------------------------------------------------


def _value_rows(pending: list[_Pending], rtol: float, atol: float) -> list[Any]:
    """The value rows of `pending`, from one batch of device comparisons and one transfer."""
    flat = [(number, a, b) for number, item in enumerate(pending) for a, b in item.pairs]
    results = _compare_values([(a, b) for _, a, b in flat], rtol, atol)
    per_item: list[list[tuple[Any, Any, int, int, float, float]]] = [[] for _ in pending]
    for (number, a, b), result in zip(flat, results, strict=True):
        per_item[number].append((a, b, *result))
    rows: list[Any] = []
    for item, compared in zip(pending, per_item, strict=True):
        changed = [c for c in compared if c[2]]
        if not changed:
            rows.append(None)
            continue
        largest = max(c[4] for c in changed)
        relative = max(c[5] for c in changed)
        if item.folded:
            what = f"{len(changed):,} of {len(compared):,} leaves changed, max |diff| {_number(largest)}"
            rows.append(
                (item.path, "b", "value", f"{len(compared):,} leaves", f"{len(changed):,} changed", what)
            )
            continue
        a, b, count, size = changed[0][:4]
        before, after = _short(a), _short(b)
        if np.ndim(a) == 0:
            what = f"{before} -> {after}"
        else:
            what = f"{count:,} of {size:,} elements differ, max |diff| {_number(largest)}"
            if relative and np.isfinite(relative):
                what += f", max rel {_number(relative)}"
        rows.append((item.path, "b", "value", before, after, what))
    return rows


def _number(value: float) -> str:
    return f"{value:.3g}"


def _compare_values(
    pairs: list[tuple[Any, Any]], rtol: float, atol: float
) -> list[tuple[int, int, float, float]]:
    """For each pair: (elements that differ, elements, max |a - b|, max |a - b| / |b|) over the
    differing elements. Arrays are stacked by shape, dtype and placement and compared by one
    compiled function per chunk; everything comes back in one `jax.device_get`."""
    groups: dict[Any, list[int]] = {}
    pieces: list[tuple[list[int], Any]] = []
    for position, (a, b) in enumerate(pairs):
        if isinstance(a, jax.Array) and isinstance(b, jax.Array):
            key = (a.shape, a.dtype, b.dtype, a.sharding, b.sharding)
            if a.size >= 1 << 16 or len(a.sharding.device_set) > 1:
                pieces.append(([position], _compare_stack(a.ndim, rtol, atol, (a,), (b,))))
            else:
                groups.setdefault(key, []).append(position)
        else:
            pieces.append(([position], _compare_host(np.asarray(a), np.asarray(b), rtol, atol)))
    for (shape, *_), members in groups.items():
        for start in range(0, len(members), _CHUNK):
            chunk = members[start : start + _CHUNK]
            size = min(_CHUNK, 1 << (len(chunk) - 1).bit_length())
            padded = chunk + [chunk[0]] * (size - len(chunk))
            stack_a = tuple(pairs[i][0] for i in padded)
            stack_b = tuple(pairs[i][1] for i in padded)
            pieces.append((chunk, _compare_stack(len(shape), rtol, atol, stack_a, stack_b)))
    fetched = jax.device_get([result for _, result in pieces])
    out: list[tuple[int, int, float, float]] = [(0, 0, 0.0, 0.0)] * len(pairs)
    for (positions, _), (counts, largest, relative) in zip(pieces, fetched, strict=True):
        for row, position in enumerate(positions):
            size = int(np.size(pairs[position][1]))
            out[position] = (int(counts[row]), size, float(largest[row]), float(relative[row]))
    return out


def _differences(a: Any, b: Any, rtol: Any, atol: Any, axes: tuple[int, ...]) -> tuple[Any, Any, Any]:
    xp = jnp if isinstance(a, jax.Array) or isinstance(b, jax.Array) else np
    if xp.issubdtype(a.dtype, xp.bool_) or xp.issubdtype(b.dtype, xp.bool_):
        a, b = a.astype(xp.int32), b.astype(xp.int32)
    a, b = (
        a.astype(xp.complex64 if xp.iscomplexobj(a) or xp.iscomplexobj(b) else xp.float32),
        b.astype(xp.complex64 if xp.iscomplexobj(a) or xp.iscomplexobj(b) else xp.float32),
    )
    same = (a == b) | (xp.isnan(a) & xp.isnan(b))
    gap = xp.abs(a - b)
    scale = xp.abs(b)
    changed = ~same & ~(gap <= atol + rtol * scale)
    finite_gap = xp.where(changed & xp.isfinite(gap), gap, 0)
    relative = xp.where(changed & xp.isfinite(gap) & (scale > 0), gap / xp.where(scale > 0, scale, 1), 0)
    return changed.sum(axes).astype(xp.int32), finite_gap.max(axes, initial=0), relative.max(axes, initial=0)


@functools.partial(jax.jit, static_argnums=0)
def _compare_stack(
    ndim: int, rtol: Any, atol: Any, stack_a: tuple[Any, ...], stack_b: tuple[Any, ...]
) -> Any:
    return _differences(jnp.stack(stack_a), jnp.stack(stack_b), rtol, atol, tuple(range(1, ndim + 1)))


def _compare_host(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> Any:
    if a.dtype == object or b.dtype == object:
        same = _equal_objects(
            a.item() if a.ndim == 0 else a.tolist(), b.item() if b.ndim == 0 else b.tolist()
        )
        return np.array([0 if same else 1]), np.zeros(1), np.zeros(1)
    counts, largest, relative = _differences(a[None], b[None], rtol, atol, tuple(range(1, a.ndim + 1)))
    return counts, largest, relative
