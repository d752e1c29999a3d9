"""`load` and `optree-inspect` on real orbax checkpoints: damaged ones, every form of path,
`CheckpointManager`'s step names, strict JSON, a closed stdout, a quiet stderr, whole suggestions.

The checkpoints are saved once for the module; each damaged form is a copy with one fault.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from hypothesis import given
from hypothesis import strategies as st

import optree_inspect as oi
from optree_inspect import _cli
from optree_inspect._cli import main as cli

NAN_STATE = {
    "opt": optax.inject_hyperparams(optax.adam)(learning_rate=math.nan, b1=math.inf, b2=-math.inf).init(
        {"w": jnp.ones((2, 3))}
    ),
    "x": np.array([np.nan, 1.0, np.inf]),
    "y": np.array(np.nan, np.float32),  # orbax 0.11.13 saves no NumPy scalar
    "z": np.array([-np.inf, 2.0], np.float32),
}
OTHER_STATE = jax.tree.map(lambda leaf: np.asarray(np.asarray(leaf) + 1), NAN_STATE)


def _save(path: pathlib.Path, state: Any, checkpointer: Any = None) -> pathlib.Path:
    checkpointer = checkpointer or ocp.StandardCheckpointer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpointer.save(path, state)
        getattr(checkpointer, "wait_until_finished", lambda: None)()
    return path


def _step_state(step: int) -> dict[str, Any]:
    return {"count": np.array(step, np.int32), "w": np.full(3, step, np.float32)}


def _manager(path: pathlib.Path, steps: tuple[int, ...], **options: Any) -> list[int]:
    """Save `steps` with a manager of `options`; the steps orbax itself then lists."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manager_options = ocp.CheckpointManagerOptions(**options)
        with ocp.CheckpointManager(path, options=manager_options) as manager:
            for step in steps:
                manager.save(step, args=ocp.args.StandardSave(_step_state(step)))
            manager.wait_until_finished()
        with ocp.CheckpointManager(path, options=manager_options) as manager:
            return sorted(manager.all_steps())


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("cli")
    _save(root / "nan", NAN_STATE)
    _save(root / "other", OTHER_STATE)
    small = optax.adam(1e-3).init({"w": jnp.ones((4, 3)), "b": jnp.zeros(3)})
    _save(root / "ocdbt", small)
    _save(root / "pytree", small, ocp.PyTreeCheckpointer())
    _save(root / "zarr", small, ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False)))
    _manager(root / "run", (1, 2))
    return root


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = cli(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _refused(args: list[str], status: int, capsys: pytest.CaptureFixture[str]) -> str:
    """Run `args`, which must fail with `status`, one line on stderr and nothing on stdout."""
    code, out, err = _run(args, capsys)
    assert (code, out) == (status, ""), err
    assert err.startswith("optree-inspect: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


# The command line on the public API ---------------------------------------------------------


def test_the_command_line_uses_only_the_public_api_and_one_handler_a_subcommand() -> None:
    source = pathlib.Path(_cli.__file__).read_text()
    tree = ast.parse(source)
    imported = {
        alias.name if isinstance(node, ast.Import) else f"{'.' * node.level}{node.module}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {name for name in imported if name.startswith(".") or name.startswith("optree_inspect.")}
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "oi"
    }
    assert used <= set(oi.__all__), used - set(oi.__all__)
    subcommands = next(
        action for action in _cli._parser()._actions if isinstance(action, argparse._SubParsersAction)
    )
    assert set(subcommands.choices) == set(_cli._HANDLERS)


# Damaged checkpoints ----------------------------------------------------------------------------


def _files(path: pathlib.Path, directory: str) -> list[pathlib.Path]:
    return [f for f in (path / directory).rglob("*") if f.is_file() and not f.name.startswith(".")]


def _write(path: pathlib.Path, text: str | bytes) -> None:
    path.write_bytes(text.encode() if isinstance(text, str) else text)


def _cut(fraction: float) -> Callable[[pathlib.Path], None]:
    def damage(path: pathlib.Path) -> None:
        data = (path / "_METADATA").read_bytes()
        _write(path / "_METADATA", data[: int(len(data) * fraction)])

    return damage


def _metadata_only(path: pathlib.Path) -> None:
    for child in path.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        elif child.name != "_METADATA":
            child.unlink()


def _metadata_a_directory(path: pathlib.Path) -> None:
    (path / "_METADATA").unlink()
    (path / "_METADATA").mkdir()


# (name, the checkpoint it damages, the damage, whether `load` without arrays sees it too)
DAMAGES: list[tuple[str, str, Callable[[pathlib.Path], None], bool]] = [
    ("not JSON", "ocdbt", lambda p: _write(p / "_METADATA", "{not json"), True),
    ("empty _METADATA", "ocdbt", _cut(0), True),
    ("_METADATA cut at 1/3", "ocdbt", _cut(1 / 3), True),
    ("_METADATA cut at 99%", "ocdbt", _cut(0.99), True),
    ("_METADATA a list", "ocdbt", lambda p: _write(p / "_METADATA", "[]"), True),
    ("_METADATA of another schema", "ocdbt", lambda p: _write(p / "_METADATA", '{"tree_metadata": 3}'), True),
    ("_METADATA not UTF-8", "ocdbt", lambda p: _write(p / "_METADATA", b"\xff\xfe{"), True),
    ("_METADATA a directory", "ocdbt", _metadata_a_directory, True),
    ("no manifest.ocdbt", "ocdbt", lambda p: (p / "manifest.ocdbt").unlink(), True),
    ("only _METADATA", "ocdbt", _metadata_only, True),
    ("only _METADATA, zarr layout", "zarr", _metadata_only, True),
    ("no database files", "ocdbt", lambda p: shutil.rmtree(p / "d"), True),
    ("database files corrupt", "ocdbt", lambda p: [_write(f, b"junk") for f in _files(p, "d")], True),
    ("_sharding corrupt", "ocdbt", lambda p: _write(p / "_sharding", "{"), True),
    ("an array directory missing", "zarr", lambda p: shutil.rmtree(p / "0.mu.w"), True),
    ("a .zarray corrupt", "zarr", lambda p: _write(p / "0.nu.b" / ".zarray", "junk"), True),
    ("a scalar's chunk corrupt", "zarr", lambda p: _write(p / "0.count" / "0", b"junk"), True),
    ("an array's chunk corrupt", "zarr", lambda p: _write(p / "0.mu.w" / "0.0", b"junk"), False),
    ("an array's chunk missing", "zarr", lambda p: (p / "0.nu.w" / "0.0").unlink(), False),
    ("pytree: no manifest.ocdbt", "pytree", lambda p: (p / "manifest.ocdbt").unlink(), True),
]


@pytest.fixture(scope="module")
def damaged(root: pathlib.Path) -> dict[str, pathlib.Path]:
    paths = {}
    for number, (name, source, damage, _) in enumerate(DAMAGES):
        paths[name] = root / f"damaged{number}"
        shutil.copytree(root / source, paths[name])
        damage(paths[name])
    return paths


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's late callbacks
@pytest.mark.parametrize(("name", "source", "damage", "in_metadata"), DAMAGES, ids=[d[0] for d in DAMAGES])
def test_a_damaged_checkpoint_is_a_checkpoint_error(
    name: str,
    source: str,
    damage: Any,
    in_metadata: bool,
    damaged: dict[str, pathlib.Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = damaged[name]
    with pytest.raises(oi.CheckpointError, match=r"Damaged checkpoint at .*damaged"):
        oi.load(path, arrays=True)
    for args in (["check", str(path)], ["describe", str(path), "--stats", "--json"]):
        assert "Damaged checkpoint" in _refused(args, 2, capsys)
    if in_metadata:
        with pytest.raises(oi.CheckpointError, match="Damaged checkpoint"):
            oi.load(path)
        assert "Damaged checkpoint" in _refused(["describe", str(path)], 2, capsys)
    else:  # what `load` does not read cannot be wrong: the metadata is whole
        assert isinstance(oi.get(oi.load(path), "mu.w"), jax.ShapeDtypeStruct)


def test_the_undamaged_checkpoints_read_back_exactly(root: pathlib.Path) -> None:
    reference = optax.adam(1e-3).init({"w": jnp.ones((4, 3)), "b": jnp.zeros(3)})
    for name in ("ocdbt", "pytree", "zarr"):
        loaded = oi.load(root / name, arrays=True)
        assert not oi.diff(reference, oi.restore_like(loaded, reference)), name
        assert jax.tree.structure(oi.load(root / name)) == jax.tree.structure(loaded)


def test_a_step_with_an_item_lost_is_a_checkpoint_error(
    root: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = root / "lost_item"
    shutil.copytree(root / "run", path)
    (path / "2" / "default" / "_METADATA").unlink()
    with pytest.raises(oi.CheckpointError, match="item 'default' has no _METADATA"):
        oi.load(path)
    assert int(oi.load(path, step=1)["count"]) == 1
    assert "item 'default'" in _refused(["describe", str(path)], 2, capsys)


# Paths ------------------------------------------------------------------------------------------


def test_relative_home_dotdot_and_symlinked_paths_read_the_arrays(
    root: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (root / "sub").mkdir(exist_ok=True)
    link = root / "link"
    if not link.exists():
        link.symlink_to(root / "run")
    monkeypatch.chdir(root / "sub")
    monkeypatch.setenv("HOME", str(root))
    expected = oi.load(root / "run", arrays=True)
    for path in ("../run", "~/run", "../sub/../run", "../link", "~/link/2", pathlib.Path("../run")):
        loaded = oi.load(path, arrays=True)
        assert not oi.diff(expected, loaded), path
        assert isinstance(loaded["w"], np.ndarray)
        for args in (
            ["check", str(path)],
            ["describe", str(path), "--stats"],
            ["diff", str(path), str(path)],
        ):
            code, out, err = _run(args, capsys)
            assert (code, err) == (0, ""), (args, err)
    code, out, _ = _run(["diff", "../run", "~/run", "--step", "1"], capsys)
    assert (code, out.strip()) == (0, "No differences.")
    code, out, _ = _run(["diff", "../run/1", "~/link/2"], capsys)
    assert code == 1 and "count" in out


def test_a_path_that_is_no_checkpoint_gives_one_line(
    root: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (root / "plain").mkdir(exist_ok=True)
    (root / "file").write_text("x")
    cases = {
        root / "missing": "not a directory",
        root / "file": "not a directory",
        root / "ocdbt" / "_METADATA": "not a directory",
        root / "plain": "no item directory",
    }
    for path, message in cases.items():
        with pytest.raises(oi.CheckpointError, match=message):
            oi.load(path)
        assert message in _refused(["check", str(path)], 2, capsys)
    with pytest.raises(oi.CheckpointError, match="No checkpoint at"):
        oi.load(root / "nul\0byte")
    with pytest.raises(oi.InvalidArgumentError):
        oi.load(3)  # type: ignore[arg-type]
    with pytest.raises(oi.InvalidArgumentError):
        oi.load(root / "run", step="2")  # type: ignore[arg-type]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_checkpoint_gives_one_line(
    root: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = root / "unreadable"
    shutil.copytree(root / "run", path)
    (path / "2" / "default" / "_METADATA").chmod(0)
    with pytest.raises(oi.CheckpointError, match="Permission denied"):
        oi.load(path)
    (path / "2").chmod(0)
    try:
        _refused(["describe", str(path)], 2, capsys)
    finally:
        (path / "2").chmod(0o755)


# Step names -------------------------------------------------------------------------------------

NAMINGS: list[dict[str, Any]] = [
    {},
    {"step_prefix": "step"},
    {"step_format_fixed_length": 8},
    {"step_prefix": "step", "step_format_fixed_length": 8},
    {"step_prefix": "my_run_2", "step_format_fixed_length": 3},
    {"step_name_format": ocp.step.standard_name_format(step_prefix="ckpt", step_format_fixed_length=4)},
]


@pytest.mark.parametrize("options", NAMINGS, ids=lambda o: repr(o)[:60])
def test_every_step_naming_of_checkpoint_manager(
    options: dict[str, Any], tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run"
    steps = _manager(path, (5, 100, 1000), **options)
    assert steps == [5, 100, 1000]  # as orbax lists them
    (path / f"{(path / 'x').name}.orbax-checkpoint-tmp-1").mkdir()  # an unfinished save: no step
    for step in steps:
        assert int(oi.load(path, step=step)["count"]) == step
        assert oi.load(path, step=np.int64(step), arrays=True)["w"].tolist() == [step] * 3
        code, out, err = _run(["get", str(path), "count", "--step", str(step)], capsys)
        assert (code, out.strip(), err) == (0, f"i32[] = {step}", "")
    assert int(oi.load(path)["count"]) == 1000  # the latest
    code, out, _ = _run(["diff", str(path), str(path), "--step", "5"], capsys)
    assert code == 0
    with pytest.raises(oi.CheckpointError, match=r"No step 7 .* its steps are: 5, 100, 1000\.$"):
        oi.load(path, step=7)
    assert "its steps are: 5, 100, 1000" in _refused(["check", str(path), "--step", "7"], 2, capsys)


def test_many_steps_are_listed_in_short_and_one_step_in_two_names_is_refused(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "run"
    _manager(path, tuple(range(20)), step_prefix="s")
    with pytest.raises(oi.CheckpointError, match=r"its 20 steps are: 0, 1, 2, \.\.\., 12, .*, 19\."):
        oi.load(path, step=25)
    shutil.copytree(path / "s_3", path / "3")  # orbax's composite name formats read both
    with pytest.raises(oi.CheckpointError, match=r"Step 3 of .* several directories \(3, s_3\)"):
        oi.load(path, step=3)
    assert int(oi.load(path / "3")["count"]) == 3  # the directory itself, as the message says
    assert int(oi.load(path)["count"]) == 19


# Strict JSON ------------------------------------------------------------------------------------


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_every_subcommand_prints_strict_json(root: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    nan, other = str(root / "nan"), str(root / "other")
    documents = {}
    for args in (
        ["describe", nan],
        ["describe", nan, "--stats"],
        ["get", nan, "learning_rate"],
        ["get", nan, "y"],
        ["get", nan, "z"],
        ["find", nan, "b1"],
        ["hyperparams", nan, "--counters"],
        ["check", nan],
        ["diff", nan, other],
    ):
        code, out, err = _run([*args, "--json"], capsys)
        assert code in (0, 1) and err == "", (args, err)
        documents[" ".join(a for a in args if a not in (nan, other))] = _strict_json(out)
    assert documents["get learning_rate"]["value"] == "NaN"
    assert documents["get y"]["value"] == "NaN"
    assert documents["hyperparams --counters"]["b1"] == "Infinity"
    assert documents["hyperparams --counters"]["b2"] == "-Infinity"
    assert documents["find b1"]["matches"][0]["value"] == "Infinity"
    stats = {row["query"]: row["stats"] for row in documents["describe --stats"]["rows"]}
    assert stats["y"]["max"] == "NaN" and stats["x"]["nan"] == 1
    assert {f["kind"] for f in documents["check"]["findings"]} >= {"nonfinite"}
    assert documents["diff"]["rows"]


NUMBERS = st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.booleans() | st.none()
DOCUMENTS = st.recursive(
    NUMBERS | st.text(max_size=5) | st.floats(width=32).map(np.float32) | st.integers(-9, 9).map(np.int8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@given(DOCUMENTS)
def test_strict_json_keeps_numbers_and_names_the_non_finite(document: Any) -> None:
    def expected(value: Any) -> Any:
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            return {math.inf: "Infinity", -math.inf: "-Infinity"}.get(value, "NaN")
        if isinstance(value, dict):
            return {k: expected(v) for k, v in value.items()}
        if isinstance(value, list):
            return [expected(v) for v in value]
        return value

    assert _strict_json(json.dumps(_cli._strict(document), allow_nan=False)) == expected(document)


# A closed stdout, a quiet stderr ----------------------------------------------------------------


class _ClosedPipe:
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize(
    ("args", "status"),
    [(["describe", "{nan}", "--stats"], 0), (["check", "{nan}", "--json"], 1),
     (["diff", "{nan}", "{other}"], 1), (["hyperparams", "{nan}"], 0), (["find", "{nan}", "b1"], 0)],
)  # fmt: skip
def test_a_closed_stdout_keeps_the_command_s_status(
    args: list[str],
    status: int,
    root: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    args = [arg.format(nan=root / "nan", other=root / "other") for arg in args]
    assert cli(args) == status
    assert capsys.readouterr().err == ""


def test_the_script_s_stderr_is_empty_or_one_line(
    root: pathlib.Path, damaged: dict[str, pathlib.Path]
) -> None:
    module = [sys.executable, "-m", "optree_inspect"]
    read, write = os.pipe()
    os.close(read)  # a pipe with no reader: the first write fails, whatever the timing
    closed = subprocess.Popen(
        [*module, "diff", str(root / "nan"), str(root / "other")], stdout=write, stderr=subprocess.PIPE
    )
    os.close(write)
    # orbax's threads report the failed read late: the script's stderr is still its one line
    bad = subprocess.run(
        [*module, "check", str(damaged["an array's chunk missing"])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    _, err = closed.communicate(timeout=300)
    assert (closed.returncode, err.decode()) == (1, "")  # diff's own status; NaN: no RuntimeWarning
    assert (bad.returncode, bad.stdout, bad.stderr.count("\n")) == (2, "", 1), bad.stderr[-2000:]
    assert bad.stderr.startswith("optree-inspect: Damaged checkpoint at ")


def test_an_unexpected_error_or_an_interrupt_is_one_line(
    root: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a defect\nover two lines")

    monkeypatch.setattr(oi, "describe", fails)
    assert "unexpected RuntimeError: a defect over two lines" in _refused(
        ["describe", str(root / "run")], 3, capsys
    )

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(oi, "describe", interrupted)
    assert "interrupted" in _refused(["describe", str(root / "run")], 130, capsys)


# Ambiguous get ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [2, 9, 40])
def test_an_ambiguous_get_lists_whole_queries_and_how_many_more(
    layers: int, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = {
        f"encoder_block_{i}_attention_query_projection": {"kernel": jnp.zeros(2)} for i in range(layers)
    }
    path = _save(tmp_path / "long", optax.adam(1e-3).init(params))
    err = _refused(["get", str(path), "kernel"], 1, capsys)
    assert len(err) < 2000
    head, _, listed = err.strip().partition("; use a query that selects one: ")
    assert f"matches {2 * layers} nodes" in head
    listed, _, more = listed.partition(" (and ")
    suggestions = listed.split("; ")
    shown = len(suggestions)
    assert shown == 2 * layers if not more else more.startswith(f"{2 * layers - shown} more")
    for suggestion in suggestions:
        node, query = suggestion.split(" -> ")
        [word] = shlex.split(query)
        code, out, _ = _run(["find", str(path), word, "--json"], capsys)
        assert code == 0 and [m["path"] for m in _strict_json(out)["matches"]] == [node], word
