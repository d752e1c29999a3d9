"""Property tests against randomly composed optax optimizers (the properties in tests/properties.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from hypothesis import given, note, reject, settings
from hypothesis import strategies as st

import optree_inspect as oi
import properties
from strategies import optimizers, params_trees


class EqxTrainer(eqx.Module):
    opt_state: Any
    step: jax.Array


Container = tuple[Callable[[Any], Any], Callable[[Any], Any]]
"""How to put an optimizer state into a container, and take it out again."""

CONTAINERS: dict[str, Container] = {
    "bare": (lambda s: s, lambda c: c),
    "dict": (lambda s: {"params": None, "opt": s}, lambda c: c["opt"]),
    "train_state": (
        lambda s: train_state.TrainState(step=0, apply_fn=None, params={}, tx=None, opt_state=s),
        lambda c: c.opt_state,
    ),
    "eqx": (lambda s: EqxTrainer(s, jnp.zeros([], jnp.int32)), lambda c: c.opt_state),
}


def _replace_opt_state(container: Any, name: str, opt_state: Any) -> Any:
    if name == "bare":
        return opt_state
    if name == "dict":
        return {**container, "opt": opt_state}
    if name == "train_state":
        return container.replace(opt_state=opt_state)
    return eqx.tree_at(lambda c: c.opt_state, container, opt_state)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Any, Callable[[Any], Any], list[int]]:
    """A state after 0-3 jitted updates, in a container, with its jitted step and trace counter."""
    params = draw(params_trees())
    tx = draw(optimizers(params))
    container_name = draw(st.sampled_from(sorted(CONTAINERS)))
    wrap, unwrap = CONTAINERS[container_name]
    grads = jax.tree.map(jnp.ones_like, params)
    traces: list[int] = []

    @jax.jit
    def step(container: Any) -> Any:
        traces.append(1)
        _, opt_state = tx.update(grads, unwrap(container), params)
        return _replace_opt_state(container, container_name, opt_state)

    try:  # optax alone: nothing of optree_inspect runs here
        state = step(wrap(tx.init(params)))
        for _ in range(draw(st.integers(0, 2))):
            state = step(state)
    except TypeError as error:
        # optax cannot run some compositions, e.g. apply_if_finite over an inner optimizer that
        # returns float32 updates for bfloat16 params ("cond branches must have equal output types").
        note(f"optax cannot run this composition: {str(error)[:200]}")
        reject()
    note(f"container={container_name}\n{oi.describe(state)}")
    return state, step, traces


@given(scenarios(), st.data())
def test_random_optimizers(
    scenario: tuple[Any, Callable[[Any], Any], list[int]], data: st.DataObject
) -> None:
    state, step, traces = scenario
    properties.leaf_paths_round_trip(state)  # 1
    words = properties.vocabulary(state)
    for _ in range(4):  # 2
        components = data.draw(st.lists(st.sampled_from(words), min_size=1, max_size=3))
        if data.draw(st.integers(0, 5)) == 0:
            components.insert(0, ("name", "hyperparams_states"))
        if components[0][0] == "item":
            continue
        pattern = properties.pattern_text(components)
        note(pattern)
        assert [m.path for m in oi.find(state, pattern)] == properties.reference_find(state, components)
    properties.set_hyperparameters(state, step, traces)  # 3, 4
    properties.describe_round_trips(state)  # 5
    queries = ["learning_rate", "count", "mu", optax.EmptyState, "hyperparams_states.*.count"]
    properties.jit_agrees(state, queries)  # 6


STATE = optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.inject_hyperparams(optax.adamw)(learning_rate=optax.linear_schedule(1e-3, 0.0, 10)),
).init({"w": jnp.zeros(3), "enc.1": {"b": jnp.zeros(())}})

QUERY_ALPHABET = st.sampled_from([*list(".[]'\"*?_ 0123<>\\"), "learning_rate", "mu", "count", "flat index"])


@settings(max_examples=max(300, settings().max_examples))
@given(st.one_of(st.text(max_size=30), st.lists(QUERY_ALPHABET, max_size=12).map("".join)))
def test_random_query_strings_raise_only_documented_errors(query: str) -> None:  # 7
    for verb in (oi.find, oi.get):
        try:
            verb(STATE, query)
        except oi.QueryError as error:
            assert len(str(error)) < 2000
            assert len(str(error).splitlines()) <= 14


def test_regression_optimizer_that_changes_dtypes_at_its_first_update() -> None:
    """Found by a long run: schedule_free_adamw over bfloat16 params changes its state's dtypes at
    the first update, so only a retrace caused by `set` itself may count."""
    params = {"w": jnp.zeros((), jnp.bfloat16), "w_list": [jnp.zeros((), jnp.bfloat16)] * 2}
    tx = optax.inject_hyperparams(optax.contrib.schedule_free_adamw)(
        learning_rate=optax.linear_schedule(1e-3, 1e-4, 10)
    )
    grads = jax.tree.map(jnp.ones_like, params)
    traces: list[int] = []

    @jax.jit
    def step(state: Any) -> Any:
        traces.append(1)
        return tx.update(grads, state, params)[1]

    state = step(tx.init(params))
    properties.set_hyperparameters(state, step, traces)
    properties.describe_round_trips(state)
