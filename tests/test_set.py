"""set: functional, jit-safe, schedule-aware edits (docs/editing.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import optree_inspect as oi
from helpers import PARAMS, nnx_optimizer, seed_optimizer, trained, wrapped_state

GRADS = jax.tree.map(jnp.ones_like, PARAMS)


def leaves_with_paths(tree: Any) -> list[tuple[Any, Any]]:
    return jax.tree_util.tree_flatten_with_path(tree)[0]


# The functional contract -----------------------------------------------------------------------


def test_same_treedef_untouched_subtrees_shared_and_input_unchanged() -> None:
    state = trained(seed_optimizer())
    before = [(p, leaf) for p, leaf in leaves_with_paths(state)]
    new = oi.set(state, "weight_decay", 0.5)
    assert jax.tree.structure(new) == jax.tree.structure(state)
    assert new[0] is state[0]
    assert new[1].inner_state is state[1].inner_state
    assert new[1].hyperparams_states is state[1].hyperparams_states
    assert new[1].hyperparams["b1"] is state[1].hyperparams["b1"]
    assert all(a is b for (_, a), (_, b) in zip(before, leaves_with_paths(state), strict=True))
    assert float(oi.get(new, "weight_decay")) == 0.5
    assert float(oi.get(state, "weight_decay")) == pytest.approx(1e-4)


def test_mapping_of_edits_in_one_pass() -> None:
    state = wrapped_state("partition")
    new = oi.set(state, {"decay.learning_rate": 0.1, "no_decay.learning_rate": 0.2})
    assert float(oi.get(new, "decay.learning_rate")) == pytest.approx(0.1)
    assert float(oi.get(new, "no_decay.learning_rate")) == pytest.approx(0.2)


def test_overlapping_or_repeated_edits_are_errors() -> None:
    state = trained(seed_optimizer())
    with pytest.raises(ValueError, match="same node"):
        oi.set(state, {"weight_decay": 0.1, "[1].hyperparams['weight_decay']": 0.2})
    with pytest.raises(ValueError, match="contains"):
        oi.set(state, {"mu": lambda m: m, "mu.dense1.w": 0.0})


def test_every_edits_all_matches_and_without_it_ambiguity_raises() -> None:
    state = wrapped_state("partition")
    with pytest.raises(oi.AmbiguousMatchError):
        oi.set(state, "learning_rate", 0.1)
    new = oi.set(state, "learning_rate", lambda old: old * 0.5, every=True)
    assert [float(m.value) for m in oi.find(new, "learning_rate")] == pytest.approx([5e-4, 5e-3])
    with pytest.raises(oi.NoMatchError):
        oi.set(state, "no_such_name", 1.0, every=True)


def test_no_match_and_typos_are_errors_not_silent_no_ops() -> None:
    with pytest.raises(oi.NoMatchError, match="Close names in the tree: learning_rate"):
        oi.set(trained(seed_optimizer()), "learnin_rate", 0.1)


def test_callable_value_gets_the_old_node() -> None:
    state = trained(seed_optimizer())
    new = oi.set(state, "mu", lambda mu: jax.tree.map(jnp.zeros_like, mu))
    assert all(float(jnp.abs(x).sum()) == 0 for x in jax.tree.leaves(new[1].inner_state[0].mu))
    assert new[1].inner_state[0].nu is state[1].inner_state[0].nu


# Leaves: dtype, weak type, shape ---------------------------------------------------------------

VALUE_KINDS = {
    "python float": lambda: 0.25,
    "python int": lambda: 2,
    "np.float64": lambda: np.float64(0.25),
    "np.float32 0-d": lambda: np.asarray(0.25, np.float32),
    "jnp float32": lambda: jnp.asarray(0.25, jnp.float32),
    "weak jnp": lambda: jnp.asarray(0.25),
    "jnp bfloat16": lambda: jnp.asarray(0.25, jnp.bfloat16),
}


@pytest.mark.parametrize("leaf_dtype", [jnp.float32, jnp.bfloat16, jnp.float16, jnp.int32])
@pytest.mark.parametrize("weak", [False, True])
@pytest.mark.parametrize("kind", sorted(VALUE_KINDS))
def test_dtype_and_weak_type_table(leaf_dtype: Any, weak: bool, kind: str) -> None:
    old = jnp.asarray(1, leaf_dtype)
    if weak:
        # No public API makes a weakly typed bf16 or f16 scalar: build the input with JAX's own.
        from jax._src.lax import lax as lax_internal

        old = lax_internal._convert_element_type(jnp.asarray(1), np.dtype(leaf_dtype), weak_type=True)
        assert jax.typeof(old).weak_type
    value = VALUE_KINDS[kind]()
    tree = {"x": old}
    value_is_float = kind != "python int"
    if jnp.issubdtype(leaf_dtype, jnp.integer) and value_is_float:
        with pytest.raises(TypeError, match="change its kind"):
            oi.set(tree, "x", value)
        return
    new = oi.get(oi.set(tree, "x", value), "x")
    assert new.dtype == old.dtype
    assert jax.typeof(new).weak_type == jax.typeof(old).weak_type == weak
    assert new.shape == old.shape
    assert float(new) == pytest.approx(2.0 if kind == "python int" else 0.25)


def test_every_value_kind_stores_the_same_leaf_type() -> None:
    state = trained(seed_optimizer())
    stored = [oi.get(oi.set(state, "weight_decay", make()), "weight_decay") for make in VALUE_KINDS.values()]
    assert {(type(x), x.dtype, x.weak_type, x.shape, x.committed) for x in stored} == {
        (type(stored[0]), np.dtype(jnp.float32), False, (), False)
    }


def test_complex_into_float_and_float_into_int_are_type_errors() -> None:
    state = trained(seed_optimizer())
    with pytest.raises(TypeError):
        oi.set(state, "weight_decay", 1 + 2j)
    with pytest.raises(TypeError):
        oi.set(state, "[1].count", jnp.asarray(1.5))
    assert oi.get(oi.set(state, "[1].count", 7), "[1].count").dtype == jnp.int32


def test_scalars_broadcast_other_shapes_are_value_errors() -> None:
    state = trained(seed_optimizer())
    new = oi.set(state, "mu.dense1.w", 0.5)
    assert oi.get(new, "mu.dense1.w").shape == (4, 4)
    assert float(oi.get(new, "mu.dense1.w").sum()) == 8.0
    with pytest.raises(ValueError, match="shape"):
        oi.set(state, "weight_decay", jnp.ones(1))
    with pytest.raises(ValueError, match="shape"):
        oi.set(state, "mu.dense1.w", jnp.ones(4))


def test_subtree_values_need_the_same_structure_and_name_the_first_difference() -> None:
    state = trained(seed_optimizer())
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    new = oi.set(state, "mu", zeros)
    assert new[1].inner_state[0].mu["dense1"]["w"].dtype == jnp.float32
    with pytest.raises(ValueError, match=r"\['head'\]"):
        oi.set(state, "mu", {"dense1": zeros["dense1"]})
    bad = {"dense1": {"w": jnp.zeros((4, 4)), "b": {"x": 1.0}}, "head": zeros["head"]}
    with pytest.raises(ValueError, match=r"\['dense1'\]\['b'\]"):
        oi.set(state, "mu", bad)


def test_python_scalar_leaves_stay_python_scalars() -> None:
    tree = {"step": 3, "scale": 1.0, "flag": True}
    new = oi.set(tree, {"step": np.int32(5), "scale": jnp.asarray(0.5), "flag": False})
    assert new == {"step": 5, "scale": 0.5, "flag": False}
    assert [type(v) for v in new.values()] == [int, float, bool]
    with pytest.raises(TypeError):
        oi.set(tree, "step", 0.5)


def test_empty_nodes_and_non_array_leaves_take_only_compatible_values() -> None:
    tree = {"hole": optax.MaskedNode(), "none": None, "name": "adam"}
    assert oi.set(tree, "hole", optax.MaskedNode())["hole"] == optax.MaskedNode()
    with pytest.raises(ValueError, match="structure"):
        oi.set(tree, "hole", 1.0)
    with pytest.raises(ValueError, match="structure"):
        oi.set(tree, "none", 1.0)
    assert oi.set(tree, "name", "sgd")["name"] == "sgd"
    with pytest.raises(TypeError, match="str"):
        oi.set(tree, "name", 1.0)


def test_numpy_leaves_stay_numpy() -> None:
    tree = {"w": np.ones(3, np.float32)}
    new = oi.set(tree, "w", 2.0)
    assert isinstance(new["w"], np.ndarray) and new["w"].dtype == np.float32
    assert tree["w"][0] == 1.0


# Schedules -------------------------------------------------------------------------------------


def test_scheduled_hyperparameter_is_refused_whatever_the_query_form() -> None:
    state = trained(seed_optimizer())
    for query in (
        "learning_rate",
        "[1].hyperparams['learning_rate']",
        lambda p, n: jax.tree_util.keystr(p) == "[1].hyperparams['learning_rate']",
        "hyperparams",
    ):
        with pytest.raises(oi.ScheduledHyperparameterError, match="schedule") as info:
            oi.set(state, query, lambda x: x)
        assert "hyperparams_states.learning_rate.count" in str(info.value)


def test_constant_injected_hyperparameter_is_used_by_the_next_update() -> None:
    tx = seed_optimizer()
    state = trained(tx, steps=20)
    params = jax.tree.map(jnp.ones_like, PARAMS)
    lr = float(oi.get(state, "learning_rate"))
    updates_small, _ = tx.update(GRADS, oi.set(state, "weight_decay", 0.0), params)
    updates_big, _ = tx.update(GRADS, oi.set(state, "weight_decay", 1.0), params)
    # adamw: the update differs by lr * weight_decay * param.
    difference = updates_small["head"]["w"] - updates_big["head"]["w"]
    next_lr = float(oi.get(tx.update(GRADS, state, params)[1], "learning_rate"))
    assert np.allclose(difference, next_lr * 1.0 * 1.0, rtol=1e-5)
    assert lr > 0


def test_moving_the_schedule_step_changes_the_next_learning_rate() -> None:
    tx = seed_optimizer()
    state = trained(tx, steps=2)
    moved = oi.set(state, "hyperparams_states.learning_rate.count", 50)
    _, after = tx.update(GRADS, moved, PARAMS)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, warmup_steps=10, decay_steps=100)
    assert float(oi.get(after, "learning_rate")) == pytest.approx(float(schedule(50)))


# jit, vmap, scan, grad, and never retracing ----------------------------------------------------


def test_eager_sets_with_any_value_kind_never_retrace_the_next_step() -> None:
    tx = seed_optimizer()
    state = trained(tx)
    traces = []

    @jax.jit
    def step(state: Any) -> Any:
        traces.append(1)
        return tx.update(GRADS, state, PARAMS)[1]

    state = step(state)
    for value in (0.1, np.float64(0.2), jnp.asarray(0.3, jnp.float32), jnp.asarray(0.4), 1):
        state = step(oi.set(state, "weight_decay", value))
        state = step(oi.set(state, "hyperparams_states.learning_rate.count", lambda c: c + 1))
    assert len(traces) == 1


def test_in_graph_set_on_a_traced_state() -> None:
    tx = seed_optimizer()
    state = trained(tx)
    traces = []

    @jax.jit
    def step(state: Any, weight_decay: jax.Array) -> Any:
        traces.append(1)
        state = oi.set(state, "weight_decay", weight_decay)
        return tx.update(GRADS, state, PARAMS)[1]

    for value in (0.1, 0.2, 0.3):
        state = step(state, value)
    assert len(traces) == 1
    assert float(oi.get(state, "weight_decay")) == pytest.approx(0.3)
    assert oi.get(state, "weight_decay").dtype == jnp.float32


def test_vmap_gives_each_ensemble_member_its_own_value() -> None:
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    states = jax.vmap(lambda _: tx.init(PARAMS))(jnp.arange(3))
    new = jax.vmap(lambda s, lr: oi.set(s, "learning_rate", lr))(states, jnp.asarray([0.1, 0.2, 0.3]))
    assert np.allclose(oi.get(new, "learning_rate"), [0.1, 0.2, 0.3])


def test_scan_body_and_grad() -> None:
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=1e-3)
    state = tx.init(PARAMS)

    def body(state: Any, lr: jax.Array) -> tuple[Any, jax.Array]:
        state = oi.set(state, "learning_rate", lr)
        return state, oi.get(state, "learning_rate")

    final, seen = jax.lax.scan(body, state, jnp.asarray([0.1, 0.2]))
    assert np.allclose(seen, [0.1, 0.2]) and float(oi.get(final, "learning_rate")) == pytest.approx(0.2)

    def loss(lr: jax.Array) -> jax.Array:
        new = oi.set(state, "learning_rate", lr)
        updates, _ = tx.update(GRADS, new, PARAMS)
        return jnp.sum(updates["head"]["w"])

    assert float(jax.grad(loss)(jnp.asarray(0.5))) == pytest.approx(-8.0)


# Containers ------------------------------------------------------------------------------------


def test_flax_train_state() -> None:
    ts = train_state.TrainState.create(apply_fn=None, params=PARAMS, tx=seed_optimizer())
    new = oi.set(ts, "weight_decay", 0.0)
    assert isinstance(new, train_state.TrainState) and new.params is ts.params
    assert float(new.opt_state[1].hyperparams["weight_decay"]) == 0.0
    assert oi.set(ts, "TrainState.step", 5).step == 5


def test_equinox_module_under_filter_jit() -> None:
    class Trainer(eqx.Module):
        opt_state: Any
        params: Any

    tx = seed_optimizer()
    trainer = Trainer(tx.init(PARAMS), PARAMS)
    traces = []

    @eqx.filter_jit
    def lower_decay(trainer: Trainer) -> Trainer:
        traces.append(1)
        return oi.set(trainer, "weight_decay", lambda wd: wd * 0.5)

    trainer = lower_decay(lower_decay(trainer))
    assert float(trainer.opt_state[1].hyperparams["weight_decay"]) == pytest.approx(2.5e-5)
    assert len(traces) == 1


def test_nnx_variables_stay_variables_with_their_metadata() -> None:
    optimizer = nnx_optimizer()
    old = oi.get(optimizer.opt_state, "weight_decay", variables=True)
    new_state = oi.set(optimizer.opt_state, "weight_decay", 0.5)
    new = oi.get(new_state, "weight_decay", variables=True)
    assert type(new) is type(old)
    assert new.get_metadata() == old.get_metadata()
    value, old_value = oi._compat.variable_value(new), oi._compat.variable_value(old)
    assert float(value) == 0.5 and value.dtype == old_value.dtype
    with pytest.raises(oi.ScheduledHyperparameterError):
        oi.set(optimizer.opt_state, "learning_rate", 0.5)


@pytest.mark.parametrize("name", ["named_chain", "multi_steps", "masked", "lookahead", "apply_if_finite"])
def test_wrappers(name: str) -> None:
    state = wrapped_state(name)
    scheduled = name in ("named_chain", "multi_steps")
    query = "hyperparams_states.learning_rate.count" if scheduled else "learning_rate"
    value = 3 if scheduled else 0.003
    new = oi.set(state, query, value)
    assert float(oi.get(new, query)) == pytest.approx(value)
    assert oi.get(new, query).dtype == oi.get(state, query).dtype
    assert jax.tree.structure(new) == jax.tree.structure(state)


def test_multi_steps_counters_and_named_chain_position() -> None:
    state = wrapped_state("multi_steps")
    assert int(oi.get(oi.set(state, "mini_step", 1), "mini_step")) == 1
    named = wrapped_state("named_chain")
    assert float(oi.get(oi.set(named, "body.eps", 1e-6), "body.eps")) == pytest.approx(1e-6)


# Sharding ----------------------------------------------------------------------------------------

SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import optree_inspect as oi

    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    params = {"w": jnp.ones((16, 4)), "b": jnp.zeros(16)}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.adamw)(
        learning_rate=optax.linear_schedule(1e-3, 0.0, 100)))
    params = jax.device_put(params, rows)
    state = jax.tree.map(
        lambda x: jax.device_put(x, rows if x.ndim else replicated), tx.init(params))
    traces = []

    @jax.jit
    def step(state):
        traces.append(1)
        return tx.update(jax.tree.map(jnp.ones_like, params), state, params)[1]

    state = step(state)
    def shardings(state):
        flat = jax.tree_util.tree_flatten_with_path(state)[0]
        return {jax.tree_util.keystr(p): x.sharding for p, x in flat}

    before = shardings(state)
    for value in (0.1, np.float64(0.2), jnp.asarray(0.3)):
        state = oi.set(state, "weight_decay", value)
        state = oi.set(state, "mu.w", 0.0)
        after = shardings(state)
        assert after == before, [k for k in after if after[k] != before[k]]
        state = step(state)
    # Device-resident values: a whole moment subtree, replicated or row-sharded, and a scalar,
    # coerced and placed on the devices with no implicit transfer at all.
    moments = oi.get(state, "ScaleByAdamState.mu")
    decay = jnp.float32(0.25)
    doubled = jax.tree.map(lambda x: x * 2.0, moments)
    for new_mu in (doubled, jax.device_put(jax.tree.map(jnp.zeros_like, moments), replicated)):
        with jax.transfer_guard("disallow"):
            state = oi.set(state, {"ScaleByAdamState.mu": new_mu, "weight_decay": decay})
        after = shardings(state)
        assert after == before, [k for k in after if after[k] != before[k]]
        state = step(state)
    assert len(traces) == 1, traces
    assert oi.get(state, "mu.w").sharding.spec == P("data")
    print("OK", len(jax.devices()))
    """
)


def test_sharded_state_keeps_every_sharding_and_never_retraces() -> None:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "OK 8"


def test_device_values_are_coerced_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    state = trained(seed_optimizer())
    mu = oi.get(state, "ScaleByAdamState.mu")
    new_mu = jax.tree.map(lambda x: x + 1.0, mu)
    values = {"weight_decay": jnp.float32(0.5), "ScaleByAdamState.mu": new_mu, "[1].count": jnp.int32(7)}
    oi.set(state, values)  # compile the few small programs it uses once, outside the guard

    def no_host_copy(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a jax.Array was copied to host memory")

    monkeypatch.setattr(type(jnp.zeros(1)), "__array__", no_host_copy)
    with jax.transfer_guard("disallow"):
        new = oi.set(state, values)
    monkeypatch.undo()
    assert float(new[1].hyperparams["weight_decay"]) == 0.5 and int(new[1].count) == 7
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), oi.get(new, "mu"), new_mu))


@pytest.mark.parametrize(
    ("leaf", "value"),
    [
        (jnp.int8(0), jnp.int32(1000)),
        (jnp.uint8(0), jnp.int32(-1)),
        (jnp.zeros(2, jnp.float16), jnp.full(2, 1e6, jnp.float32)),
        (jnp.zeros(2, jnp.bfloat16), jnp.full(2, 3e38, jnp.float32) * 10),
    ],
)
def test_narrowing_device_values_out_of_range_are_refused(leaf: Any, value: Any) -> None:
    if not jnp.isfinite(value).all() and jnp.issubdtype(leaf.dtype, jnp.floating):
        assert oi.set({"x": leaf}, "x", value)["x"].dtype == leaf.dtype  # inf is stored as given
        return
    with jax.transfer_guard("disallow"), pytest.raises(oi.StructureError, match="out of range"):
        oi.set({"x": leaf}, "x", value)


@pytest.mark.parametrize(
    ("leaf", "value", "error"),
    [
        (np.zeros(2, np.uint64), True, None),  # a bool fits every integer leaf
        (np.zeros(2, np.uint64), np.array([True, False]), None),
        (np.zeros(2, np.int8), np.uint64(2**64 - 1), oi.StructureError),
        (jnp.zeros(2, jnp.float16), jnp.bfloat16(65536.0), oi.StructureError),  # past 65504, not rounded
        (jnp.zeros(2, jnp.float16), jnp.array([65536.0, 1.0], jnp.bfloat16), oi.StructureError),
        (jnp.zeros(2, jnp.float16), jnp.bfloat16(60000.0), None),
    ],
)
def test_range_checks_compare_exactly_whatever_the_value_dtype(leaf: Any, value: Any, error: Any) -> None:
    if error is None:
        result = oi.set({"x": leaf}, "x", value)["x"]
        assert result.dtype == leaf.dtype
        np.testing.assert_array_equal(np.asarray(result), np.broadcast_to(np.asarray(value), leaf.shape))
    else:
        with pytest.raises(error):
            oi.set({"x": leaf}, "x", value)


def test_a_deleted_array_as_the_value_is_a_deleted_array_error() -> None:
    value = jnp.ones(2)
    value.delete()
    with pytest.raises(oi.DeletedArrayError, match=r"\['x'\]"):
        oi.set({"x": jnp.zeros(2)}, "x", value)


@pytest.mark.parametrize("value", [2**64 - 1, 2**70, -(2**70), 1e39])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.int32, jnp.float32])
def test_concrete_values_out_of_range_are_refused_under_jit_too(value: Any, dtype: Any) -> None:
    tree = {"x": jnp.zeros(2, dtype)}
    limit = float(jnp.finfo(dtype).max) if dtype != jnp.int32 else float(jnp.iinfo(dtype).max)
    fits = abs(value) <= limit
    if isinstance(value, float) and dtype == jnp.int32:
        expected: Any = oi.LeafTypeError  # float into int: another kind
    else:
        expected = None if fits else oi.StructureError
    for run in (lambda t: oi.set(t, "x", value), jax.jit(lambda t: oi.set(t, "x", value))):
        if expected is None:
            assert run(tree)["x"].dtype == dtype
        else:
            with pytest.raises(expected):
                run(tree)
