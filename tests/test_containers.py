"""The containers users hold: eqx Modules, flax structs and TrainStates, dict subclasses, nnx."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from flax.training import train_state

import optree_inspect as oi
from helpers import PARAMS, schedule, skip_unless_a_pytree


class Block(eqx.Module):
    attention: eqx.nn.Linear
    mlp: eqx.nn.MLP


class Transformer(eqx.Module):
    """A levanter-style model: Modules all the way down, the optimizer's moments Modules too."""

    blocks: list[Block]
    head: eqx.nn.Linear
    dropout: float | None = None


def _transformer(layers: int) -> Transformer:
    keys = jax.random.split(jax.random.key(0), layers)
    blocks = [Block(eqx.nn.Linear(4, 4, key=k), eqx.nn.MLP(4, 4, 8, 2, key=k)) for k in keys]
    return Transformer(blocks, eqx.nn.Linear(4, 2, key=keys[0]))


class NestedMap(dict):  # type: ignore[type-arg]
    """A praxis-style dict subclass, registered as a pytree node of its own."""


jax.tree_util.register_pytree_with_keys(
    NestedMap,
    lambda d: ([(jax.tree_util.DictKey(k), v) for k, v in sorted(d.items())], sorted(d)),
    lambda keys, values: NestedMap(zip(keys, values, strict=True)),
)


def _states() -> dict[str, Any]:
    model = _transformer(8)
    params = eqx.filter(model, eqx.is_array)
    nested = NestedMap({f"layer{i}": NestedMap(w=jnp.ones(3), b=jnp.ones(1)) for i in range(49)})
    mlp = eqx.filter(eqx.nn.MLP(4, 4, 4, 300, key=jax.random.key(1)), eqx.is_array)
    return {
        "levanter": {"model": model, "opt_state": optax.adamw(1e-3).init(params)},
        "mlp300": optax.adam(1e-3).init(mlp),
        "nested_map": {"params": nested, "opt_state": optax.adam(1e-3).init(nested)},
    }


@pytest.mark.parametrize("name", ["levanter", "mlp300", "nested_map"])
def test_params_shaped_subtrees_fold_whatever_their_containers(name: str) -> None:
    state = _states()[name]
    text = str(oi.describe(state))
    assert len(text.splitlines()) <= 12, text
    assert "count: i32[] = 0" in text  # the optax state itself is never folded away
    assert " like " in text  # the second moment is one line, like the first


def test_none_fields_show_as_none() -> None:
    text = str(oi.describe({"a": None, "b": jnp.ones(2)}))
    assert "a: None" in text and "NoneType" not in text


def test_flax_bookkeeping_is_not_shown() -> None:
    class Model(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.linear = nnx.Linear(2, 3, rngs=rngs)

    optimizer = nnx.Optimizer(Model(nnx.Rngs(0)), optax.adam(1e-3), wrt=nnx.Param)
    skip_unless_a_pytree(optimizer)
    text = str(oi.describe(optimizer))
    assert "_pytree__" not in text and "opt_state: tuple" in text


# optimizer= with the container that holds the optax state --------------------------------------

TX = optax.adamw(schedule(), weight_decay=0.05)


class Holder(eqx.Module):
    params: Any
    opt_state: Any


def _holders() -> dict[str, Any]:
    class Model(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.linear = nnx.Linear(2, 3, rngs=rngs)

    return {
        "TrainState": train_state.TrainState.create(apply_fn=lambda *a: None, params=PARAMS, tx=TX),
        "eqx.Module": Holder(PARAMS, TX.init(PARAMS)),
        "nnx.Optimizer": nnx.Optimizer(Model(nnx.Rngs(0)), TX, wrt=nnx.Param),
        "dict": {"step": 3, "state": TX.init(PARAMS)},
    }


@pytest.mark.parametrize("name", ["TrainState", "eqx.Module", "nnx.Optimizer", "dict"])
def test_the_optimizers_state_is_found_inside_the_container(name: str) -> None:
    holder = _holders()[name]
    skip_unless_a_pytree(holder)
    assert float(oi.get(holder, "weight_decay", optimizer=TX)) == pytest.approx(0.05)
    assert float(oi.get(holder, "learning_rate", optimizer=TX)) == pytest.approx(float(schedule()(0)))
    values = oi.hyperparams(holder, optimizer=TX)
    assert {"b1", "weight_decay", "learning_rate"} <= {q.split(".")[-1] for q in values}
    for query, value in values.items():  # a schedule's value is computed at each call: compare values
        assert float(oi.get(holder, query, optimizer=TX)) == pytest.approx(float(value))
    assert "weight_decay: 0.05 (constant in the optimizer)" in str(oi.describe(holder, optimizer=TX))


def test_an_optimizer_whose_state_is_not_in_the_container_says_so() -> None:
    holder = _holders()["TrainState"]
    with pytest.raises(oi.OptimizerMismatchError, match="not found in it"):
        oi.get(holder, "b1", optimizer=optax.sgd(0.1))
    two = {"a": TX.init(PARAMS), "b": TX.init(PARAMS)}
    with pytest.raises(oi.OptimizerMismatchError, match=r"holds 2 states .*\['a'\], \['b'\]"):
        oi.get(two, "b1", optimizer=TX)


def test_masked_holes_are_counted_where_a_line_stands_for_a_subtree() -> None:
    mask = {"w": True, "v": True, "b": False, "c": False}
    params = {"w": jnp.ones(3), "v": jnp.ones(3), "b": jnp.ones(1), "c": jnp.ones(2)}
    state = optax.masked(optax.adam(1e-3), mask).init(params)
    text = str(oi.describe(state))
    assert "nu: like .inner_state[0].mu, 2 leaves (v, w), 2 masked" in text, text
    assert text.splitlines()[0].startswith("MaskedState: 5 leaves, 4 masked")


def test_a_label_s_moments_name_the_parameters_they_hold() -> None:
    layers = {f"layer{i}": {"w": jnp.ones(2), "b": jnp.ones(2)} for i in range(6)}
    labels = {name: {"w": "decay", "b": "no_decay"} for name in layers}
    tx = optax.partition({"decay": optax.adam(1e-3), "no_decay": optax.sgd(1e-2, momentum=0.9)}, labels)
    text = str(oi.describe(tx.init(layers)))
    assert "6 leaves (layer0.w, layer1.w, layer2.w, ...), 6 masked" in text, text
    assert "6 leaves (layer0.b, layer1.b, layer2.b, ...), 6 masked" in text, text


@pytest.mark.parametrize(
    ("value", "dtype", "shown"),
    [
        (0.9, jnp.bfloat16, "0.9"),
        (1e-8, jnp.bfloat16, "1e-08"),
        (0.1, jnp.float16, "0.1"),
        (2.5, jnp.float64, "2.5"),
    ],
)
def test_numbers_show_at_the_precision_of_their_dtype(value: float, dtype: Any, shown: str) -> None:
    leaf = jnp.asarray(value, dtype) if dtype != jnp.float64 else __import__("numpy").float64(value)
    assert f"x: {oi._leaf.dtype_name(leaf.dtype)}[] = {shown}" in str(oi.describe({"x": leaf}))


def test_nnx_state_of_an_optimizer_is_read_as_its_live_opt_state() -> None:
    """`nnx.state(optimizer)`, which flax's docs checkpoint, turns the state's tuples into dicts of
    int keys and wraps every array in a Variable: its optax states are recognised by their fields."""
    from helpers import nnx_optimizer

    optimizer = nnx_optimizer()
    state = nnx.state(optimizer)
    text = str(oi.describe(state))
    assert "(InjectStatefulHyperparamsState)" in text or "(InjectHyperparamsState)" in text
    assert "(ScaleByAdamState)" in text and "nu: like" in text
    live = oi.hyperparams(optimizer.opt_state)
    assert sorted(oi.hyperparams(state)) == sorted(live) and "learning_rate" in live
