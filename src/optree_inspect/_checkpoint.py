"""Checkpoints: `load` a saved tree from its metadata, and `restore_like` a raw restore into the
types of a live state (README: Checkpoints). orbax-checkpoint is imported only here, on use.

>>> import jax.numpy as jnp, optax, optree_inspect as oi
>>> like = optax.adam(1e-3).init({"w": jnp.zeros(2)})
>>> raw = [{"count": jnp.int32(3), "mu": {"w": jnp.ones(2)}, "nu": {"w": jnp.ones(2)}}, None]
>>> type(oi.restore_like(raw, like)[0]).__name__
'ScaleByAdamState'
"""

from __future__ import annotations

import logging
import pathlib
import warnings
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import DictKey, GetAttrKey, SequenceKey, keystr
from jaxtyping import PyTree

from ._errors import (
    CheckpointError,
    InvalidArgumentError,
    LeafTypeError,
    RestoreMismatchError,
    bounded,
    listing,
    raised_here,
)
from ._keys import KeyEntry, KeyPath
from ._registry import children_with_keys
from ._resolve import Match

_INSTALL = "pip install 'optree_inspect[orbax]'"


def _orbax() -> Any:
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise CheckpointError(f"Reading a checkpoint needs orbax-checkpoint: {_INSTALL}") from None
    return ocp


def checkpoint_items(path: str | pathlib.Path, step: int | None = None) -> dict[str, pathlib.Path]:
    """The item directories of the checkpoint at `path`: a `CheckpointManager` directory (its
    latest step, or `step`), a step directory, or one item (`StandardCheckpointer.save(path, x)`)."""
    root = pathlib.Path(path)
    if not root.is_dir():
        raise CheckpointError(f"No checkpoint at {bounded(str(root), 300)}: not a directory.")
    steps = sorted(int(child.name) for child in root.iterdir() if child.is_dir() and child.name.isdigit())
    if (root / "_METADATA").exists():
        if step is not None:
            raise CheckpointError(
                f"{bounded(str(root), 300)} is one saved item, with no steps; leave out step=."
            )
        return {"": root}
    if steps:
        chosen = steps[-1] if step is None else step
        if chosen not in steps:
            shown = ", ".join(map(str, steps[-12:]))
            raise CheckpointError(f"No step {step} in {bounded(str(root), 300)}; its steps are: {shown}.")
        root = root / str(chosen)
    elif step is not None:
        raise CheckpointError(f"{bounded(str(root), 300)} holds no steps; leave out step=.")
    items = {child.name: child for child in sorted(root.iterdir()) if (child / "_METADATA").exists()}
    if not items:
        raise CheckpointError(
            f"No orbax checkpoint at {bounded(str(root), 300)}: no item directory (with _METADATA) in it."
        )
    return items


@raised_here
def load(path: str | pathlib.Path, /, *, step: int | None = None, arrays: bool = False) -> PyTree:
    """The tree saved at `path`, as orbax restores it without a target (dicts, lists, `None`), from
    its metadata: `jax.ShapeDtypeStruct` leaves (with their sharding where it can be rebuilt here),
    except scalars (hyperparameters, counters), which are read. Nothing else is read unless
    `arrays=True`, which restores every array (as NumPy arrays). A checkpoint of several items
    gives a dict of them by name. Every verb works on the result; `CheckpointError` where `path`
    is no checkpoint, `step` does not exist, or orbax-checkpoint is not installed.
    """
    ocp = _orbax()
    items = checkpoint_items(path, step)
    trees = {name: _load_item(ocp, directory, arrays) for name, directory in items.items()}
    return next(iter(trees.values())) if len(trees) == 1 else trees


def _load_item(ocp: Any, directory: pathlib.Path, arrays: bool) -> Any:
    absl = logging.getLogger("absl")  # orbax logs a warning for each item of a step directory
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        return _read_item(ocp, directory, arrays)
    finally:
        absl.setLevel(level)


def _read_item(ocp: Any, directory: pathlib.Path, arrays: bool) -> Any:
    if not arrays:
        try:
            return _read_ocdbt_item(directory)
        except Exception:  # another layout or version: orbax's own (slower) reading below
            pass
    checkpointer = ocp.PyTreeCheckpointer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # orbax warns that sharding is read from the checkpoint
        try:
            metadata = checkpointer.metadata(directory)
        except Exception as error:
            raise CheckpointError(
                f"orbax cannot read the metadata at {bounded(str(directory), 300)}: "
                f"{bounded(str(error), 300)}"
            ) from None
        tree = getattr(metadata, "item_metadata", metadata)
        tree = getattr(tree, "tree", tree)
        is_meta = lambda node: hasattr(node, "shape") and hasattr(node, "dtype")  # noqa: E731
        structs = jax.tree.map(_struct, tree, is_leaf=is_meta)
        if arrays:
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), structs)
            return checkpointer.restore(
                directory, args=ocp.args.PyTreeRestore(item=structs, restore_args=restore_args)
            )
        scalars = jax.tree.map(lambda s: s if s.shape == () else ocp.PLACEHOLDER, structs)
        if not any(leaf is not ocp.PLACEHOLDER for leaf in jax.tree.leaves(scalars)):
            return structs
        is_placeholder = lambda node: node is ocp.PLACEHOLDER  # noqa: E731
        restore_args = jax.tree.map(
            lambda s: None if s is ocp.PLACEHOLDER else ocp.RestoreArgs(restore_type=np.ndarray),
            scalars,
            is_leaf=is_placeholder,
        )
        read = checkpointer.restore(
            directory, args=ocp.args.PyTreeRestore(item=scalars, restore_args=restore_args)
        )
    return jax.tree.map(lambda struct, value: struct if value is ocp.PLACEHOLDER else value, structs, read)


def _read_ocdbt_item(directory: pathlib.Path) -> Any:
    """The tree of an item saved in orbax's default layout (an OCDBT database of zarr arrays),
    read from its files: the tree from `_METADATA`, each array's shape and dtype from its
    `.zarray`, shardings from `_sharding`, and the scalars' values; nothing else.

    Written here because orbax's `metadata()` opens every array on its own (12 s for 20,000
    leaves, against under 1 s here); any other layout raises, and `_read_item` falls back to it.
    """
    import base64
    import json

    import tensorstore as ts
    from orbax.checkpoint._src.metadata import sharding as sharding_metadata  # not public

    tree_metadata = json.loads((directory / "_METADATA").read_text())["tree_metadata"]
    if not (directory / "manifest.ocdbt").exists():
        raise ValueError("not an OCDBT checkpoint")
    base = {"driver": "ocdbt", "base": directory.resolve().as_uri()}
    store = ts.KvStore.open(base).result()
    shardings_file = directory / "_sharding"
    shardings = json.loads(shardings_file.read_text()) if shardings_file.exists() else {}
    entries = []
    for entry in tree_metadata.values():
        keys = [(k["key"], k["key_type"]) for k in entry["key_metadata"]]
        value = entry["value_metadata"]
        name = ".".join(str(key) for key, _ in keys)
        pending = None if value.get("skip_deserialize") else store.read(f"{name}/.zarray")
        entries.append((keys, value, name, pending))
    root: Any = None
    scalars: list[tuple[list[Any], Any]] = []
    # most leaves share their `.zarray` text and their sharding: each is parsed once
    arrays: dict[bytes, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    jax_shardings: dict[str, Any] = {}
    for keys, value, name, pending in entries:
        if pending is None:
            leaf: Any = {"Dict": {}, "List": [], "Tuple": []}.get(value["value_type"])
        else:
            text = pending.result().value
            if text not in arrays:
                array = json.loads(text)
                arrays[text] = (tuple(array["shape"]), np.dtype(array["dtype"]))
            shape, dtype = arrays[text]
            serialized = shardings.get(base64.b64encode(name.encode()).decode())
            if serialized is not None and serialized not in jax_shardings:
                try:
                    jax_shardings[serialized] = sharding_metadata.from_serialized_string(
                        serialized
                    ).to_jax_sharding()
                except Exception:  # saved on devices this process does not have
                    jax_shardings[serialized] = None
            sharding = None if serialized is None else jax_shardings[serialized]
            leaf = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
            if shape == ():
                spec = {"driver": "zarr", "kvstore": {**base, "path": f"{name}/"}}
                scalars.append((keys, ts.open(spec, open=True, read=True)))
        root = _insert(root, keys, leaf)
    for keys, opening in scalars:
        root = _insert(root, keys, np.asarray(opening.result().read().result()))
    return root


def _insert(root: Any, keys: list[tuple[Any, int]], leaf: Any) -> Any:
    """`root` with `leaf` at `keys` (orbax's key types: 1 a sequence index, 2 a dict key),
    creating the lists and dicts on the way, as orbax restores them without a target."""
    if not keys:
        return leaf
    (key, kind), rest = keys[0], keys[1:]
    if kind == 1:
        index = int(key)
        root = [] if root is None else root
        while len(root) <= index:
            root.append(None)
        root[index] = _insert(root[index], rest, leaf)
        return root
    root = {} if root is None else root
    root[key] = _insert(root.get(key), rest, leaf)
    return root


def _struct(metadata: Any) -> jax.ShapeDtypeStruct:
    sharding = None
    to_jax = getattr(getattr(metadata, "sharding", None), "to_jax_sharding", None)
    if to_jax is not None:
        try:
            sharding = to_jax()
        except Exception:  # saved on devices this process does not have
            sharding = None
    return jax.ShapeDtypeStruct(tuple(metadata.shape), metadata.dtype, sharding=sharding)


# restore_like ----------------------------------------------------------------------------------


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
