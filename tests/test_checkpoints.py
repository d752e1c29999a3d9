"""Checkpoints from the shell and from Python: `load`, `restore_like`, `optree-inspect`.

Every test saves real orbax checkpoints in a temporary directory.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys
import textwrap
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax.training import train_state

import optree_inspect as oi
from helpers import PARAMS, layered_params, schedule, seed_optimizer, trained
from optree_inspect._cli import main as cli


def _save(directory: pathlib.Path, state: Any) -> pathlib.Path:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory, state)
    checkpointer.wait_until_finished()
    return directory


def _manager(directory: pathlib.Path, states: dict[int, Any]) -> pathlib.Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ocp.CheckpointManager(directory) as manager:
            for step, state in states.items():
                manager.save(step, args=ocp.args.StandardSave(state))
            manager.wait_until_finished()
    return directory


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("checkpoints")
    seed = trained(seed_optimizer())
    holder = train_state.TrainState.create(apply_fn=None, params=PARAMS, tx=seed_optimizer())
    return {
        "seed": (seed, _save(root / "seed", seed)),
        "train_state": (holder, _save(root / "train_state", holder)),
        "manager": (None, _manager(root / "run", {s: trained(seed_optimizer(), steps=s) for s in (1, 2, 3)})),
    }


def test_load_reads_the_metadata_and_the_scalars_only(saved: dict[str, Any]) -> None:
    state, path = saved["seed"]
    tree = oi.load(path)
    leaves = jax.tree.leaves(tree)
    assert len(leaves) == len(jax.tree.leaves(state))
    arrays = [leaf for leaf in leaves if np.shape(leaf) != ()]
    assert arrays and all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in arrays)
    assert not any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves if np.shape(leaf) == ())
    # Every rule holds on the loaded form: the same logging keys and values as the live state.
    live, loaded = oi.hyperparams(state, counters=True), oi.hyperparams(tree, counters=True)
    assert sorted(live) == sorted(loaded)
    assert all(float(loaded[k]) == pytest.approx(float(v)) for k, v in live.items())
    assert "(scheduled, used at step 1)" in str(oi.describe(tree))
    with pytest.raises(oi.ScheduledHyperparameterError):
        oi.set(tree, "learning_rate", 0.1)
    restored = oi.load(path, arrays=True)
    assert not oi.diff(state, oi.restore_like(restored, state))


def test_load_picks_the_latest_step_or_the_one_asked(saved: dict[str, Any]) -> None:
    _, path = saved["manager"]
    assert int(oi.get(oi.load(path), "InjectStatefulHyperparamsState>count")) == 3
    assert int(oi.get(oi.load(path, step=1), "InjectStatefulHyperparamsState>count")) == 1
    assert int(oi.get(oi.load(path / "2"), "InjectStatefulHyperparamsState>count")) == 2  # a step directory
    with pytest.raises(oi.CheckpointError, match=r"No step 7 .* its steps are: 1, 2, 3"):
        oi.load(path, step=7)
    with pytest.raises(oi.CheckpointError, match="not a directory"):
        oi.load(path / "missing")
    (path.parent / "empty").mkdir(exist_ok=True)
    with pytest.raises(oi.CheckpointError, match="no item directory"):
        oi.load(path.parent / "empty")
    several = oi.load(path.parent)  # a directory of several saved items: a dict of them
    assert {"seed", "train_state"} <= set(several)


def test_load_never_reads_large_arrays(tmp_path: pathlib.Path) -> None:
    state = optax.adam(1e-3).init({"w": jnp.ones((512, 512))})
    path = tmp_path / "big"
    ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False)).save(path, state)  # a directory an array
    for name in ("0.mu.w", "0.nu.w"):  # the large arrays' data: unreadable, so any read would fail
        for chunk in (path / name).rglob("*"):
            if chunk.is_file() and not chunk.name.startswith("."):
                chunk.write_bytes(b"not zarr")
    tree = oi.load(path)
    assert isinstance(oi.get(tree, "mu.w"), jax.ShapeDtypeStruct)
    assert int(oi.get(tree, "count")) == 0
    with pytest.raises(oi.CheckpointError, match=r"Damaged checkpoint at .*big"):
        oi.load(path, arrays=True)


def test_restore_like_round_trips_types_dtypes_and_values(saved: dict[str, Any]) -> None:
    for name in ("seed", "train_state"):
        state, path = saved[name]
        raw = oi.load(path, arrays=True)
        like = state if name == "seed" else state.opt_state
        raw = raw if name == "seed" else raw["opt_state"]
        back = oi.restore_like(raw, like)
        assert jax.tree.structure(back) == jax.tree.structure(like)
        assert not oi.diff(like, back)
        abstract = oi.restore_like(raw, jax.eval_shape(lambda like=like: like))
        assert not oi.diff(like, abstract)


def test_restore_like_names_each_difference_and_can_keep_init_values(saved: dict[str, Any]) -> None:
    _, path = saved["seed"]
    raw = oi.load(path, arrays=True)
    changed = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.inject_hyperparams(optax.adamw)(learning_rate=schedule()),
        optax.trace(0.9),
    )
    like = changed.init(PARAMS)
    with pytest.raises(oi.RestoreMismatchError, match=r"\[2\].trace\['dense1'\]\['b'\]: only in like"):
        oi.restore_like(raw, like)
    state, kept = oi.restore_like(raw, like, missing="init")
    assert [jax.tree_util.keystr(m.path) for m in kept] == [
        "[2].trace['dense1']['b']", "[2].trace['dense1']['w']", "[2].trace['head']['w']"
    ]  # fmt: skip
    assert int(state[1].count) == 2  # the moments and counters came from the checkpoint
    smaller = optax.chain(optax.clip_by_global_norm(1.0)).init(PARAMS)
    with pytest.raises(oi.RestoreMismatchError, match="only in the checkpoint"):
        oi.restore_like(raw, smaller, missing="init")
    with pytest.raises(oi.InvalidArgumentError):
        oi.restore_like(raw, like, missing="zeros")  # type: ignore[arg-type]


def test_restore_like_places_leaves_with_like_s_sharding() -> None:
    script = textwrap.dedent(
        """
        import tempfile, pathlib, warnings, jax, jax.numpy as jnp, numpy as np, optax
        import orbax.checkpoint as ocp
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        import optree_inspect as oi
        warnings.simplefilter("ignore")
        mesh = Mesh(np.array(jax.devices()), ("data",))
        rows = NamedSharding(mesh, P("data"))
        params = {"w": jax.device_put(jnp.ones((16, 4)), rows)}
        placed = lambda x: jax.device_put(x, rows) if x.ndim else x
        state = jax.tree.map(placed, optax.adam(1e-3).init(params))
        path = pathlib.Path(tempfile.mkdtemp()) / "sharded"
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(path, state)
        checkpointer.wait_until_finished()
        loaded = oi.load(path)
        print(tuple(oi.get(loaded, "mu.w").sharding.spec))
        back = oi.restore_like(oi.load(path, arrays=True), state)
        print(back[0].mu["w"].sharding.is_equivalent_to(rows, 2), len(oi.diff(state, back)))
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-c", script]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-2:] == ["('data',)", "True 0"]


# The command line ------------------------------------------------------------------------------


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = cli(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_each_subcommand_with_and_without_json(
    saved: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = saved["manager"]
    seed = str(saved["seed"][1])
    status, out, _ = _run(["describe", str(path)], capsys)
    assert status == 0 and "learning_rate: f32[] =" in out and "dict (ScaleByAdamState)" in out
    status, out, _ = _run(["describe", str(path), "--stats", "--json"], capsys)
    assert status == 0 and json.loads(out)["rows"][0]["path"] == ""
    status, out, _ = _run(["get", str(path), "learning_rate", "--step", "1"], capsys)
    assert status == 0 and out.strip() == "f32[] = 0"
    status, out, _ = _run(["get", "--json", str(path), "InjectStatefulHyperparamsState>count"], capsys)
    assert status == 0 and json.loads(out)["value"] == 3
    status, out, _ = _run(["find", str(path), "count", "--json"], capsys)
    assert status == 0 and len(json.loads(out)["matches"]) == 2
    status, out, _ = _run(["hyperparams", str(path), "--counters"], capsys)
    assert status == 0 and "ScaleByAdamState.count: i32[] = 3" in out
    status, out, _ = _run(["hyperparams", str(path), "--json"], capsys)
    assert status == 0 and json.loads(out)["b1"] == pytest.approx(0.9)
    status, out, _ = _run(["check", seed], capsys)
    assert (status, out.strip()) == (0, "No findings.")
    status, out, _ = _run(["check", seed, "--json"], capsys)
    assert status == 0 and json.loads(out) == {"findings": []}
    status, out, _ = _run(["diff", str(path / "1"), str(path / "3"), "--json"], capsys)
    assert status == 1 and {row["kind"] for row in json.loads(out)["rows"]} == {"value"}
    status, out, _ = _run(["diff", seed, seed], capsys)
    assert (status, out.strip()) == (0, "No differences.")


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["get", "{path}", "nothing"], 1, "No node matches 'nothing'"),
        (["get", "{path}", "count"], 1, "'count' matches 2 nodes"),
        (["find", "{path}", "nothing"], 1, "No node matches"),
        (["get", "{path}", "["], 2, "Unclosed '['"),
        (["describe", "{path}", "--step", "9"], 2, "No step 9"),
        (["describe", "/nonexistent/checkpoint"], 2, "not a directory"),
        (["bogus"], 2, "invalid choice"),
        (["describe"], 2, "required"),
        ([], 2, "required"),
    ],
)
def test_bad_input_gives_its_exit_status_and_one_line(
    args: list[str], status: int, message: str, saved: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(saved["manager"][1])
    code, out, err = _run([arg.format(path=path) for arg in args], capsys)
    assert code == status and out == ""
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_an_ambiguous_get_suggests_queries_to_type_in_a_shell(
    saved: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(saved["manager"][1])
    code, _, err = _run(["get", path, "count"], capsys)
    suggestions = err.strip().split(": ", 2)[2].split("; ")
    assert code == 1 and len(suggestions) == 2 and "get(tree" not in err
    for suggestion in suggestions:
        [query] = shlex.split(suggestion.split(" -> ")[1])  # as a shell passes the word
        code, out, _ = _run(["get", path, query], capsys)
        assert code == 0 and out.startswith("i32[] = "), query


def test_a_finding_exits_with_1(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = oi.set(trained(seed_optimizer()), "mu.head.w", lambda x: x.at[0, 0].set(jnp.nan))
    code, out, _ = _run(["check", str(_save(tmp_path / "nan", state))], capsys)
    assert code == 1 and out.startswith("nonfinite: ")


def test_the_script_and_python_m_run_the_command_line(saved: dict[str, Any]) -> None:
    path = str(saved["seed"][1])
    script = pathlib.Path(sys.executable).parent / "optree-inspect"
    for command in ([str(script)], [sys.executable, "-m", "optree_inspect"]):
        if not pathlib.Path(command[0]).exists():
            continue
        result = subprocess.run([*command, "get", path, "b1"], capture_output=True, text=True, timeout=300)
        assert (result.returncode, result.stdout.strip()) == (0, "f32[] = 0.9"), result.stderr[-2000:]
        result = subprocess.run(
            [*command, "get", path, "nothing"], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 1 and result.stderr.count("\n") == 1


def test_layered_state_describe_fits_a_screen(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _save(tmp_path / "layered", seed_optimizer().init(layered_params(800)))
    code, out, _ = _run(["describe", str(path)], capsys)
    assert code == 0 and len(out.splitlines()) < 40


def test_the_fast_reading_agrees_with_orbax_s(saved: dict[str, Any]) -> None:
    from optree_inspect._checkpoint import _read_ocdbt_item

    for name, scalars in (("seed", True), ("train_state", True), ("seed", False)):
        _, path = saved[name]
        fast = _read_ocdbt_item(path, scalars=scalars)
        assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(fast)) is not scalars
        metadata = ocp.PyTreeCheckpointer().metadata(path)
        tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)
        is_meta = lambda node: hasattr(node, "shape") and hasattr(node, "dtype")  # noqa: E731
        assert jax.tree.structure(fast) == jax.tree.structure(tree, is_leaf=is_meta)
        described = [(tuple(np.shape(x)), np.dtype(x.dtype)) for x in jax.tree.leaves(fast)]
        assert described == [
            (tuple(m.shape), np.dtype(m.dtype)) for m in jax.tree.leaves(tree, is_leaf=is_meta)
        ]


def test_without_orbax_the_message_says_how_to_install_it(
    saved: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)  # as if not installed
    with pytest.raises(oi.CheckpointError, match=r"pip install 'optree_inspect\[orbax\]'"):
        oi.load(saved["seed"][1])
    code, out, err = _run(["describe", str(saved["seed"][1])], capsys)
    assert code == 2 and out == "" and "optree_inspect[orbax]" in err and err.count("\n") == 1
