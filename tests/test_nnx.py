"""flax nnx states in every form users hold: the live `nnx.Optimizer`, `nnx.state(optimizer)` (what
flax's checkpointing guide saves), its `OptState` part, `nnx.to_pure_dict` and `nnx.as_pure`, and
their orbax checkpoints restored with and without a target. Each answers as the live optimizer does.

A training loop as flax's guide writes it: `nnx.Optimizer`, a jitted step, an orbax
`CheckpointManager` saving `nnx.state(optimizer)` each step, a restore into `nnx.state` of a fresh
model, and a raw restore (no target: tuples as dicts of str keys, each Variable as `{"value": x}`).
"""

from __future__ import annotations

import inspect
import json
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optree_inspect as oi

nnx = pytest.importorskip("flax.nnx")
ocp = pytest.importorskip("orbax.checkpoint")


STEPS = (1, 2, 3)
UPDATE_TAKES_MODEL = "model" in inspect.signature(nnx.Optimizer.update).parameters
if not UPDATE_TAKES_MODEL:
    pytest.skip(
        "before flax 0.11 an nnx.Optimizer holds its model and is no pytree (docs/compatibility.md)",
        allow_module_level=True,
    )


class Model(nnx.Module):
    def __init__(self, rngs: Any) -> None:
        self.l1 = nnx.Linear(3, 4, rngs=rngs)
        self.l2 = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x: Any) -> Any:
        return self.l2(jax.nn.relu(self.l1(x)))


def make_optimizer() -> optax.GradientTransformation:
    """Hyperparameters held three ways: injected (`b1`), in closures (`max_norm`, `weight_decay`,
    `eps`), and a schedule in a closure (the learning rate)."""
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.inject_hyperparams(optax.adamw)(
            learning_rate=optax.linear_schedule(1e-3, 0.0, 100), b1=0.9, weight_decay=1e-4
        ),
        optax.scale_by_schedule(optax.cosine_decay_schedule(1.0, 50)),
    )


def fresh(seed: int = 0) -> Any:
    return nnx.Optimizer(Model(nnx.Rngs(seed)), make_optimizer(), wrt=nnx.Param)


def _opt_state_part(optimizer: Any) -> Any:
    kind = getattr(getattr(nnx, "optimizer", None), "OptState", None)
    return nnx.state(optimizer, kind) if kind is not None else None


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three training steps, each saved; the forms of the last step, and the raw restores."""
    model = Model(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, make_optimizer(), wrt=nnx.Param)

    @nnx.jit
    def train_step(model: Any, optimizer: Any, x: Any) -> None:
        grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
        optimizer.update(model, grads)

    directory = tmp_path_factory.mktemp("nnx") / "run"
    options = ocp.CheckpointManagerOptions(max_to_keep=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ocp.CheckpointManager(directory, options=options) as manager:
            for step in STEPS:
                train_step(model, optimizer, jnp.ones((2, 3)) * step)
                manager.save(step, args=ocp.args.StandardSave(nnx.state(optimizer)))
            manager.wait_until_finished()
        target = nnx.state(fresh(1))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        with ocp.CheckpointManager(directory, options=options) as manager:
            targets = {step: manager.restore(step, args=ocp.args.StandardRestore(abstract)) for step in STEPS}
            raws = {step: manager.restore(step, args=ocp.args.StandardRestore()) for step in STEPS}
    state = nnx.state(optimizer)
    forms: dict[str, Any] = {
        "live": optimizer,
        "nnx.state": state,
        "to_pure_dict": nnx.to_pure_dict(state),
        "raw restore": raws[STEPS[-1]],
        "target restore": targets[STEPS[-1]],
    }
    if _opt_state_part(optimizer) is not None:
        forms["OptState part"] = _opt_state_part(optimizer)
    if hasattr(nnx, "as_pure"):
        forms["as_pure"] = nnx.as_pure(state)
    return {
        "forms": forms,
        "raws": raws,
        "targets": targets,
        "directory": directory,
        "live": optimizer,
        "target": target,
    }


FORMS = ("nnx.state", "OptState part", "to_pure_dict", "as_pure", "raw restore", "target restore")


def form(run: dict[str, Any], name: str) -> Any:
    if name not in run["forms"]:
        pytest.skip(f"this flax has no {name}")
    return run["forms"][name]


def _arrays(tree: Any) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


@pytest.mark.parametrize("name", FORMS)
def test_optimizer_reading_is_the_live_optimizers(run: dict[str, Any], name: str) -> None:
    tx = make_optimizer()
    live = oi.hyperparams(run["live"], optimizer=tx, counters=True)
    found = oi.hyperparams(form(run, name), optimizer=tx, counters=True)
    assert set(found) == set(live)
    for key, value in live.items():
        np.testing.assert_array_equal(np.asarray(found[key]), np.asarray(value), err_msg=key)
    assert {"max_norm", "weight_decay", "b1", "eps"} <= set(live)


@pytest.mark.parametrize("name", FORMS)
def test_injected_hyperparameters_and_counters_keep_their_live_keys(run: dict[str, Any], name: str) -> None:
    live = oi.hyperparams(run["live"], counters=True)
    found = oi.hyperparams(form(run, name), counters=True)
    assert list(found) == list(live) and "learning_rate" in found
    assert all(isinstance(value, jax.Array) for value in found.values())  # never a Variable
    np.testing.assert_array_equal(found["learning_rate"], live["learning_rate"])


@pytest.mark.parametrize("name", FORMS)
def test_get_and_find_return_arrays_not_variables(run: dict[str, Any], name: str) -> None:
    state = form(run, name)
    value = oi.get(state, "b1")
    assert isinstance(value, jax.Array) and float(value) == pytest.approx(0.9)
    mu = oi.get(state, "mu")
    assert not any(oi._leaf.is_variable(leaf) for leaf in jax.tree.leaves(mu, is_leaf=oi._leaf.is_variable))
    assert not any(oi._leaf.is_restored_variable(node) for node in _nodes(mu))
    live_mu = oi.get(run["live"], "mu")
    assert [a.shape for a in _arrays(mu)] == [a.shape for a in _arrays(live_mu)]
    for a, b in zip(_arrays(mu), _arrays(live_mu), strict=True):
        np.testing.assert_array_equal(a, b)
    [match] = oi.find(state, "b1")
    assert "\n" not in repr(match)


def _nodes(tree: Any) -> list[Any]:
    found: list[Any] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        if isinstance(node, dict):
            stack.extend(node.values())
    return found


def test_variables_stay_reachable(run: dict[str, Any]) -> None:
    state = run["forms"]["nnx.state"]
    variable = oi.get(state, "b1", variables=True)
    assert oi._leaf.is_variable(variable)
    [match] = oi.find(state, "b1", variables=True)
    assert "\n" not in repr(match) and type(variable).__name__ in repr(match)
    [(inside, _)] = jax.tree_util.tree_flatten_with_path(variable)[0]
    value_path = (*match.path, *inside)  # the Variable's own path, then `.value`
    assert isinstance(oi.get(state, value_path), jax.Array)


@pytest.mark.parametrize("name", FORMS)
def test_describe_reads_the_optax_states_inside(run: dict[str, Any], name: str) -> None:
    text = str(oi.describe(form(run, name)))
    assert "ScaleByAdamState" in text and "nu: like" in text, text
    assert "InjectHyperparamsState" in text or "InjectStatefulHyperparamsState" in text
    assert "learning_rate: " in text
    assert "{'value'" not in text and "value: " not in text  # a restored Variable is one line


@pytest.mark.parametrize("name", FORMS)
def test_restore_like_fits_a_raw_restore_into_every_form(run: dict[str, Any], name: str) -> None:
    like = form(run, name)
    raw = run["raws"][STEPS[-1]]
    restored = oi.restore_like(raw, like)
    assert type(restored) is type(like)
    assert jax.tree.structure(restored) == jax.tree.structure(like)
    for a, b in zip(_arrays(restored), _arrays(run["forms"]["nnx.state"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_restore_like_into_a_fresh_models_state(run: dict[str, Any]) -> None:
    restored = oi.restore_like(run["raws"][STEPS[-1]], run["target"])
    optimizer = fresh(1)
    nnx.update(optimizer, restored)
    live = oi.hyperparams(run["live"], counters=True)
    for key, value in oi.hyperparams(optimizer, counters=True).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(live[key]))


FIRST_STEP_FORMS = {
    "nnx.state": lambda run: run["targets"][STEPS[0]],
    "raw restore": lambda run: run["raws"][STEPS[0]],
    "to_pure_dict": lambda run: nnx.to_pure_dict(run["targets"][STEPS[0]]),
}


@pytest.mark.parametrize("name", sorted(FIRST_STEP_FORMS))
def test_diff_between_steps_is_field_by_field(run: dict[str, Any], name: str) -> None:
    before, after = FIRST_STEP_FORMS[name](run), form(run, name)
    changed = {row.query for row in oi.diff(before, after).rows}
    assert {"ScaleByScheduleState.count", "inner_state.count", "learning_rate"} <= changed, changed
    assert any(query.startswith("mu.") for query in changed), changed
    assert not any(query.endswith(".value") for query in changed) and "" not in changed, changed
    assert str(oi.diff(after, after)) == "No differences."


def test_diff_across_forms_compares_the_values_variables_hold(run: dict[str, Any]) -> None:
    """A raw restore, `nnx.state` and `to_pure_dict` of one step hold the same values."""
    forms = run["forms"]
    pairs = [("raw restore", "nnx.state"), ("nnx.state", "to_pure_dict"), ("raw restore", "target restore")]
    for a, b in pairs:
        rows = oi.diff(forms[a], forms[b]).rows
        assert all(row.kind == "type" and row.query == "" for row in rows), (a, b, rows)


@pytest.mark.parametrize("name", ["raw restore", "nnx.state", "to_pure_dict"])
def test_set_under_jit_writes_the_value_a_variable_holds(run: dict[str, Any], name: str) -> None:
    state = form(run, name)
    updated = jax.jit(lambda s: oi.set(s, "b1", 0.5))(state)
    assert float(oi.get(updated, "b1")) == 0.5 and float(oi.get(state, "b1")) == pytest.approx(0.9)
    assert jax.tree.structure(updated) == jax.tree.structure(state)


@pytest.mark.parametrize("name", FORMS)
def test_check_and_stats_read_every_form(run: dict[str, Any], name: str) -> None:
    state = form(run, name)
    assert [f.kind for f in oi.check(state).findings] == [f.kind for f in oi.check(run["live"]).findings]

    def maxima(tree: Any) -> list[float]:
        return sorted(float(entry["max"]) for entry in oi.stats(tree).values())

    assert maxima(state) == maxima(run["live"])


def test_the_command_line_reads_the_managers_checkpoints(
    run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from optree_inspect._cli import main as cli

    step = run["directory"] / str(STEPS[-1])
    assert cli(["describe", str(step)]) == 0
    text = capsys.readouterr().out
    assert "ScaleByAdamState" in text and "nu: like" in text and "learning_rate" in text
    assert cli(["get", str(step), "b1"]) == 0
    assert "0.9" in capsys.readouterr().out
    assert cli(["hyperparams", str(step), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert set(found) == set(oi.hyperparams(run["live"]))
    assert cli(["diff", str(run["directory"] / str(STEPS[0])), str(step)]) in (0, 1)
    assert "mu" in capsys.readouterr().out


def test_load_reads_the_managers_checkpoint_as_the_raw_restore(run: dict[str, Any]) -> None:
    loaded = oi.load(run["directory"], arrays=True)  # the latest step
    assert oi.hyperparams(loaded, counters=True).keys() == oi.hyperparams(run["live"], counters=True).keys()
    tx = make_optimizer()
    assert oi.hyperparams(loaded, optimizer=tx).keys() == oi.hyperparams(run["live"], optimizer=tx).keys()
    abstract = oi.load(run["directory"])  # arrays as ShapeDtypeStruct, scalars read
    assert "ScaleByAdamState" in str(oi.describe(abstract))
    restored = oi.restore_like(loaded, run["target"])
    assert str(oi.diff(restored, run["forms"]["nnx.state"])) == "No differences."


def test_a_module_holding_the_model_and_its_optimizer_folds_only_params() -> None:
    """`nnx.state` of a trainer Module: the model's params fold, the optimizer's states do not."""

    class Trainer(nnx.Module):
        def __init__(self) -> None:
            self.model = Model(nnx.Rngs(0))
            self.optimizer = nnx.Optimizer(self.model, make_optimizer(), wrt=nnx.Param)

    trainer = Trainer()
    state = nnx.state(trainer)
    text = str(oi.describe(state))
    assert "ScaleByAdamState" in text and "learning_rate: " in text and "nu: like" in text, text
    tx = make_optimizer()
    live = oi.hyperparams(trainer.optimizer, optimizer=tx, counters=True)
    found = oi.hyperparams(state, optimizer=tx, counters=True)
    assert set(found) == set(live)
    for key, value in live.items():
        np.testing.assert_array_equal(np.asarray(found[key]), np.asarray(value), err_msg=key)


def _labels(params: Any) -> Any:
    return jax.tree.map_with_path(
        lambda path, _: "train" if "kernel" in jax.tree_util.keystr(path) else "freeze", params
    )


OPTIMIZERS = {
    "sgd with momentum (no counter)": lambda: optax.sgd(0.1, momentum=0.9),
    "rmsprop": lambda: optax.rmsprop(1e-3),
    "a frozen group (multi_transform with set_to_zero)": lambda: optax.multi_transform(
        {"train": optax.adam(1e-3), "freeze": optax.set_to_zero()}, _labels
    ),
    "named_chain with a stateless member": lambda: optax.named_chain(
        ("clip", optax.clip(1.0)), ("adam", optax.adam(1e-3))
    ),
    "MultiSteps (its empty skip_state left out)": lambda: optax.MultiSteps(
        optax.adam(1e-3), every_k_schedule=4
    ),
    "adafactor (its final sign flip)": lambda: optax.adafactor(1e-3),
    "inject_hyperparams without schedules": lambda: optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizers_whose_empty_states_nnx_leaves_out(name: str, tmp_path: Any) -> None:
    """`nnx.state` leaves out every empty state: chain positions, named_chain members, partition
    groups, fields such as `skip_state`. Every form still reads as the live optimizer."""
    tx = OPTIMIZERS[name]()
    optimizer = nnx.Optimizer(Model(nnx.Rngs(0)), tx, wrt=nnx.Param)
    state = nnx.state(optimizer)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", state)
    checkpointer.wait_until_finished()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = checkpointer.restore(tmp_path / "state")
    live = oi.hyperparams(optimizer, optimizer=tx, counters=True)
    for tree in (state, state["opt_state"], raw):
        found = oi.hyperparams(tree, optimizer=tx, counters=True)
        assert sorted(map(str, found.values())) == sorted(map(str, live.values())), (found, live)
    assert "step_size" not in oi.hyperparams(state, optimizer=tx)


def test_a_raw_checkpoint_with_other_items_reads_its_nnx_part_as_variables(
    run: dict[str, Any], tmp_path: Any
) -> None:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "both", {"opt": run["forms"]["nnx.state"], "epoch": 3})
    checkpointer.wait_until_finished()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = checkpointer.restore(tmp_path / "both")
    kernel = oi.get(raw, "mu.l1.kernel")
    np.testing.assert_array_equal(kernel, oi.get(run["live"], "mu.l1.kernel"))
    assert int(oi.get(raw, "epoch")) == 3
    zeroed = oi.set(raw, "mu.l1.kernel", lambda w: w * 0)  # the function gets the array
    assert not np.any(np.asarray(oi.get(zeroed, "mu.l1.kernel")))
    doubled = oi.set(raw, "mu", lambda mu: jax.tree.map(lambda w: w * 2, mu))  # a subtree of arrays
    np.testing.assert_array_equal(oi.get(doubled, "mu.l1.kernel"), 2 * np.asarray(kernel))
    assert jax.tree.structure(doubled) == jax.tree.structure(raw)
    assert "value:" not in str(oi.describe(raw))


def test_value_dicts_of_other_trees_are_plain_dicts() -> None:
    """A params tree of the user's with a key `value` (not every leaf so held): no Variable."""
    state = optax.adam(1.0).init({"a": {"value": jnp.ones(2)}, "b": jnp.ones(1)})
    assert oi.get(state, "mu.a") == {"value": oi.get(state, "mu.a.value")}
    with pytest.raises(oi.StructureError):
        oi.set(state, "mu.a", 5.0)
