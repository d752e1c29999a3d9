"""`first_bad` and `optree-inspect check --first-bad` on real training runs saved by orbax's
`CheckpointManager` every step, a NaN or Inf gradient planted at a known step (docs/first-bad.md)."""

from __future__ import annotations

import json
import math
import pathlib
import shutil
import subprocess
import sys
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import optree_inspect as oi
from optree_inspect._cli import main as cli
from optree_inspect._first_bad import FirstBad, first_bad

# orbax's callbacks report a failed read late, after the test that made it
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

STEPS = 12
X = jnp.linspace(-1.0, 1.0, 32).reshape(8, 4)
Y = jnp.ones((8, 2))


def _loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    hidden = jnp.tanh(x @ params["dense"]["w"] + params["dense"]["b"])
    return jnp.mean((hidden @ params["head"]["w"] - y) ** 2)


def _train(
    path: pathlib.Path, steps: int, bad_at: int | None, bad: float = math.nan, items: bool = False
) -> pathlib.Path:
    """Train a tiny model with adam, saving every step; at step `bad_at` one gradient element is
    `bad`. With `items`, each step saves two items, `params` and `opt_state`."""
    params = {"dense": {"w": jnp.full((4, 3), 0.1), "b": jnp.zeros(3)}, "head": {"w": jnp.full((3, 2), 0.1)}}
    tx = optax.adam(1e-2)
    state = tx.init(params)
    grad = jax.jit(jax.grad(_loss))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ocp.CheckpointManager(path) as manager:
            for step in range(steps):
                grads = grad(params, X, Y)
                if step == bad_at:
                    grads["head"]["w"] = grads["head"]["w"].at[0, 0].set(bad)
                updates, state = tx.update(grads, state, params)
                params = optax.apply_updates(params, updates)
                if items:
                    args: Any = ocp.args.Composite(
                        params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(state)
                    )
                else:
                    args = ocp.args.StandardSave({"params": params, "opt_state": state})
                manager.save(step, args=args)
            manager.wait_until_finished()
    return path


def _bound(steps: int) -> int:
    return math.ceil(math.log2(steps)) + 1


def _check_findings(path: pathlib.Path, step: int) -> list[tuple[Any, ...]]:
    """The `nonfinite` findings `oi.check` makes on the step read whole."""
    report = oi.check(oi.load(path, step=step, arrays=True))
    return [(f.kind, f.path, f.query, f.message) for f in report if f.kind == "nonfinite"]


def _findings(found: FirstBad) -> list[tuple[Any, ...]]:
    return [(f.kind, f.path, f.query, f.message) for f in found.report]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "nan at 7": _train(root / "nan7", STEPS, 7),
        "nan at 0": _train(root / "nan0", 5, 0),
        "nan at 4 (last)": _train(root / "nan4", 5, 4),
        "never": _train(root / "never", 5, None),
        "inf at 2": _train(root / "inf2", 6, 2, bad=math.inf),
        "items, nan at 3": _train(root / "items3", 6, 3, items=True),
    }


def _symlinked(root: pathlib.Path, sources: list[pathlib.Path]) -> pathlib.Path:
    """A run whose step s is `sources[s]` (a step directory of another run)."""
    root.mkdir()
    for step, source in enumerate(sources):
        (root / str(step)).symlink_to(source, target_is_directory=True)
    return root


# The step, and how many steps are read -------------------------------------------------------


def test_the_first_bad_step_of_a_run_is_found_in_few_reads(runs: dict[str, pathlib.Path]) -> None:
    path = runs["nan at 7"]
    found = first_bad(path)
    assert found.step == 7
    assert len(found.steps_read) <= _bound(STEPS)
    assert found.steps_read[0] == STEPS - 1  # the last step first
    assert len(set(found.steps_read)) == len(found.steps_read)
    assert 7 in found.steps_read and 6 in found.steps_read  # the step, and the one before it, read
    assert _findings(found) == _check_findings(path, 7) != []
    assert [f.query for f in found.report][:2] == ["mu.head.w", "nu.head.w"]
    assert "1 NaN in 6 elements (f32[3,2])" in str(found.report)
    assert not oi.check(oi.load(path, step=6, arrays=True))  # the step before holds none


@pytest.mark.parametrize(
    ("run", "step", "steps"), [("nan at 0", 0, 5), ("nan at 4 (last)", 4, 5), ("never", None, 5)]
)
def test_nan_at_the_first_step_at_the_last_or_never(
    run: str, step: int | None, steps: int, runs: dict[str, pathlib.Path]
) -> None:
    found = first_bad(runs[run])
    assert found.step == step
    assert len(found.steps_read) <= _bound(steps)
    if step is None:
        assert found.steps_read == [steps - 1] and not found.report and str(found.report) == "No findings."
        assert found.steps[0].leaves == 10 and found.steps[0].nonfinite_leaves == 0
    else:
        assert _findings(found) == _check_findings(runs[run], step) != []


def test_an_inf_is_found_as_a_nan_is(runs: dict[str, pathlib.Path]) -> None:
    found = first_bad(runs["inf at 2"])
    assert found.step == 2 and len(found.steps_read) <= _bound(6)
    assert _findings(found) == _check_findings(runs["inf at 2"], 2)
    messages = [f.message for f in found.report]
    assert "1 Inf in 6 elements (f32[3,2])" in messages  # the moments hold the Inf
    assert any("NaN" in message for message in messages)  # inf / inf: the parameter is NaN


def test_a_step_of_several_items_is_bad_where_any_item_is(runs: dict[str, pathlib.Path]) -> None:
    path = runs["items, nan at 3"]
    assert sorted(p.name for p in (path / "3").iterdir() if p.is_dir()) == ["opt_state", "params"]
    found = first_bad(path)
    assert found.step == 3 and len(found.steps_read) <= _bound(6)
    assert _findings(found) == _check_findings(path, 3)
    items = {jax.tree_util.DictKey("opt_state"), jax.tree_util.DictKey("params")}
    assert {f.path[0] for f in found.report} == items


@pytest.mark.parametrize("steps", [1, 2, 5, 12, 17])
def test_every_first_bad_step_of_a_run_is_found_within_the_bound(
    steps: int, runs: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    good, bad = runs["nan at 7"] / "0", runs["nan at 7"] / "9"
    for first in [*range(steps), None]:
        sources = [bad if first is not None and s >= first else good for s in range(steps)]
        found = first_bad(_symlinked(tmp_path / f"first{first}", sources))
        assert found.step == first, (steps, first, found.steps_read)
        assert len(found.steps_read) <= _bound(steps), (steps, first, found.steps_read)


def test_every_step_reads_them_all_and_is_exact_where_the_assumption_fails(
    runs: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    good, bad = runs["nan at 7"] / "0", runs["nan at 7"] / "9"
    recovered = _symlinked(tmp_path / "recovered", [good, good, good, bad, good, good, good, good])
    assert first_bad(recovered).step is None  # the last step is finite: bisection trusts it
    found = first_bad(recovered, every_step=True)
    assert found.step == 3 and found.steps_read == list(range(8))
    assert [read.nonfinite_leaves > 0 for read in found.steps] == [s == 3 for s in range(8)]
    assert all(read.complete for read in found.steps)
    lines = str(found).splitlines()
    assert lines[0] == "step 0: no NaN or Inf in 10 leaves"
    assert lines[3].startswith("step 3: ") and "non-finite leaves" in lines[3]
    assert lines[8] == "First bad step: 3" and lines[-1] == "Steps read: 0, 1, 2, 3, 4, 5, 6, 7 (8 of 8)"


# Reading: chunks, integers, layouts -----------------------------------------------------------


def _one_item_run(root: pathlib.Path, states: list[Any], handler: Any = None) -> pathlib.Path:
    """A run of one item a step, each saved with `handler` (default: orbax's standard layout)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step, state in enumerate(states):
            checkpointer = ocp.Checkpointer(handler) if handler is not None else ocp.StandardCheckpointer()
            checkpointer.save(root / str(step) / "default", state)
            getattr(checkpointer, "wait_until_finished", lambda: None)()
    return root


def _large(nan: list[int], inf: list[int]) -> dict[str, Any]:
    w = np.zeros((512, 512), np.float32)
    w.ravel()[nan] = np.nan
    w.ravel()[inf] = np.inf
    return {"w": w, "count": np.arange(512 * 512, dtype=np.int32), "b": np.ones(7, np.float32)}


def test_a_large_array_is_read_in_slices_no_larger_than_the_bound(tmp_path: pathlib.Path) -> None:
    nan, inf = [5, 200_000, 262_143], [70_000, 140_000]  # in different slices of 64 KiB
    run = _one_item_run(tmp_path / "run", [_large([], []), _large(nan, inf)])
    found = first_bad(run, chunk_bytes=64 * 1024)
    assert found.step == 1
    for read in found.steps:
        assert read.largest_read <= 64 * 1024
        assert read.reads >= 512 * 512 * 4 // (64 * 1024) + 1  # the 1 MB array in 16 slices, and `b`
    last = found.steps[0]
    assert (last.nonfinite_leaves, last.nan, last.inf) == (1, 3, 2)
    assert [f.message for f in found.report] == ["3 NaN and 2 Inf in 262,144 elements (f32[512,512])"]
    whole = first_bad(run)  # the default bound: each array in one read
    assert whole.step == 1 and whole.steps[0].reads == 2 and whole.steps[0].largest_read == 512 * 512 * 4


def test_an_array_saved_in_small_chunks_is_read_a_chunk_at_a_time(tmp_path: pathlib.Path) -> None:
    w = np.zeros((512, 512), np.float32)
    w[300, 7] = np.nan
    save = ocp.args.PyTreeSave({"w": w}, save_args={"w": ocp.SaveArgs(chunk_byte_size=64 * 1024)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ocp.PyTreeCheckpointer().save(tmp_path / "run" / "0" / "default", args=save)
    found = first_bad(tmp_path / "run", chunk_bytes=256 * 1024)  # chunks of 128 x 128 floats
    assert found.step == 0 and found.steps[0][2:] == (1, 1, 0, 16, 64 * 1024, True)


def test_a_read_holds_one_element_at_least(tmp_path: pathlib.Path) -> None:
    w = np.ones((8, 8), np.float32)
    w[3, 5] = np.nan
    found = first_bad(_one_item_run(tmp_path / "run", [{"w": w}]), chunk_bytes=1)
    assert found.step == 0
    assert (found.steps[0].reads, found.steps[0].largest_read, found.steps[0].nan) == (64, 4, 1)


def test_integer_and_bool_arrays_are_never_read(tmp_path: pathlib.Path) -> None:
    state = {
        "count": np.arange(10_000, dtype=np.int32),
        "mask": np.ones(100, bool),
        "w": np.ones(3, np.float32),
    }
    found = first_bad(_one_item_run(tmp_path / "run", [state]))
    assert found.step is None and found.steps[0].reads == 1 and found.steps[0].largest_read == 12


def test_half_precision_arrays_are_counted_as_check_counts_them(tmp_path: pathlib.Path) -> None:
    state = {
        "h": jnp.array([1.0, jnp.nan, jnp.inf, 2.0], jnp.bfloat16),
        "f": jnp.array([[jnp.nan, 0.0], [-jnp.inf, jnp.nan]], jnp.float16),
    }
    run = _one_item_run(tmp_path / "run", [state])
    found = first_bad(run, chunk_bytes=4)  # two bf16 or f16 elements a read
    assert found.step == 0 and found.steps[0].largest_read == 4
    assert _findings(found) == _check_findings(run, 0)
    assert [f.message for f in found.report] == [
        "2 NaN and 1 Inf in 4 elements (f16[2,2])",
        "1 NaN and 1 Inf in 4 elements (bf16[4])",
    ]


@pytest.mark.parametrize(
    "layout",
    [
        "ocdbt",
        "zarr",  # a directory an array
        "zarr3",  # another layout: read through orbax
    ],
)
def test_each_layout_gives_the_same_answer(layout: str, tmp_path: pathlib.Path) -> None:
    handlers = {
        "ocdbt": None,
        "zarr": ocp.PyTreeCheckpointHandler(use_ocdbt=False),
        "zarr3": ocp.PyTreeCheckpointHandler(use_zarr3=True),
    }
    states = [_large([], []), _large([], []), _large([9], [10]), _large([9], [10])]
    run = _one_item_run(tmp_path / layout, states, handlers[layout])
    found = first_bad(run, chunk_bytes=256 * 1024)
    assert found.step == 2 and len(found.steps_read) <= _bound(4)
    assert _findings(found) == _check_findings(run, 2)
    if layout == "zarr3":  # orbax reads a leaf at a time, the 1 MB array alone
        assert found.steps[0].reads == 2 and found.steps[0].largest_read == 512 * 512 * 4
    else:
        assert found.steps[0].largest_read <= 256 * 1024


# Errors ---------------------------------------------------------------------------------------


def test_a_path_with_no_steps_is_a_checkpoint_error(
    runs: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    (tmp_path / "empty").mkdir()
    for path, message in [
        (tmp_path / "empty", "holds no steps"),
        (tmp_path / "missing", "not a directory"),
        (runs["never"] / "2", "holds no steps"),  # a step directory
        (runs["never"] / "2" / "default", "one saved item, with no steps"),
    ]:
        with pytest.raises(oi.CheckpointError, match=message):
            first_bad(path)


DAMAGES = [
    ("not JSON", lambda p: (p / "_METADATA").write_text("{not json")),
    ("no manifest.ocdbt", lambda p: (p / "manifest.ocdbt").unlink()),
    ("no database files", lambda p: [shutil.rmtree(d) for d in list(p.rglob("d")) if d.is_dir()]),
    (
        "database files corrupt",
        lambda p: [f.write_bytes(b"junk") for f in list(p.rglob("d/*")) if f.is_file()],
    ),
]


@pytest.mark.parametrize(("name", "damage"), DAMAGES, ids=[d[0] for d in DAMAGES])
def test_a_damaged_step_is_a_checkpoint_error(
    name: str, damage: Any, runs: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "run"
    shutil.copytree(runs["never"], path, symlinks=True)
    damage(path / "4" / "default")
    with pytest.raises(oi.CheckpointError, match=r"Damaged checkpoint at .*4.default"):
        first_bad(path)


def test_a_zarr_chunk_missing_is_damage_not_zeros(tmp_path: pathlib.Path) -> None:
    run = _one_item_run(tmp_path / "run", [_large([], [])], ocp.PyTreeCheckpointHandler(use_ocdbt=False))
    (run / "0" / "default" / "w" / "0.0").unlink()
    with pytest.raises(oi.CheckpointError, match="Damaged checkpoint"):
        first_bad(run)


@pytest.mark.parametrize(
    "arguments",
    [
        {"path": 3},
        {"every_step": "yes"},
        {"chunk_bytes": 0},
        {"chunk_bytes": True},
        {"chunk_bytes": 1.5},
        {"progress": "auto"},
    ],
)
def test_a_bad_argument_is_an_invalid_argument_error(
    arguments: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    path = arguments.pop("path", tmp_path)
    with pytest.raises(oi.InvalidArgumentError, match=r"^first_bad: \w+ must be"):
        first_bad(path, **arguments)


# The command line -----------------------------------------------------------------------------


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = cli(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_command_prints_the_step_its_findings_and_the_steps_read(
    runs: dict[str, pathlib.Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = runs["nan at 7"]
    status, out, err = _run(["check", str(path), "--first-bad"], capsys)
    found = first_bad(path)
    assert (status, err) == (1, "")
    lines = out.splitlines()
    assert lines[0] == "First bad step: 7"
    assert "\n".join(lines[1:-1]) == str(found.report)  # as `check` prints them
    assert lines[-1] == f"Steps read: {', '.join(map(str, found.steps_read))} ({len(found.steps_read)} of 12)"
    status, out, err = _run(["check", str(runs["never"]), "--first-bad"], capsys)
    assert (status, err) == (0, "")
    assert out == "No NaN or Inf in the last step, 4, so in none before it.\nSteps read: 4 (1 of 5)\n"


def test_the_command_s_json(runs: dict[str, pathlib.Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = runs["nan at 7"]
    status, out, _ = _run(["check", str(path), "--first-bad", "--json"], capsys)
    document = json.loads(out)
    assert status == 1 and set(document) == {"first_bad_step", "steps_read", "findings"}
    assert document["first_bad_step"] == 7 and document["steps_read"] == first_bad(path).steps_read
    assert [tuple(f.values()) for f in document["findings"]] == [
        (kind, oi.keystr(where), query, message) for kind, where, query, message in _check_findings(path, 7)
    ]
    assert all(list(f) == ["kind", "path", "query", "message"] for f in document["findings"])
    status, out, _ = _run(["check", str(path), "--first-bad", "--all", "--json"], capsys)
    document = json.loads(out)
    assert status == 1 and set(document) == {"first_bad_step", "steps_read", "findings", "steps"}
    assert document["steps_read"] == list(range(STEPS))
    assert [s["step"] for s in document["steps"]] == list(range(STEPS))
    assert all(list(s) == ["step", "leaves", "nonfinite_leaves", "nan", "inf"] for s in document["steps"])
    assert [s["nonfinite_leaves"] > 0 for s in document["steps"]] == [s >= 7 for s in range(STEPS)]
    status, out, _ = _run(["check", str(runs["never"]), "--first-bad", "--json"], capsys)
    assert (status, json.loads(out)) == (0, {"first_bad_step": None, "steps_read": [4], "findings": []})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--all"], "--all goes with --first-bad"),
        (["--quiet"], "--quiet goes with --first-bad"),
        (["--first-bad", "--step", "3"], "leave out --step"),
    ],
)
def test_the_command_s_usage_errors(
    args: list[str], message: str, runs: dict[str, pathlib.Path], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = _run(["check", str(runs["never"]), *args], capsys)
    assert (status, out) == (2, "") and message in err and err.count("\n") == 1


def test_the_command_s_checkpoint_errors(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    status, out, err = _run(["check", str(tmp_path / "empty"), "--first-bad"], capsys)
    assert (status, out) == (2, "") and "holds no steps" in err and err.count("\n") == 1


# Progress -------------------------------------------------------------------------------------


def test_progress_goes_to_stderr_only_when_asked_or_on_a_terminal(
    runs: dict[str, pathlib.Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = runs["nan at 7"]
    first_bad(path)  # stderr is no terminal here
    assert capsys.readouterr().err == ""
    first_bad(path, progress=True)
    assert "first bad" in capsys.readouterr().err
    first_bad(path, progress=False)
    assert capsys.readouterr().err == ""


def test_the_script_writes_nothing_to_stderr_in_a_pipe(runs: dict[str, pathlib.Path]) -> None:
    for extra in ([], ["--all"]):
        done = subprocess.run(
            [sys.executable, "-m", "optree_inspect", "check", str(runs["nan at 7"]), "--first-bad", *extra],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert (done.returncode, done.stderr) == (1, ""), done.stderr[-2000:]
        assert "First bad step: 7" in done.stdout
