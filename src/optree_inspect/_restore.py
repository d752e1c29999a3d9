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
from jax.tree_util import DictKey, GetAttrKey, SequenceKey, keystr
from jaxtyping import PyTree

from ._errors import InvalidArgumentError, LeafTypeError, RestoreMismatchError, bounded, listing, raised_here
from ._keys import KeyEntry, KeyPath
from ._registry import children_with_keys
from ._resolve import Match


def _name(key: KeyEntry) -> Any:
    if isinstance(key, GetAttrKey):
        return key.name
    if isinstance(key, DictKey):
        return key.key
    if isinstance(key, SequenceKey):
        return key.idx
    return str(key)


def _child(raw: Any, key: KeyEntry) -> tuple[bool, Any]:
    """The child of the raw node `raw` that the live key `key` names: a field by name, an item
    by position."""
    name = _name(key)
    if isinstance(raw, dict):
        return (True, raw[name]) if name in raw else (False, None)
    if isinstance(raw, list | tuple) and isinstance(name, int):
        return (True, raw[name]) if 0 <= name < len(raw) else (False, None)
    for child_key, child in children_with_keys(raw) or ():
        if _name(child_key) == name:
            return True, child
    return False, None


@raised_here
def restore_like(raw: PyTree, /, like: PyTree, *, missing: Literal["error", "init"] = "error") -> Any:
    """`raw` (a checkpoint restored without its types: dicts, lists, `None`) in the types of
    `like` (a live state, `tx.init(params)`, or `jax.eval_shape` of it), leaf by leaf, each cast
    to `like`'s dtype (same kind only, as `set` casts) and placed with its sharding.

    Where the two differ (a transform added to the optimizer, a moment missing, a part only the
    checkpoint has, another shape) a `RestoreMismatchError` (a `ValueError`) names each
    difference; a float value for an integer leaf is a `LeafTypeError`. With `missing="init"`,
    what only `like` has keeps `like`'s values and the call returns `(state, kept)`, `kept` the
    `Match`es taken from `like`; a part only the checkpoint has is still an error.
    """
    if missing not in ("error", "init"):
        raise InvalidArgumentError(f"missing= takes 'error' or 'init', got {bounded(repr(missing), 60)}.")
    pairs, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves: list[Any] = []
    kept: list[Match] = []
    problems: list[str] = []
    used: set[int] = set()
    for path, old in pairs:
        found, value = True, raw
        for key in path:
            found, value = _child(value, key)
            if not found:
                break
        if not found:
            if missing == "init":
                kept.append(Match(path, old))
                leaves.append(old)
            else:
                problems.append(f"{keystr(path)}: only in like")
                leaves.append(old)
            continue
        used.add(id(value))
        leaves.append(_cast(path, old, value, problems))
    for path, value in jax.tree_util.tree_flatten_with_path(raw)[0]:
        if id(value) not in used:
            problems.append(f"{keystr(path)}: only in the checkpoint")
    if problems:
        raise RestoreMismatchError(
            f"The checkpoint does not fit `like` ({len(problems):,} difference"
            f"{'s' * (len(problems) != 1)}):\n{listing(problems)}"
        )
    state = jax.tree_util.tree_unflatten(treedef, leaves)
    return (state, kept) if missing == "init" else state


def _cast(path: KeyPath, old: Any, value: Any, problems: list[str]) -> Any:
    """`value` as a leaf of `old`'s dtype, shape and placement."""
    shape, dtype = np.shape(old), getattr(old, "dtype", None)
    if dtype is None:  # a Python scalar or an object: taken as saved
        return value.item() if isinstance(value, np.ndarray | np.generic) and np.ndim(value) == 0 else value
    if np.shape(value) != shape:
        problems.append(f"{keystr(path)}: shape {np.shape(value)} in the checkpoint, {shape} in like")
        return old
    source = getattr(value, "dtype", np.asarray(value).dtype)
    if jnp.issubdtype(source, jnp.inexact) and not jnp.issubdtype(dtype, jnp.inexact):
        raise LeafTypeError(f"{keystr(path)}: a {source} value in the checkpoint for a {dtype} leaf.")
    sharding = getattr(old, "sharding", None)
    array = jnp.asarray(value, dtype=dtype)
    if sharding is not None and hasattr(sharding, "device_set"):
        array = jax.device_put(array, sharding)
    if isinstance(old, np.ndarray | np.generic):
        return np.asarray(array)
    return array
