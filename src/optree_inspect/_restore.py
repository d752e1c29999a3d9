"""`restore_like`: a checkpoint restored without its types put back into the types of a live state
(docs/checkpoints.md).

>>> import jax.numpy as jnp, optax, optree_inspect as oi
>>> like = optax.adam(1e-3).init({"w": jnp.zeros(2)})
>>> raw = [{"count": jnp.int32(3), "mu": {"w": jnp.ones(2)}, "nu": {"w": jnp.ones(2)}}, None]
>>> type(oi.restore_like(raw, like)[0]).__name__
'ScaleByAdamState'
"""

from __future__ import annotations

from typing import Any, Literal

import jax
from jaxtyping import PyTree

from ._cast import cast_leaf, stands_as
from ._errors import InvalidArgumentError, LeafTypeError, RestoreMismatchError, bounded, listing, raised_here
from ._keys import KeyPath, path_text
from ._paths import flatten
from ._resolve import Match
from ._treekit import Children, Matched, OneSided, leaves_with_paths, walk, zip_by_name

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
        leaves[position] = value if stands_as(value, old) else cast_leaf(old, value, path, fill=True)
    state = jax.tree_util.tree_unflatten(treedef, leaves)
    return (state, walk.kept) if missing == "init" else state


class _Walk:
    """`like` zipped by name with `raw`, in `like`'s flatten order: `like`'s leaves (to be replaced
    where `raw` has a value), the `(position, path, like's leaf, raw's leaf)` pairs to cast, what
    was kept from `like` and each structural difference."""

    def __init__(self, raw: Any, like: Any, keep: bool) -> None:
        self.leaves: list[Any] = []
        self.pairs: list[tuple[int, KeyPath, Any, Any]] = []
        self.kept: list[Match] = []
        self.problems: list[str] = []
        self.used: set[KeyPath] = set()  # raw paths of leaves (or, in a conflict, subtrees) taken
        for item in zip_by_name(like, raw, enter=_enter, spelled="b"):
            if isinstance(item, OneSided):
                if item.side == "a":  # only in like; what only the checkpoint has is found below
                    for path, leaf in leaves_with_paths(item.node, item.path):
                        self.leaf(leaf, _MISSING, None, path, (), keep)
            elif not item.entered:
                self.unentered(item, keep)
        self.problems.extend(
            f"{path_text(p)}: only in the checkpoint" for p in _unused_leaves(raw, self.used)
        )

    def unentered(self, item: Matched, keep: bool) -> None:
        """A leaf of `like` with what `raw` holds for it, or a node of `like` that conflicts."""
        old, value, path, raw_path = item.a, item.b, item.path_a, item.path_b
        state = _state(old, value, item.children_a, item.children_b)
        if state == _CONFLICT:
            self.used.add(raw_path)
            if item.children_a is None:
                self.problems.append(f"{path_text(path)}: a {_kind(value)} in the checkpoint, a leaf in like")
            else:
                self.problems.append(f"{path_text(path)}: a leaf in the checkpoint, a {_kind(old)} in like")
            self.leaves.extend(leaf for _, leaf in leaves_with_paths(old))
        else:
            self.leaf(old, state, value, path, raw_path, keep)

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


def _state(old: Any, value: Any, children: Children | None, raw_children: Children | None) -> str:
    """Whether the raw node `value` is missing (None or an empty container: nothing saved there),
    stands for `old`, or conflicts with it."""
    if children is None and (value is None or raw_children == []):
        return _MISSING
    if children is None and raw_children is not None:
        return _CONFLICT
    if children is not None and raw_children is None and value is not None and flatten(old)[0]:
        return _CONFLICT
    return _FOUND


def _enter(old: Any, value: Any, children: Children | None, raw_children: Children | None) -> bool:
    """Match the children of a node of `like` where the raw node stands for it."""
    return children is not None and _state(old, value, children, raw_children) == _FOUND


def _kind(node: Any) -> str:
    return bounded(type(node).__name__, 60)


def _unused_leaves(raw: Any, used: set[KeyPath]) -> list[KeyPath]:
    """The paths of `raw`'s leaves that no leaf of `like` took, in flatten order."""
    return [
        path
        for path, _, children in walk(raw, enter=lambda path, _: path not in used)
        if children is None and path not in used
    ]


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
