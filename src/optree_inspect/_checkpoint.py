"""Checkpoints: `load` a saved tree from its metadata or its arrays (docs/checkpoints.md,
docs/cli.md). orbax-checkpoint is imported only here, on use."""

from __future__ import annotations

import gc
import json
import logging
import os
import pathlib
import re
import sys
import warnings
from numbers import Integral
from typing import Any

import jax
import numpy as np
from jaxtyping import PyTree

from ._errors import (
    CheckpointError,
    InvalidArgumentError,
    bounded,
    raised_here,
    short_repr,
)
from ._placement import SavedStruct

_INSTALL = "pip install 'optree_inspect[orbax]'"
_STEP_NAME = re.compile(r"(?:.+_)?(\d+)")
"""A `CheckpointManager` step directory: the step, zero-padded or not (`step_format_fixed_length`),
after any `step_prefix` and its underscore; unfinished saves (`*.orbax-checkpoint-tmp-*`) never match."""


def _orbax() -> Any:
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise CheckpointError(f"Reading a checkpoint needs orbax-checkpoint: {_INSTALL}") from None
    return ocp


def _absolute(path: str | os.PathLike[str]) -> pathlib.Path:
    """`path` as an absolute path, `~` expanded and symbolic links and `..` resolved (orbax
    refuses relative paths)."""
    if not isinstance(path, str | os.PathLike):
        raise InvalidArgumentError(f"load: path must be a str or os.PathLike, not {short_repr(path)}.")
    try:
        return pathlib.Path(os.path.expanduser(os.fspath(path))).resolve()
    except (OSError, RuntimeError, ValueError) as error:  # a symlink loop, a NUL byte
        raise CheckpointError(f"No checkpoint at {bounded(str(path), 300)}: {_reason(error)}") from None


def _reason(error: BaseException) -> str:
    """An exception's first line, bounded, for a message."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    lines = str(error).strip().splitlines()
    return bounded(lines[0] if lines else type(error).__name__, 300)


def checkpoint_items(path: str | os.PathLike[str], step: int | None = None) -> dict[str, pathlib.Path]:
    """The item directories of the checkpoint at `path`: a `CheckpointManager` directory (its
    latest step, or `step`), a step directory, or one item (`StandardCheckpointer.save(path, x)`)."""
    if step is not None and (not isinstance(step, Integral) or isinstance(step, bool)):
        raise InvalidArgumentError(f"load: step must be an int or None, not {short_repr(step)}.")
    root = _absolute(path)
    shown = bounded(str(path), 300)
    try:
        return _items(root, shown, None if step is None else int(step))
    except OSError as error:  # unreadable: permissions, a file removed meanwhile
        name = error.filename if isinstance(error.filename, str) else str(root)
        raise CheckpointError(f"Cannot read {bounded(name, 300)}: {_reason(error)}.") from None


def _items(root: pathlib.Path, shown: str, step: int | None) -> dict[str, pathlib.Path]:
    if not root.is_dir():
        raise CheckpointError(f"No checkpoint at {shown}: not a directory.")
    if (root / "_METADATA").exists():
        if step is not None:
            raise CheckpointError(f"{shown} is one saved item, with no steps; leave out the step.")
        return {"": root}
    steps: dict[int, list[pathlib.Path]] = {}
    for child in root.iterdir():
        match = _STEP_NAME.fullmatch(child.name)
        if match and child.is_dir() and not (child / "_METADATA").exists():
            steps.setdefault(int(match[1]), []).append(child)
    if steps:
        chosen = max(steps) if step is None else step
        if chosen not in steps:
            raise CheckpointError(f"No step {step} in {shown}; {_listed(sorted(steps))}.")
        if len(steps[chosen]) > 1:
            names = ", ".join(sorted(bounded(p.name, 80) for p in steps[chosen])[:8])
            raise CheckpointError(
                f"Step {chosen} of {shown} is in several directories ({names}); "
                "give the one to read as the path."
            )
        root, shown = steps[chosen][0], bounded(str(steps[chosen][0]), 300)
    elif step is not None:
        raise CheckpointError(f"{shown} holds no steps; leave out the step.")
    items = {child.name: child for child in sorted(root.iterdir()) if (child / "_METADATA").exists()}
    for name in _expected_items(root):
        if name not in items:
            raise CheckpointError(f"Damaged checkpoint at {shown}: its item {name!r} has no _METADATA.")
    if not items:
        raise CheckpointError(f"No orbax checkpoint at {shown}: no item directory (with _METADATA) in it.")
    return items


def _listed(steps: list[int]) -> str:
    if len(steps) <= 12:
        return f"its steps are: {', '.join(map(str, steps))}"
    first, last = ", ".join(map(str, steps[:3])), ", ".join(map(str, steps[-8:]))
    return f"its {len(steps)} steps are: {first}, ..., {last}"


def _expected_items(step_directory: pathlib.Path) -> list[str]:
    """The items that `CheckpointManager` recorded in a step's `_CHECKPOINT_METADATA` as saved by a
    PyTree handler (those with a `_METADATA`); none where it recorded nothing readable."""
    try:
        handlers = json.loads((step_directory / "_CHECKPOINT_METADATA").read_text())["item_handlers"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not isinstance(handlers, dict):
        return []
    pytree = ("PyTreeCheckpointHandler", "StandardCheckpointHandler")
    return [name for name, handler in handlers.items() if str(handler).endswith(pytree)]


@raised_here
def load(
    path: str | os.PathLike[str], /, *, step: int | None = None, arrays: bool = False, scalars: bool = True
) -> PyTree:
    """The tree saved at `path`, as orbax restores it without a target (dicts, lists, `None`), from
    its metadata: `jax.ShapeDtypeStruct` leaves (with their sharding: on this process's devices
    where it has them, else over an `AbstractMesh` of the saved mesh's shape), except scalars
    (hyperparameters, counters), which are read as NumPy values. With `scalars=False` nothing is
    read and scalars are `ShapeDtypeStruct`s too, with their sharding (what `memory` needs to
    count every byte where it lives); with `arrays=True` every array is read (as NumPy arrays). A
    checkpoint of several items gives a dict of them by name. Every verb works on the result;
    `CheckpointError` where `path` is no checkpoint or a damaged one, `step` does not exist, or
    orbax-checkpoint is not installed; `InvalidArgumentError` for `arrays=True` with `scalars=False`.
    """
    if arrays and not scalars:
        raise InvalidArgumentError(
            "load: arrays=True reads every array, scalars included; drop scalars=False."
        )
    ocp = _orbax()
    items = checkpoint_items(path, step)
    mode = "arrays" if arrays else "scalars" if scalars else "metadata"
    trees = {name: _load_item(ocp, directory, mode) for name, directory in items.items()}
    return next(iter(trees.values())) if len(trees) == 1 else trees


def _load_item(ocp: Any, directory: pathlib.Path, mode: str) -> Any:
    absl = logging.getLogger("absl")  # orbax logs a warning for each item of a step directory
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        expected = _saved_leaves(directory)
        failure = None
        try:
            tree = _read_item(ocp, directory, mode)
        except CheckpointError:
            raise
        except Exception as error:  # orbax's and tensorstore's own errors, OSError included
            failure = _reason(error)
        if failure is not None:
            _collect_quietly()
            raise _damaged(directory, failure)
        if tree is None or len(jax.tree.leaves(tree)) != expected:
            read = len(jax.tree.leaves(tree))
            raise _damaged(directory, f"orbax reads {read} of its {expected} leaves")
        return tree
    finally:
        absl.setLevel(level)


def _collect_quietly() -> None:
    """Collect what a failed orbax read left behind (coroutines that still hold its error), so
    that the interpreter does not print their tracebacks later."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda _: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "coroutine ... was never awaited"
            gc.collect()
    finally:
        sys.unraisablehook = hook


def _damaged(directory: pathlib.Path, reason: str) -> CheckpointError:
    return CheckpointError(f"Damaged checkpoint at {bounded(str(directory), 300)}: {reason.rstrip('.')}.")


def _saved_leaves(directory: pathlib.Path) -> int:
    """How many leaves the item at `directory` holds, from its `_METADATA` (`None` and empty
    containers are no leaves); `CheckpointError` where that file or an OCDBT manifest is missing
    or damaged."""
    try:
        document = json.loads((directory / "_METADATA").read_text())
        entries = document["tree_metadata"].values()
        count = sum(not entry["value_metadata"].get("skip_deserialize", False) for entry in entries)
    except OSError as error:
        raise _damaged(directory, f"its _METADATA cannot be read ({_reason(error)})") from None
    except (ValueError, KeyError, TypeError, AttributeError):  # not JSON, cut short, another schema
        raise _damaged(directory, "its _METADATA is not orbax's tree metadata") from None
    if document.get("use_ocdbt") and not (directory / "manifest.ocdbt").is_file():
        raise _damaged(directory, "its manifest.ocdbt is missing")
    return count


def _read_item(ocp: Any, directory: pathlib.Path, mode: str) -> Any:
    """The item's tree: `mode` "metadata" (no value read), "scalars" (0-d arrays read) or "arrays"."""
    arrays = mode == "arrays"
    if not arrays:
        try:
            return _read_ocdbt_item(directory, scalars=mode == "scalars")
        except Exception:  # another layout or version: orbax's own (slower) reading below
            pass
    checkpointer = ocp.PyTreeCheckpointer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # orbax warns that sharding is read from the checkpoint
        metadata = checkpointer.metadata(directory)
        tree = getattr(metadata, "item_metadata", metadata)
        tree = getattr(tree, "tree", tree)
        is_meta = lambda node: hasattr(node, "shape") and hasattr(node, "dtype")  # noqa: E731
        structs = jax.tree.map(_struct, tree, is_leaf=is_meta)
        if arrays:
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), structs)
            return checkpointer.restore(
                directory, args=ocp.args.PyTreeRestore(item=structs, restore_args=restore_args)
            )
        if mode == "metadata":
            return structs
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


def _read_ocdbt_item(directory: pathlib.Path, scalars: bool) -> Any:
    """The tree of an item saved in orbax's default layout (an OCDBT database of zarr arrays),
    read from its files: the tree from `_METADATA`, each array's shape and dtype from its
    `.zarray`, shardings from `_sharding`, and with `scalars` the scalars' values; nothing else.

    Written here because orbax's `metadata()` opens every array on its own (12 s for 20,000
    leaves, against under 1 s here); any other layout raises, and `_read_item` falls back to it.
    """
    import base64

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
    openings: list[tuple[list[Any], Any]] = []
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
                    saved = sharding_metadata.from_serialized_string(serialized)
                except Exception:  # another version's format: no placement
                    saved = None
                jax_shardings[serialized] = (None, None) if saved is None else _saved_sharding(saved)
            leaf = _leaf_struct(
                shape, dtype, (None, None) if serialized is None else jax_shardings[serialized]
            )
            if shape == () and scalars:
                spec = {"driver": "zarr", "kvstore": {**base, "path": f"{name}/"}}
                openings.append((keys, ts.open(spec, open=True, read=True)))
        root = _insert(root, keys, leaf)
    for keys, opening in openings:
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
    saved = getattr(metadata, "sharding", None)
    placed = (None, None) if saved is None else _saved_sharding(saved)
    return _leaf_struct(tuple(metadata.shape), metadata.dtype, placed)


def _saved_sharding(saved: Any) -> tuple[jax.sharding.Sharding | None, tuple[int, ...] | None]:
    """The sharding orbax recorded for an array: on this process's devices where it has them;
    else, from the mesh's shape, axis names and spec alone, over an `AbstractMesh`, with the saved
    devices' ids in mesh order (a single device this process lacks is a one-device mesh), so that
    `memory` and `describe` show the placement of a checkpoint saved on other devices."""
    try:
        return saved.to_jax_sharding(), None
    except Exception:  # saved on devices this process does not have
        pass
    shape, names = getattr(saved, "shape", None), getattr(saved, "axis_names", None)
    spec = getattr(saved, "partition_spec", None)
    try:
        if shape is not None and names is not None and spec is not None:
            axes = [tuple(axis) if isinstance(axis, list | tuple) else axis for axis in spec]
            mesh = jax.sharding.AbstractMesh(tuple(int(n) for n in shape), tuple(names))
            rows = getattr(getattr(saved, "device_mesh", None), "mesh", None)
            ids = (
                tuple(int(d.id) for d in np.asarray(rows, dtype=object).ravel()) if rows is not None else None
            )
            if ids is not None and len(ids) != int(np.prod(shape)):
                ids = None
            return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*axes)), ids
        device = getattr(saved, "device_str", None)
        if device is not None:
            number = re.search(r"\d+", str(device))
            mesh = jax.sharding.AbstractMesh((1,), ("device",))
            single = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            return single, (int(number[0]),) if number else None
    except Exception:  # a mesh or spec this JAX cannot express
        return None, None
    return None, None


def _leaf_struct(
    shape: Any, dtype: Any, placed: tuple[jax.sharding.Sharding | None, tuple[int, ...] | None]
) -> jax.ShapeDtypeStruct:
    """A leaf of the metadata: a `ShapeDtypeStruct` with its saved sharding (`_saved_sharding`'s
    result), a `SavedStruct` where the sharding's devices are not this process's."""
    sharding, ids = placed
    if ids is not None:
        return SavedStruct(shape, dtype, sharding=sharding, device_ids=ids)
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
