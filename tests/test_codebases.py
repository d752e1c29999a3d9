"""States as other codebases hold them, each read live and restored without its types the same way:
praxis's NestedMaps, flax's FrozenDict, haiku's ImageNet chain with a final `scale(-1)`, AlgoPerf's
own `ScaleByAdamState` NamedTuple, and a flax `TrainState` read with `optimizer=`."""

from __future__ import annotations

import json
import pathlib
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.tree_util import DictKey

import optree_inspect as oi
from helpers import as_restored

ocp = pytest.importorskip("orbax.checkpoint")

PARAMS = {f"layer{i}": {"w": jnp.full((4, 4), i + 1.0), "b": jnp.zeros(4)} for i in range(12)}


def orbax_round_trip(tree: Any, directory: pathlib.Path) -> Any:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / "state", tree)
    checkpointer.wait_until_finished()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return checkpointer.restore(directory / "state")


def trained(tx: optax.GradientTransformation, steps: int = 2) -> Any:
    state = tx.init(PARAMS)
    for step in range(steps):
        grads = jax.tree.map(lambda p, step=step: jnp.full_like(p, 0.1 * (step + 1)), PARAMS)
        state = tx.update(grads, state, PARAMS)[1]
    return state


# praxis: optax states kept in NestedMaps ---------------------------------------------------------


class NestedMap(dict):
    """praxis's `py_utils.NestedMap` as it behaves here: a dict with attribute access, a pytree
    whose children are keyed by `DictKey`."""

    def __getattr__(self, name: str) -> Any:
        return self[name]


jax.tree_util.register_pytree_with_keys(
    NestedMap,
    lambda m: ([(DictKey(k), m[k]) for k in sorted(m)], tuple(sorted(m))),
    lambda keys, children: NestedMap(zip(keys, children, strict=True)),
)


def as_nested_maps(tree: Any) -> Any:
    """optax's states as praxis keeps them: each NamedTuple state a NestedMap of its fields."""
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return NestedMap({k: as_nested_maps(v) for k, v in tree._asdict().items()})
    if isinstance(tree, tuple | list):
        return type(tree)(as_nested_maps(v) for v in tree)
    if isinstance(tree, dict):
        return NestedMap({k: as_nested_maps(v) for k, v in tree.items()})
    return tree


TX = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=0.1))


def praxis_train_state(steps: int = 2) -> Any:
    opt_state = as_nested_maps(trained(TX, steps))
    return NestedMap(
        step=jnp.array(steps), mdl_vars=as_nested_maps(PARAMS), opt_states=[NestedMap(p=opt_state)]
    )


@pytest.mark.parametrize("form", ["live", "restored"])
def test_praxis_nested_maps_fold_only_params_shaped_parts(form: str) -> None:
    state = praxis_train_state()
    state = state if form == "live" else as_restored(state)
    text = str(oi.describe(state))
    assert "mdl_vars:" in text and "12 keys, 24 leaves" in text  # the params fold
    assert "(ScaleByAdamState)" in text and "count: i32[] = 2" in text, text
    assert "nu: like" in text
    live = oi.hyperparams(trained(TX), counters=True, optimizer=TX)
    found = oi.hyperparams(state, counters=True, optimizer=TX)
    assert set(found) == set(live) and "count" in found
    for key, value in live.items():
        np.testing.assert_array_equal(np.asarray(found[key]), np.asarray(value), err_msg=key)


def test_praxis_diff_check_and_stats_read_field_by_field() -> None:
    before, after = praxis_train_state(1), praxis_train_state(2)
    queries = {row.query for row in oi.diff(before, after).rows}
    assert "count" in queries and any(q.startswith("mu") for q in queries), queries
    assert "step" in queries
    assert oi.check(after).findings == ()
    stats = oi.stats(after)
    assert float(stats["count"]["max"]) == 2.0 and "mdl_vars" in stats


def test_a_frozen_dict_holding_optax_states_reads_them() -> None:
    core = pytest.importorskip("flax.core")
    state = core.FrozenDict({"opt": as_nested_maps(trained(TX)), "params": PARAMS})
    text = str(oi.describe(state))
    assert "ScaleByAdamState" in text and "count" in text and "nu: like" in text
    assert oi.hyperparams(state, counters=True) == oi.hyperparams(trained(TX), counters=True)


# haiku's ImageNet example: a final scale(-1) is a sign flip ------------------------------------


def _schedule(count: Any) -> Any:
    return 0.1 * 0.5 ** (count // 10)


HAIKU_TX = optax.chain(optax.trace(0.9), optax.scale_by_schedule(_schedule), optax.scale(-1))


@pytest.mark.parametrize("form", ["live", "restored"])
def test_a_users_final_sign_flip_is_no_hyperparameter(form: str) -> None:
    state = trained(HAIKU_TX, steps=12)
    state = state if form == "live" else as_restored(state)
    found = oi.hyperparams(state, optimizer=HAIKU_TX)
    assert found == {"momentum": 0.9, "step_size": pytest.approx(_schedule(12))}
    assert float(oi.get(state, "step_size", optimizer=HAIKU_TX)) == pytest.approx(0.05)
    assert "-1" not in str(oi.describe(state, optimizer=HAIKU_TX))


@pytest.mark.parametrize(
    ("tx", "expected"),
    [
        (optax.scale(-1), {}),
        (optax.chain(optax.scale(-1.0), optax.trace(0.5)), {"momentum": 0.5}),
        (optax.sgd(1.0), {"learning_rate": 1.0}),  # optax's alias: the rate, which happens to be 1
        (
            optax.chain(optax.trace(0.9), optax.scale(-0.5), optax.scale(-1)),
            {"momentum": 0.9, "step_size": -0.5},
        ),
    ],
)
def test_sign_flips_wherever_the_user_put_them(tx: optax.GradientTransformation, expected: dict) -> None:
    assert oi.hyperparams(trained(tx), optimizer=tx) == expected


# AlgoPerf's NAdamW: its own ScaleByAdamState ------------------------------------------------------


class ScaleByAdamState(NamedTuple):
    """AlgoPerf's copy of optax's state, defined in the user's own module."""

    count: Any
    mu: Any
    nu: Any


def scale_by_nadam(b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
    def init(params: Any) -> ScaleByAdamState:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ScaleByAdamState(jnp.zeros([], jnp.int32), zeros, zeros)

    def update(updates: Any, state: ScaleByAdamState, params: Any = None) -> Any:
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g**2, state.nu, updates)
        return updates, ScaleByAdamState(state.count + 1, mu, nu)

    return optax.GradientTransformation(init, update)


NADAMW = optax.chain(
    scale_by_nadam(), optax.add_decayed_weights(1e-4), optax.scale_by_schedule(lambda c: -1e-3 * 0.9**c)
)


def test_a_users_own_state_named_like_optaxs_reads_the_same_live_and_restored(tmp_path: pathlib.Path) -> None:
    state = trained(NADAMW, steps=3)
    restored = orbax_round_trip(state, tmp_path)
    live_counters = oi.hyperparams(state, counters=True)
    assert live_counters == oi.hyperparams(restored, counters=True)
    assert set(live_counters) == {"ScaleByAdamState.count", "ScaleByScheduleState.count"}
    assert int(live_counters["ScaleByAdamState.count"]) == 3
    for tree in (state, restored):
        text = str(oi.describe(tree))
        assert "ScaleByAdamState" in text and "nu: like" in text and "count: i32[] = 3" in text
    assert [m.path for m in oi.find(state, "ScaleByAdamState.count")] == [
        (
            jax.tree_util.SequenceKey(0),
            jax.tree_util.GetAttrKey("count"),
        )
    ]


def test_a_users_namedtuple_of_other_fields_is_no_state() -> None:
    class Box(NamedTuple):
        count: Any
        weights: Any

    tree = Box(jnp.array(1), {"w": jnp.ones(3)})
    assert oi.hyperparams(tree, counters=True) == {}


# a state restored without its types, read with optimizer= ----------------------------------------


def test_a_restored_train_state_reads_with_its_optimizer(tmp_path: pathlib.Path) -> None:
    train_state = pytest.importorskip("flax.training.train_state")
    tx = optax.MultiSteps(TX, 2)
    state = train_state.TrainState.create(apply_fn=None, params=PARAMS, tx=tx)
    restored = orbax_round_trip(
        {"step": state.step, "params": state.params, "opt_state": state.opt_state}, tmp_path
    )
    assert isinstance(restored, dict)
    live = oi.hyperparams(state, optimizer=tx)
    found = oi.hyperparams(restored, optimizer=tx)
    assert set(found) == set(live) and "weight_decay" in found
    for key, value in live.items():
        np.testing.assert_array_equal(np.asarray(found[key]), np.asarray(value))


def test_the_command_line_reads_a_users_own_state(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from optree_inspect._cli import main as cli

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "nadamw", trained(NADAMW, steps=3))
    checkpointer.wait_until_finished()
    assert cli(["describe", str(tmp_path / "nadamw")]) == 0
    text = capsys.readouterr().out
    assert "(ScaleByAdamState)" in text and "nu: like" in text
    assert cli(["hyperparams", str(tmp_path / "nadamw"), "--counters", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {
        "ScaleByAdamState.count",
        "ScaleByScheduleState.count",
    }
