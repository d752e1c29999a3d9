"""`load` of orbax's default layout read from its files, without orbax: the same trees, the same
`describe`, `memory` and `--json` as orbax's own reading gives, and no orbax import.

Every checkpoint is saved once for the module; orbax's reading is forced by making the fast one
decline, as it declines any layout it does not know.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts

import optree_inspect as oi
from helpers import WRAPPED, seed_optimizer, trained
from optree_inspect import _checkpoint
from optree_inspect._cli import main as cli

NESTED = {
    "a": {"b": [np.ones(3, ml_dtypes.bfloat16), None, {"c": np.array(3, np.int32)}]},
    "empty": {"d": {}, "l": []},
    "scalars": {
        "f32": np.array(2.5, np.float32),
        "bf16": np.array(1.5, ml_dtypes.bfloat16),
        "u8": np.array(200, np.uint8),
        "bool": np.array(True),
        "i64": np.array(2**40, np.int64),
        "f64": np.array(0.1, np.float64),
        "c64": np.array(1 + 2j, np.complex64),
        "nan": np.array(np.nan, np.float32),
        "negative_zero": np.array(-0.0, np.float32),
    },
    "arrays": [np.zeros((3, 4, 5), np.float16), np.arange(5, dtype=np.int8)],
}


def _save(path: pathlib.Path, state: Any, checkpointer: Any = None) -> pathlib.Path:
    checkpointer = checkpointer or ocp.StandardCheckpointer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpointer.save(path, state)
        getattr(checkpointer, "wait_until_finished", lambda: None)()
    return path


def _steps(path: pathlib.Path) -> pathlib.Path:
    """A `CheckpointManager` directory, two steps of two items each."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ocp.CheckpointManager(path) as manager:
            for step in (1, 2):
                state = ocp.args.StandardSave(trained(seed_optimizer(), steps=step))
                extra = ocp.args.StandardSave(
                    {"loss": np.array(step, np.float32), "seen": np.arange(step + 1)}
                )
                manager.save(step, args=ocp.args.Composite(state=state, extra=extra))
            manager.wait_until_finished()
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("reading")
    on_device = {"w": jnp.ones((2, 3)), "count": jnp.int32(4), "lr": jnp.float32(3e-4), "none": None}
    return {
        "nested": _save(root / "nested", NESTED),
        "named_chain": _save(root / "named_chain", trained(WRAPPED["named_chain"]())),
        "on_device": _save(root / "on_device", on_device),
        "python_scalars": _save(
            root / "python", {"i": 3, "f": 0.5, "a": np.ones(2)}, ocp.PyTreeCheckpointer()
        ),
        "steps": _steps(root / "steps"),
        "not_ocdbt": _save(
            root / "not_ocdbt",
            trained(seed_optimizer()),
            ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False)),
        ),
        "zarr3": _save(
            root / "zarr3",
            trained(seed_optimizer()),
            ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_zarr3=True)),
        ),
    }


FAST = ("nested", "named_chain", "on_device", "python_scalars", "steps")
"""The checkpoints in orbax's default layout, which `load` reads without orbax."""


def _leaves(tree: Any) -> tuple[str, list[tuple[Any, ...]]]:
    """Everything a verb can see of a loaded tree: its structure and each leaf's type, shape,
    dtype and sharding (with a `SavedStruct`'s device ids), or its value's bytes."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    described = []
    for path, leaf in flat:
        if isinstance(leaf, jax.ShapeDtypeStruct):
            shown: tuple[Any, ...] = (repr(leaf), repr(leaf.sharding), getattr(leaf, "device_ids", None))
        else:
            shown = (str(leaf.dtype), leaf.shape, leaf.tobytes(), leaf.flags.writeable)
        described.append((oi.keystr(path), type(leaf).__name__, *shown))
    return str(treedef), described


def _outputs(
    path: pathlib.Path, capsys: pytest.CaptureFixture[str], *step: str
) -> list[tuple[int, str, str]]:
    """What `describe`, `memory`, `hyperparams`, `get` and `find` print of `path` (--json or not)."""
    commands = (["describe"], ["describe", "--json"], ["memory", "--json"], ["hyperparams", "--counters"])
    outputs = []
    for command in [*commands, ["get", "count"], ["find", "count", "--json"]]:
        capsys.readouterr()
        status = cli([command[0], str(path), *step, *command[1:]])
        captured = capsys.readouterr()
        outputs.append((status, captured.out, captured.err))
    return outputs


def _read(path: pathlib.Path, capsys: pytest.CaptureFixture[str], *step: str) -> dict[str, Any]:
    number = int(step[1]) if step else None
    return {
        "scalars": _leaves(oi.load(path, step=number)),
        "metadata": _leaves(oi.load(path, step=number, scalars=False)),
        "outputs": _outputs(path, capsys, *step),
    }


@contextlib.contextmanager
def _orbax_reading(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Within: every item is read by orbax, as an item the fast reading declines."""

    def decline(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("declined")

    with monkeypatch.context() as patch:
        patch.setattr(_checkpoint, "_read_ocdbt_item", decline)
        yield


@contextlib.contextmanager
def _orbax_calls(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Within: how many times `load` turned to orbax (the list it yields grows a call a time)."""
    calls: list[None] = []
    imported = _checkpoint._orbax

    def counted() -> Any:
        calls.append(None)
        return imported()

    with monkeypatch.context() as patch:
        patch.setattr(_checkpoint, "_orbax", counted)
        yield calls


@pytest.mark.parametrize(
    "name, step",
    [(name, ()) for name in (*FAST, "not_ocdbt", "zarr3")] + [("steps", ("--step", "1"))],
)
def test_the_fast_reading_gives_what_orbax_s_gives(
    saved: dict[str, pathlib.Path],
    name: str,
    step: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _orbax_calls(monkeypatch) as calls:
        fast = _read(saved[name], capsys, *step)
    assert bool(calls) is (name not in FAST)  # orbax for a layout the fast reading does not know
    with _orbax_reading(monkeypatch):
        by_orbax = _read(saved[name], capsys, *step)
    assert fast == by_orbax
    assert all(err == "" for _, _, err in fast["outputs"][:4])
    assert fast["outputs"][0][0] == 0 and len(fast["outputs"][0][1].splitlines()) > 3


@pytest.mark.parametrize("name", FAST)
def test_a_database_of_many_more_keys_is_read_key_by_key_alike(
    saved: dict[str, pathlib.Path], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that holds many chunks an array (saved on many devices) is read key by key
    rather than walked whole: the same trees."""
    walked = [_leaves(oi.load(saved[name])), _leaves(oi.load(saved[name], scalars=False))]
    reads: list[int] = []
    by_key = _checkpoint._Database._read

    def counted(database: Any, keys: list[str]) -> dict[str, bytes]:
        reads.append(len(keys))
        return by_key(database, keys)

    with monkeypatch.context() as patch:
        patch.setattr(_checkpoint, "_WALK_AT_MOST", 0)
        patch.setattr(_checkpoint._Database, "_read", counted)
        assert [_leaves(oi.load(saved[name])), _leaves(oi.load(saved[name], scalars=False))] == walked
    assert reads


def test_a_step_directory_of_several_items_reads_each(saved: dict[str, pathlib.Path]) -> None:
    for path in (saved["steps"], saved["steps"] / "2"):
        tree = oi.load(path)
        assert set(tree) == {"state", "extra"}
        assert float(tree["extra"]["loss"]) == 2.0 and tree["extra"]["seen"].shape == (3,)
        assert int(oi.get(tree["state"], "InjectStatefulHyperparamsState>count")) == 2


def test_scalars_read_through_tensorstore_are_the_decoded_ones(
    saved: dict[str, pathlib.Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scalar whose chunk is not stored as it is (another compressor, a filter, none written)
    is read by tensorstore's zarr driver: the same value, dtype and flags."""
    for name in ("nested", "on_device", "named_chain"):
        decoded = _leaves(oi.load(saved[name]))
        with monkeypatch.context() as patch:
            patch.setattr(_checkpoint, "_stored", lambda chunk, array: None)
            assert _leaves(oi.load(saved[name])) == decoded


_PROGRAM = """
import sys
from optree_inspect._cli import main

status = main(sys.argv[1:])
print("orbax imported" if any(m.split(".")[0] == "orbax" for m in sys.modules) else "orbax not imported")
sys.exit(status)
"""


@pytest.mark.parametrize(
    "name, command, imports",
    [
        ("named_chain", ["describe"], False),
        ("steps", ["describe", "--json"], False),
        ("nested", ["memory"], False),
        ("on_device", ["get", "lr"], False),
        ("not_ocdbt", ["describe"], True),
    ],
)
def test_reading_orbax_s_default_layout_does_not_import_orbax(
    saved: dict[str, pathlib.Path],
    name: str,
    command: list[str],
    imports: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What makes `optree-inspect describe` start fast: orbax's import alone takes longer than
    reading 20,000 leaves. A layout only orbax reads imports it."""
    args = [command[0], str(saved[name]), *command[1:]]
    result = subprocess.run(
        [sys.executable, "-c", _PROGRAM, *args], capture_output=True, text=True, timeout=300
    )
    *printed, last = result.stdout.splitlines()
    assert (result.returncode, result.stderr, last) == (
        0,
        "",
        "orbax imported" if imports else "orbax not imported",
    ), result.stderr[-2000:]
    capsys.readouterr()
    assert cli(args) == 0
    assert "\n".join(printed) + "\n" == capsys.readouterr().out


_SHARDED = """
import json, sys, warnings
import jax, jax.numpy as jnp, numpy as np, orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

warnings.simplefilter("ignore")
devices = jax.devices()
mesh = jax.sharding.Mesh(np.array(devices).reshape(2, 4), ("data", "model"))
state = {
    "w": jax.device_put(jnp.ones((8, 8)), NamedSharding(mesh, P("data", "model"))),
    "m": jax.device_put(jnp.ones((8, 4)), NamedSharding(mesh, P(("data", "model")))),
    "r": jax.device_put(jnp.ones(4), NamedSharding(mesh, P())),
    "one": jax.device_put(jnp.ones(3), devices[5]),
    "count": jax.device_put(jnp.int32(7), devices[2]),
}
checkpointer = ocp.StandardCheckpointer()
checkpointer.save(sys.argv[1], state)
checkpointer.wait_until_finished()
"""


def test_shardings_read_alike_on_the_saving_devices_and_elsewhere(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint saved on 8 devices (a mesh, a replicated array, single devices): read on 8
    devices, its shardings on them; read here on one, over abstract meshes with the saved device
    ids. Either way the fast reading gives orbax's."""
    path = tmp_path / "sharded"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    compare = textwrap.dedent(
        """
        import json, sys
        from unittest import mock
        import optree_inspect as oi
        from optree_inspect import _checkpoint

        def read():
            return [repr(leaf) + repr(getattr(leaf, "device_ids", None)) for leaf in
                    __import__("jax").tree.leaves(oi.load(sys.argv[1], scalars=False))]

        fast = read()
        with mock.patch.object(_checkpoint, "_read_ocdbt_item", side_effect=ValueError):
            print(json.dumps([fast, read(), str(oi.describe(oi.load(sys.argv[1])))]))
        """
    )
    for program in (_SHARDED, compare):
        result = subprocess.run(
            [sys.executable, "-c", program, str(path)], env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-3000:]
    fast, by_orbax, text = json.loads(result.stdout.splitlines()[-1])
    assert fast == by_orbax and any("NamedSharding(mesh=Mesh(" in leaf for leaf in fast)
    assert "one: f32[3] @ device 5" in text
    here = _read(path, capsys)
    with _orbax_reading(monkeypatch):
        assert here == _read(path, capsys)
    assert "AbstractMesh" in str(here["metadata"])


def _zarr_chunk(value: np.ndarray, compressor: Any) -> tuple[bytes, dict[str, Any]]:
    """The one chunk and the `.zarray` of `value` saved by tensorstore as a zarr v2 array."""
    spec = {
        "driver": "zarr",
        "kvstore": {"driver": "memory"},
        "metadata": {"shape": list(value.shape), "chunks": list(value.shape), "compressor": compressor},
    }
    array = ts.open(spec, create=True, dtype=ts.dtype(value.dtype.name)).result()
    array.write(value).result()
    store = array.kvstore
    chunk = store.read(".".join(["0"] * max(value.ndim, 1))).result().value
    return chunk, json.loads(store.read(".zarray").result().value)


@pytest.mark.parametrize("compressor", [{"id": "zstd", "level": 1}, None, {"id": "zlib", "level": 1}])
def test_a_chunk_is_decoded_where_it_is_stored_as_it_is(compressor: Any) -> None:
    """Every scalar's chunk as tensorstore writes it is decoded to its bytes; a chunk zstd
    compresses, or another compressor's, is left to tensorstore (`None`), never misread."""
    values = [
        np.array(x, dtype) for dtype in ("float32", "int64", "bool", "uint8", "complex64") for x in (0, 1)
    ]
    values += [np.array(1.5, ml_dtypes.bfloat16), np.array(np.nan, np.float32)]
    arrays = [np.arange(64, dtype=np.float64), np.zeros(4096, np.int32), np.random.default_rng(0).random(300)]
    for value in values + arrays:
        chunk, array = _zarr_chunk(value, compressor)
        stored = _checkpoint._stored(chunk, array)
        if compressor is not None and compressor["id"] == "zlib":
            assert stored is None
        elif value.ndim == 0:
            assert stored == value.tobytes()
        else:
            assert stored in (None, value.tobytes())
    compressed = _zarr_chunk(np.zeros(4096, np.int32), {"id": "zstd", "level": 1})
    assert _checkpoint._stored(*compressed) is None


_MAGIC = b"\x28\xb5\x2f\xfd"


@pytest.mark.parametrize(
    "frame, content",
    [
        (_MAGIC + b"\x20\x03" + b"\x19\x00\x00" + b"abc", b"abc"),  # single segment, one raw block
        (_MAGIC + b"\x20\x05" + b"\x18\x00\x00abc" + b"\x13\x00\x00z", b"abczz"),  # raw, then RLE
        (_MAGIC + b"\x00\x50" + b"\x19\x00\x00abc", b"abc"),  # a window size, no content size
        (_MAGIC + b"\x60\x2c\x00" + b"\x63\x09\x00" + b"\x00", b"\x00" * 300),  # 2-byte size: 300 - 256, RLE
        (_MAGIC + b"\x20\x03" + b"\x1d\x00\x00abc", None),  # a compressed block
        (_MAGIC + b"\x24\x03" + b"\x19\x00\x00abc" + b"\x00" * 4, None),  # a checksum
        (_MAGIC + b"\x21\x07\x03" + b"\x19\x00\x00abc", None),  # a dictionary
        (_MAGIC + b"\x20\x04" + b"\x19\x00\x00abc", None),  # a content size that is not the content's
        (_MAGIC + b"\x20\x03" + b"\x19\x00\x00ab", None),  # cut short
        (_MAGIC + b"\x20\x03" + b"\x18\x00\x00abc", None),  # no last block
        (_MAGIC + b"\x20\x03" + b"\x19\x00\x00abcd", None),  # more than one frame
        (b"\x28\xb5\x2f\xfe\x20\x03\x19\x00\x00abc", None),  # not zstd
    ],
)
def test_zstd_frames_of_stored_blocks_only_are_decoded(frame: bytes, content: bytes | None) -> None:
    assert _checkpoint._zstd_stored(frame) == content


def _rle_block(length: int, last: bool) -> bytes:
    return (int(last) | 1 << 1 | length << 3).to_bytes(3, "little") + b"a"


@pytest.mark.parametrize(
    "frame",
    [
        _MAGIC + b"\x20\x03" + _rle_block(1 << 20, last=True),  # declares 3 bytes, repeats 1 MiB
        _MAGIC + b"\x00\x00" + _rle_block((1 << 20) + 1, last=True),  # no size, beyond the bound
        _MAGIC + b"\x00\x00" + _rle_block(1 << 19, last=False) * 1000 + _rle_block(1, last=True),
    ],
    ids=["beyond its size", "beyond the bound", "many blocks"],
)
def test_a_corrupt_frame_is_refused_before_it_is_expanded(frame: bytes) -> None:
    assert _checkpoint._zstd_stored(frame) is None
