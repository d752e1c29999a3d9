"""`restore_like`: a checkpoint restored without its types put back into the types of a live state
(README: Checkpoints from the shell).

>>> import jax.numpy as jnp, optax, optree_inspect as oi
>>> like = optax.adam(1e-3).init({"w": jnp.zeros(2)})
>>> raw = [{"count": jnp.int32(3), "mu": {"w": jnp.ones(2)}, "nu": {"w": jnp.ones(2)}}, None]
>>> type(oi.restore_like(raw, like)[0]).__name__
'ScaleByAdamState'
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey
from jaxtyping import PyTree

from ._compat import is_nnx_variable_type, weakly_typed_like
from ._edit import coerce_leaf
from ._errors import InvalidArgumentError, LeafTypeError, RestoreMismatchError, bounded, listing, raised_here
from ._keys import KeyEntry, KeyPath, path_text
from ._registry import children_with_keys
from ._resolve import Match
from ._tree import flatten

_FOUND, _MISSING, _CONFLICT = "found", "missing", "conflict"


@raised_here
def restore_like(raw: PyTree, /, like: PyTree, *, missing: Literal["error", "init"] = "error") -> Any:
    """`raw` (a checkpoint restored without its types: dicts, lists, `None`) in the types of
    `like` (a live state, `tx.init(params)`, or `jax.eval_shape` of it), each leaf cast to
    `like`'s leaf exactly as `set` casts a value (kind, range, dtype, weak type, sharding, NumPy or
    Python scalar kind); neither input is modified.

    Nodes match by field name, dict key or position; a `str` key of `raw` that spells a non-`str`
    key of `like` (orbax saves `{0: ...}` as `{'0': ...}`) matches it unless `like`'s node has
    that `str` key too, and an nnx Variable on one side matches its value on the other.

    The structure first: where the two differ (a part only `like` has, `None` or an empty
    container in the checkpoint for a leaf, a part only the checkpoint has, a subtree against a
    leaf, another shape) a `RestoreMismatchError` names each difference. Then the values:
    abstract checkpoint leaves (`load` without `arrays=True`) for concrete leaves of `like` are a
    `LeafTypeError`, and the first value `set` would refuse raises `set`'s error (`LeafTypeError`,
    `StructureError`) naming its path. Against an abstract `like`, abstract checkpoint leaves give
    `like`'s leaves where the dtype casts: a check of the structure without the arrays.

    With `missing="init"`, what only `like` has keeps `like`'s values and the call returns
    `(state, kept)`, `kept` the `Match`es taken from `like`; other differences are still errors.
    """
    if missing not in ("error", "init"):
        raise InvalidArgumentError(f"missing= takes 'error' or 'init', got {bounded(repr(missing), 60)}.")
    treedef = flatten(like)[1]
    walk = _Walk(raw, like, keep=missing == "init")
    if walk.problems:
        count = len(walk.problems)
        raise RestoreMismatchError(
            f"The checkpoint does not fit `like` ({count:,} difference{'s' * (count != 1)}):\n"
            f"{listing(walk.problems)}"
        )
    _refuse_abstract_values(walk.pairs)
    leaves = walk.leaves
    for position, path, old, value in walk.pairs:
        leaves[position] = _cast(old, value, path)
    state = jax.tree_util.tree_unflatten(treedef, leaves)
    return (state, walk.kept) if missing == "init" else state


class _Walk:
    """`like` walked in flatten order beside `raw`: `like`'s leaves (to be replaced where `raw`
    has a value), the `(position, path, like's leaf, raw's leaf)` pairs to cast, what was kept
    from `like` and each structural difference."""

    def __init__(self, raw: Any, like: Any, keep: bool) -> None:
        self.leaves: list[Any] = []
        self.pairs: list[tuple[int, KeyPath, Any, Any]] = []
        self.kept: list[Match] = []
        self.problems: list[str] = []
        self.used: set[KeyPath] = set()  # raw paths of leaves (or, in a conflict, subtrees) taken
        stack: list[tuple[Any, str, Any, KeyPath, KeyPath]] = [(like, _FOUND, raw, (), ())]
        while stack:
            old, state, value, path, raw_path = stack.pop()
            if state == _FOUND:
                old, value, path, raw_path = _unwrap_variables(old, value, path, raw_path)
                state = self.compare(old, value, path, raw_path)
            children = children_with_keys(old)
            if children is None:
                self.leaf(old, state, value, path, raw_path, keep)
                continue
            by_name = _children_by_name(value) if state == _FOUND else {}
            names = {_name(key) for key, _ in children}
            for key, child in reversed(children):
                found = _raw_child(by_name, _name(key), names) if state == _FOUND else None
                if found is None:
                    stack.append((child, _MISSING if state == _FOUND else state, None, (*path, key), ()))
                else:
                    stack.append((child, _FOUND, found[1], (*path, key), (*raw_path, found[0])))
        self.problems.extend(
            f"{path_text(p)}: only in the checkpoint" for p in _unused_leaves(raw, self.used)
        )

    def compare(self, old: Any, value: Any, path: KeyPath, raw_path: KeyPath) -> str:
        """Whether the raw node `value` is missing, stands for `old`, or conflicts with it."""
        children, raw_children = children_with_keys(old), children_with_keys(value)
        if children is None and (value is None or raw_children == []):
            return _MISSING  # None or an empty container: nothing saved here
        if children is None and raw_children is not None:
            self.problems.append(f"{path_text(path)}: a {_kind(value)} in the checkpoint, a leaf in like")
        elif children is not None and raw_children is None and value is not None and flatten(old)[0]:
            self.problems.append(f"{path_text(path)}: a leaf in the checkpoint, a {_kind(old)} in like")
        else:
            return _FOUND
        self.used.add(raw_path)
        return _CONFLICT

    def leaf(self, old: Any, state: str, value: Any, path: KeyPath, raw_path: KeyPath, keep: bool) -> None:
        self.leaves.append(old)
        if state == _MISSING and keep:
            self.kept.append(Match(path, old))
        elif state == _MISSING:
            self.problems.append(f"{path_text(path)}: only in like")
        elif state == _FOUND:
            self.used.add(raw_path)
            shape, raw_shape = _shape(old), _shape(value)
            if shape is not None and raw_shape is not None and shape != raw_shape:
                self.problems.append(
                    f"{path_text(path)}: shape {raw_shape} in the checkpoint, {shape} in like"
                )
            else:
                self.pairs.append((len(self.leaves) - 1, path, old, value))


def _unwrap_variables(
    old: Any, value: Any, path: KeyPath, raw_path: KeyPath
) -> tuple[Any, Any, KeyPath, KeyPath]:
    """An nnx Variable on one side only stands for its value: the other side is matched with it."""
    old_is_variable, raw_is_variable = is_nnx_variable_type(type(old)), is_nnx_variable_type(type(value))
    if raw_is_variable and not old_is_variable:
        inner = children_with_keys(value) or []  # a leaf before flax 0.11: nothing to unwrap
        if len(inner) == 1:
            [(key, value)] = inner
            raw_path = (*raw_path, key)
    elif old_is_variable and not raw_is_variable and not children_with_keys(value):
        inner = children_with_keys(old) or []
        if len(inner) == 1:
            [(key, old)] = inner
            path = (*path, key)
    return old, value, path, raw_path


def _name(key: KeyEntry) -> Any:
    """What a key names, whatever its kind: a field by name, an item by its key or position."""
    if isinstance(key, GetAttrKey):
        return key.name
    if isinstance(key, DictKey | FlattenedIndexKey):
        return key.key
    if isinstance(key, SequenceKey):
        return key.idx
    return str(key)


def _kind(node: Any) -> str:
    return bounded(type(node).__name__, 60)


def _children_by_name(raw: Any) -> dict[Any, tuple[KeyEntry, Any]]:
    """The children of the raw node `raw`, by what their keys name; none for a leaf."""
    return {_name(key): (key, child) for key, child in children_with_keys(raw) or ()}


def _raw_child(
    raw_children: dict[Any, tuple[KeyEntry, Any]], name: Any, like_names: set[Any]
) -> tuple[KeyEntry, Any] | None:
    """The raw child that `like`'s key `name` names: the same key, or the `str` orbax saved a
    non-`str` key as, when `like`'s node has no such `str` key of its own."""
    try:
        found = raw_children.get(name)
    except TypeError:  # an unhashable key name
        found = None
    if found is None and not isinstance(name, str) and str(name) not in like_names:
        found = raw_children.get(str(name))
    return found


def _unused_leaves(raw: Any, used: set[KeyPath]) -> list[KeyPath]:
    """The paths of `raw`'s leaves that no leaf of `like` took, in flatten order."""
    unused: list[KeyPath] = []
    stack: list[tuple[KeyPath, Any]] = [((), raw)]
    while stack:
        path, node = stack.pop()
        if path in used:
            continue
        children = children_with_keys(node)
        if children is None:
            unused.append(path)
        for key, child in reversed(children or ()):
            stack.append(((*path, key), child))
    return unused


def _shape(leaf: Any) -> tuple[int, ...] | None:
    """The shape of an array, abstract array or Python number; None for any other leaf."""
    if isinstance(leaf, bool | int | float | complex):
        return ()
    shape = getattr(leaf, "shape", None)
    return tuple(shape) if hasattr(leaf, "dtype") and isinstance(shape, tuple | list) else None


def _refuse_abstract_values(pairs: list[tuple[int, KeyPath, Any, Any]]) -> None:
    abstract = [
        path
        for _, path, old, value in pairs
        if isinstance(value, jax.ShapeDtypeStruct) and not isinstance(old, jax.ShapeDtypeStruct)
    ]
    if abstract:
        raise LeafTypeError(
            f"The checkpoint holds abstract leaves (jax.ShapeDtypeStruct, as load(path) gives them) "
            f"where like holds values: {len(abstract):,}, the first at {path_text(abstract[0])}. They "
            "hold no values to restore: load the arrays with load(path, arrays=True)."
        )


def _cast(old: Any, value: Any, path: KeyPath) -> Any:
    """`value` cast to the leaf `old` as `set` casts it; `old` abstract gives an array placed as it
    says, or `old` itself for an abstract `value`."""
    if not isinstance(old, jax.ShapeDtypeStruct):
        return coerce_leaf(old, value, path)
    if jax.dtypes.issubdtype(old.dtype, jax.dtypes.extended):
        if getattr(value, "dtype", None) != old.dtype:
            raise LeafTypeError(
                f"The leaf at {path_text(path)} is a {old.dtype} key; the checkpoint holds "
                f"{bounded(str(getattr(value, 'dtype', type(value).__name__)), 60)}."
            )
        if isinstance(value, jax.ShapeDtypeStruct):
            return old
        array = jnp.asarray(value)
    else:
        zero = np.zeros((), old.dtype)
        if isinstance(value, jax.ShapeDtypeStruct):
            coerce_leaf(zero, np.zeros((), value.dtype), path)  # the dtype rule only: no values to check
            return old
        array = jnp.asarray(coerce_leaf(np.broadcast_to(zero, old.shape), value, path))
        if old.weak_type:
            array = weakly_typed_like(old, array)
    return jax.device_put(array, old.sharding) if hasattr(old.sharding, "device_set") else array
