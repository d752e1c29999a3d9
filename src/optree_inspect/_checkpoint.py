"""Checkpoints: `load` a saved tree from its metadata or its arrays (docs/checkpoints.md,
docs/cli.md). orbax-checkpoint is imported only here, and only where its own reading is needed:
an item in orbax's default layout is read from its files (`_read_ocdbt_item`) through tensorstore
alone, since importing orbax takes as long as that whole reading of 20,000 leaves."""

from __future__ import annotations

import base64
import contextlib
import gc
import importlib.util
import json
import logging
import os
import pathlib
import re
import sys
import warnings
from collections.abc import Iterator
from numbers import Integral
from typing import Any, NamedTuple

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
        raise _no_orbax() from None
    return ocp


def _no_orbax() -> CheckpointError:
    return CheckpointError(f"Reading a checkpoint needs orbax-checkpoint: {_INSTALL}")


def _require_orbax() -> None:
    """`CheckpointError` where orbax-checkpoint is not installed, found without importing it
    (`load` imports it only where its own reading is needed).

    >>> _require_orbax()  # installed with the tests
    """
    if "orbax.checkpoint" in sys.modules:
        found = sys.modules["orbax.checkpoint"] is not None  # None: an import refused
    else:
        spec = importlib.util.find_spec("orbax")  # a top-level name: nothing is imported
        places = [] if spec is None else list(spec.submodule_search_locations or ())
        found = any(os.path.isfile(os.path.join(place, "checkpoint", "__init__.py")) for place in places)
        if spec is not None and not found:  # installed otherwise (a zip, an import hook): ask orbax
            with contextlib.suppress(ImportError):
                found = importlib.util.find_spec("orbax.checkpoint") is not None
    if not found:
        raise _no_orbax()


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
    _require_orbax()
    items = checkpoint_items(path, step)
    mode = "arrays" if arrays else "scalars" if scalars else "metadata"
    trees = {name: _load_item(directory, mode) for name, directory in items.items()}
    return next(iter(trees.values())) if len(trees) == 1 else trees


def _load_item(directory: pathlib.Path, mode: str) -> Any:
    absl = logging.getLogger("absl")  # orbax logs a warning for each item of a step directory
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        document = _saved_metadata(directory)
        expected = _leaf_count(document)
        failure = None
        try:
            tree = _read_item(None, directory, mode, document)
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
    return _leaf_count(_saved_metadata(directory))


def _saved_metadata(directory: pathlib.Path) -> dict[str, Any]:
    """The item's `_METADATA` document, checked as `_saved_leaves` says."""
    try:
        with _collector_paused():
            document: dict[str, Any] = json.loads((directory / "_METADATA").read_text())
        _leaf_count(document)
    except OSError as error:
        raise _damaged(directory, f"its _METADATA cannot be read ({_reason(error)})") from None
    except (ValueError, KeyError, TypeError, AttributeError):  # not JSON, cut short, another schema
        raise _damaged(directory, "its _METADATA is not orbax's tree metadata") from None
    if document.get("use_ocdbt") and not (directory / "manifest.ocdbt").is_file():
        raise _damaged(directory, "its manifest.ocdbt is missing")
    return document


def _leaf_count(document: Any) -> int:
    entries = document["tree_metadata"].values()
    return sum(not entry["value_metadata"].get("skip_deserialize", False) for entry in entries)


def _read_item(ocp: Any, directory: pathlib.Path, mode: str, document: Any = None) -> Any:
    """The item's tree: `mode` "metadata" (no value read), "scalars" (0-d arrays read) or "arrays";
    `ocp` is orbax.checkpoint, or `None` to import it only if its own reading is needed;
    `document` the item's `_METADATA` where it was read already."""
    arrays = mode == "arrays"
    if not arrays:
        try:
            return _read_ocdbt_item(directory, scalars=mode == "scalars", document=document)
        except Exception:  # another layout or version: orbax's own (slower) reading below
            pass
    ocp = _orbax() if ocp is None else ocp
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


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: reading the metadata of 20,000 leaves makes a
    million objects, none in a cycle, and each collection their allocations set off walks them all
    (half the time of the reading)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_ocdbt_item(directory: pathlib.Path, scalars: bool, document: Any = None) -> Any:
    """The tree of an item saved in orbax's default layout (zarr arrays in an OCDBT database),
    read from its files through tensorstore alone: the tree from `_METADATA` (or `document`), each
    array's shape and dtype from its `.zarray`, shardings from `_sharding`, and with `scalars` the
    scalars' values; no other array data.

    Written here because orbax's `metadata()` opens every array on its own (12 s for 20,000
    leaves, against a third of a second here) and importing orbax takes about as long as this
    whole reading; anything it does not recognise raises, and `_read_item` falls back to orbax.
    """
    import tensorstore as ts

    with _collector_paused():
        if document is None:
            document = json.loads((directory / "_METADATA").read_text())
        return _ocdbt_tree(ts, directory, document, scalars)


def _ocdbt_tree(ts: Any, directory: pathlib.Path, document: Any, scalars: bool) -> Any:
    if not (directory / "manifest.ocdbt").exists():
        raise ValueError("not an OCDBT checkpoint")
    database = _Database(ts, directory)
    shardings_file = directory / "_sharding"
    shardings = json.loads(shardings_file.read_text()) if shardings_file.exists() else {}
    entries = [
        ([(k["key"], k["key_type"]) for k in entry["key_metadata"]], entry["value_metadata"])
        for entry in document["tree_metadata"].values()
    ]
    names = [
        None if value.get("skip_deserialize") else ".".join([str(key) for key, _ in keys])
        for keys, value in entries
    ]
    texts = database.values([f"{name}/.zarray" for name in names if name is not None])
    root: Any = None
    wanted: list[tuple[list[tuple[Any, int]], str, dict[str, Any]]] = []
    # most leaves share their `.zarray` text and their sharding: each is parsed once
    arrays: dict[bytes, tuple[tuple[int, ...], np.dtype[Any], dict[str, Any]]] = {}
    placements: dict[Any, tuple[jax.sharding.Sharding | None, tuple[int, ...] | None]] = {None: (None, None)}
    for (keys, value), name in zip(entries, names, strict=True):
        if name is None:
            leaf: Any = {"Dict": {}, "List": [], "Tuple": []}.get(value["value_type"])
        else:
            text = texts[f"{name}/.zarray"]
            if text not in arrays:
                array = json.loads(text)
                arrays[text] = (tuple(array["shape"]), np.dtype(array["dtype"]), array)
            shape, dtype, array = arrays[text]
            serialized = shardings.get(base64.b64encode(name.encode()).decode())
            if serialized not in placements:
                saved = _parsed_sharding(serialized)
                placements[serialized] = (None, None) if saved is None else _saved_sharding(saved)
            leaf = _leaf_struct(shape, dtype, placements[serialized])
            if shape == () and scalars:
                wanted.append((keys, name, array))
        root = _insert(root, keys, leaf)
    for keys, scalar in _scalars(ts, database, directory, wanted):
        root = _insert(root, keys, scalar)
    return root


_WALK_AT_MOST = 8
"""`_Database` walks a database that holds at most this many keys a key wanted (orbax's default
layout holds two an array: its `.zarray` and its one chunk), and reads any other key by key."""


class _Database:
    """An item's OCDBT database (https://google.github.io/tensorstore/kvstore/ocdbt/), its values
    read many at once: by one walk of its B+tree's nodes with tensorstore's `ocdbt.dump` where it
    holds few more keys than are wanted (a value is then a dict look-up, where a read through the
    database descends the tree for each key, 40 µs a key), else key by key."""

    def __init__(self, ts: Any, directory: pathlib.Path) -> None:
        self._ts = ts
        self._files = ts.KvStore.open({"driver": "file", "path": f"{directory}/"}).result()
        manifest = ts.ocdbt.dump(self._files).result()
        self._root = max(manifest["versions"], key=lambda version: version["generation_number"])["root"]
        self._walked: dict[bytes, Any] | None = None
        self._store: Any = None

    def values(self, keys: list[str]) -> dict[str, bytes]:
        """The values at `keys`; a key the database lacks is left out."""
        if not keys:
            return {}
        if self._walked is None and self._root["statistics"]["num_keys"] <= _WALK_AT_MOST * len(keys):
            self._walked = {}
            if "location" in self._root:  # none in an empty database
                self._walk(self._root["location"], b"", self._walked)
        if self._walked is None:
            return self._read(keys)
        found = {}
        for key in keys:
            value = self._walked.get(key.encode())
            if isinstance(value, str):  # a value stored apart: its location
                value = self._ts.ocdbt.dump(self._files, value).result()
            if value is not None:
                found[key] = value
        return found

    def _walk(self, location: str, prefix: bytes, into: dict[bytes, Any]) -> None:
        node = self._ts.ocdbt.dump(self._files, location).result()
        for entry in node["entries"]:
            if node["height"]:  # an interior node: the keys below it follow a common prefix
                self._walk(entry["location"], prefix + entry["subtree_common_prefix"], into)
            elif "inline_value" in entry:
                into[prefix + entry["key"]] = entry["inline_value"]
            else:
                into[prefix + entry["key"]] = str(entry["indirect_value"])

    def _read(self, keys: list[str]) -> dict[str, bytes]:
        if self._store is None:
            spec = {"driver": "ocdbt", "base": self._files.spec().to_json()}
            self._store = self._ts.KvStore.open(spec).result()
        reads = [(key, self._store.read(key)) for key in keys]
        results = [(key, read.result()) for key, read in reads]
        return {key: result.value for key, result in results if result.state == "value"}


def _scalars(
    ts: Any, database: _Database, directory: pathlib.Path, wanted: list[tuple[Any, str, dict[str, Any]]]
) -> list[tuple[Any, np.ndarray]]:
    """Each wanted scalar's keys and value (a 0-d NumPy array), decoded here where its one chunk
    is stored as it is (`_stored`), else read through tensorstore's zarr driver, all at once."""
    chunks = database.values([f"{name}/0" for _, name, _ in wanted])  # a 0-d zarr array's one chunk
    values: list[tuple[Any, Any]] = []
    for keys, name, array in wanted:
        dtype = np.dtype(array["dtype"])
        chunk = chunks.get(f"{name}/0")  # none written: the fill value, read by tensorstore
        raw = None if chunk is None else _stored(chunk, array)
        if raw is not None and len(raw) == dtype.itemsize and dtype.isnative and not dtype.hasobject:
            values.append((keys, np.frombuffer(raw, dtype).reshape(()).copy()))
        else:
            base = {"driver": "ocdbt", "base": directory.resolve().as_uri(), "path": f"{name}/"}
            values.append((keys, ts.open({"driver": "zarr", "kvstore": base}, open=True, read=True)))
    return [
        (keys, value if isinstance(value, np.ndarray) else np.asarray(value.result().read().result()))
        for keys, value in values
    ]


_STORED_AT_MOST = 1 << 20
"""The most bytes a zstd frame without a declared size is decoded to here (a scalar's chunk)."""


def _stored(chunk: bytes, array: dict[str, Any]) -> bytes | None:
    """A zarr chunk's bytes where it holds them as they are: no filter, and no compressor or a zstd
    frame of stored blocks (as zstd keeps the few bytes of a scalar); `None` for anything else.

    >>> _stored(b"\\x28\\xb5\\x2f\\xfd\\x20\\x04\\x21\\x00\\x00abcd", {"compressor": {"id": "zstd"}})
    b'abcd'
    """
    if array.get("filters"):
        return None
    compressor = array.get("compressor")
    if compressor is None:
        return chunk
    return _zstd_stored(chunk) if compressor.get("id") == "zstd" else None


def _zstd_stored(frame: bytes) -> bytes | None:
    """The content of one zstd frame whose blocks are raw or RLE (RFC 8878, 3.1.1); `None` for a
    compressed block, a dictionary, a checksum, or anything more or less than one frame.

    >>> _zstd_stored(b"\\x28\\xb5\\x2f\\xfd\\x20\\x04\\x23\\x00\\x00\\x07"), _zstd_stored(b"\\x28\\xb5")
    (b'\\x07\\x07\\x07\\x07', None)
    """
    if len(frame) < 5 or frame[:4] != b"\x28\xb5\x2f\xfd" or frame[4] & 0x0F:
        return None  # not zstd; a reserved bit, a checksum or a dictionary
    single_segment = frame[4] >> 5 & 1
    size_bytes = (single_segment, 2, 4, 8)[frame[4] >> 6]
    at = 5 + (1 - single_segment) + size_bytes
    size = int.from_bytes(frame[at - size_bytes : at], "little") + (256 if size_bytes == 2 else 0)
    content = bytearray()
    bound = size if size_bytes else _STORED_AT_MOST  # a corrupt frame never expands beyond it
    last = False
    while not last:
        if at + 3 > len(frame):
            return None
        header = int.from_bytes(frame[at : at + 3], "little")
        last, kind, length = bool(header & 1), header >> 1 & 3, header >> 3
        at += 3
        if len(content) + length > bound:
            return None
        if kind == 0 and at + length <= len(frame):  # raw
            content += frame[at : at + length]
            at += length
        elif kind == 1 and at < len(frame):  # RLE: one byte, repeated
            content += frame[at : at + 1] * length
            at += 1
        else:
            return None
    return bytes(content) if at == len(frame) and (not size_bytes or size == len(content)) else None


def _insert(root: Any, keys: list[tuple[Any, int]], leaf: Any) -> Any:
    """`root` with `leaf` at `keys` (orbax's key types: 1 a sequence index, 2 a dict key),
    creating the lists and dicts on the way, as orbax restores them without a target.

    >>> _insert({"a": [None]}, [("a", 2), ("2", 1), ("b", 2)], 5)
    {'a': [None, None, {'b': 5}]}
    """
    if not keys:
        return leaf
    node: Any = ([] if keys[0][1] == 1 else {}) if root is None else root
    top = node
    for depth, (key, kind) in enumerate(keys):
        if kind == 1:
            key = int(key)
            while len(node) <= key:
                node.append(None)
            child = node[key]
        else:
            child = node.get(key)
        if depth == len(keys) - 1:
            child = leaf
        elif child is None:
            child = [] if keys[depth + 1][1] == 1 else {}
        node[key] = child
        node = child
    return top


class _SavedSharding(NamedTuple):
    """A sharding as orbax's `_sharding` file records it, read as orbax's own `ShardingMetadata`
    reads it (orbax/checkpoint/_src/metadata/sharding.py): a `NamedSharding`'s mesh shape, axis
    names and types, spec and device ids, or a `SingleDeviceSharding`'s device."""

    shape: Any = None
    axis_names: Any = None
    partition_spec: tuple[Any, ...] | None = None
    axis_types: tuple[Any, ...] | None = None
    device_ids: tuple[int, ...] | None = None
    device_str: Any = None

    def to_jax_sharding(self) -> jax.sharding.Sharding:
        """The sharding on this process's devices (`ValueError`, `KeyError` where it lacks them)."""
        if self.partition_spec is None:
            local = {str(device).replace("TFRT_CPU_", "cpu:"): device for device in jax.local_devices()}
            device = local.get(self.device_str.replace("TFRT_CPU_", "cpu:"))  # JAX 0.10 renamed CPUs
            if device is None:
                raise ValueError(f"no device {self.device_str} here")
            return getattr(jax.sharding, "make_single_device_sharding", jax.sharding.SingleDeviceSharding)(
                device
            )
        devices: list[Any] = jax.devices()
        if self.device_ids is not None:
            by_id = {device.id: device for device in devices}
            devices = [by_id[number] for number in self.device_ids]
        mesh = jax.sharding.Mesh(
            np.asarray(devices).reshape(self.shape), axis_names=self.axis_names, axis_types=self.axis_types
        )
        return jax.sharding.NamedSharding(mesh, spec=jax.sharding.PartitionSpec(*self.partition_spec))


def _parsed_sharding(serialized: Any) -> _SavedSharding | None:
    """A `_sharding` entry, or `None` where orbax reads no sharding from it either.

    >>> _parsed_sharding('{"sharding_type": "SingleDeviceSharding", "device_str": "cpu:0"}').device_str
    'cpu:0'
    """
    try:
        record = json.loads(serialized)
        if record["sharding_type"] == "SingleDeviceSharding":
            return None if record["device_str"] is None else _SavedSharding(device_str=record["device_str"])
        if record["sharding_type"] != "NamedSharding":
            return None
        types = {str(kind): kind for kind in jax.sharding.AxisType}
        mesh = record.get("device_mesh")
        return _SavedSharding(
            shape=np.array(record["shape"]),
            axis_names=list(record["axis_names"]),
            partition_spec=tuple(record["partition_spec"]),
            axis_types=tuple(types[name] for name in record["axis_types"])
            if record.get("axis_types")
            else None,
            device_ids=tuple(_device_ids(mesh["mesh"])) if mesh else None,
        )
    except Exception:  # not orbax's format, or another version's
        return None


def _device_ids(rows: Any) -> list[int]:
    """The ids of a saved device mesh (nested lists of `{"id": n}`), in mesh order."""
    if isinstance(rows, dict):
        return [int(rows["id"])]
    return [number for row in rows for number in _device_ids(row)]


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
            ids = _mesh_ids(saved)
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


def _mesh_ids(saved: Any) -> tuple[int, ...] | None:
    """The saved mesh's device ids in mesh order, from orbax's metadata or `_SavedSharding`."""
    if isinstance(saved, _SavedSharding):
        return saved.device_ids
    rows = getattr(getattr(saved, "device_mesh", None), "mesh", None)
    return None if rows is None else tuple(int(d.id) for d in np.asarray(rows, dtype=object).ravel())


def _leaf_struct(
    shape: Any, dtype: Any, placed: tuple[jax.sharding.Sharding | None, tuple[int, ...] | None]
) -> jax.ShapeDtypeStruct:
    """A leaf of the metadata: a `ShapeDtypeStruct` with its saved sharding (`_saved_sharding`'s
    result), a `SavedStruct` where the sharding's devices are not this process's."""
    sharding, ids = placed
    if ids is not None:
        return SavedStruct(shape, dtype, sharding=sharding, device_ids=ids)
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
