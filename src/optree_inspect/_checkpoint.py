"""Checkpoints: `load` a saved tree from its metadata or its arrays (README: Checkpoints from the
shell). orbax-checkpoint is imported only here, on use."""

from __future__ import annotations

import logging
import pathlib
import warnings
from typing import Any

import jax
import numpy as np
from jaxtyping import PyTree

from ._errors import (
    CheckpointError,
    bounded,
    raised_here,
)

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
