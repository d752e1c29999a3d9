"""Every public optax factory, built explicitly and run through properties 1 and 3-5."""

from __future__ import annotations

from typing import Any

import jax
import optax
import pytest

import optree_inspect as oi
import properties
from optax_catalogue import EXCLUDED, FACTORIES, INJECTED, Case, injected_case, public_factories


def test_every_public_factory_is_covered() -> None:
    """Fails when an optax release adds a factory that is neither built nor excluded here."""
    public = set(public_factories())
    missing = sorted(public - set(FACTORIES) - set(EXCLUDED))
    assert not missing, f"New optax factories to add to tests/optax_catalogue.py: {missing}"
    gone = sorted(set(FACTORIES) - public)
    assert not gone, f"Factories no longer public in this optax: {gone}"


def run_case(case: Case) -> None:
    traces: list[int] = []
    grads = case.gradients()

    @jax.jit
    def step(state: Any) -> Any:
        traces.append(1)
        return case.tx.update(grads, state, case.params, **case.extra_args(case.params))[1]

    state = case.tx.init(case.params)
    state = step(state)
    if case.settles_after_first_update:
        traces.clear()
        state = step(state)
    state = step(state)
    properties.leaf_paths_round_trip(state)
    properties.set_hyperparameters(state, step, traces)
    properties.describe_round_trips(state)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_factory(name: str) -> None:
    run_case(FACTORIES[name]())


@pytest.mark.parametrize("name", sorted(INJECTED))
@pytest.mark.parametrize("scheduled", [False, True])
def test_injected_factory(name: str, scheduled: bool) -> None:
    case = injected_case(name, scheduled)
    run_case(case)
    state = case.tx.init(case.params)
    [learning_rate] = oi.find(state, "learning_rate")
    assert learning_rate.path[-2:] == (
        jax.tree_util.GetAttrKey("hyperparams"),
        jax.tree_util.DictKey("learning_rate"),
    )
    if scheduled:
        with pytest.raises(oi.ScheduledHyperparameterError):
            oi.set(state, "learning_rate", 0.1)


def test_line_search_learning_rate_fields_are_not_hyperparameters() -> None:
    """lbfgs keeps a `learning_rate` field of its line search; it is found, and no inject hint."""
    case = FACTORIES["lbfgs"]()
    state = case.tx.init(case.params)
    [match] = oi.find(state, "learning_rate")
    assert type(oi.get(state, match.path[:-1])).__name__ == "ScaleByZoomLinesearchState"
    assert oi.hyperparams(state) == {}


def test_prng_key_and_bool_leaves() -> None:
    noisy = FACTORIES["noisy_sgd"]()
    state = noisy.tx.init(noisy.params)
    key = oi.get(state, "rng_key")
    assert jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    assert "key<fry>[]" in str(oi.describe(state))
    with pytest.raises(TypeError):
        oi.set(state, "rng_key", 0)
    assert oi.set(state, "rng_key", jax.random.key(1)) is not state
    finite = optax.apply_if_finite(optax.sgd(0.1), 3).init(noisy.params)
    assert bool(oi.get(oi.set(finite, "last_finite", False), "last_finite")) is False
