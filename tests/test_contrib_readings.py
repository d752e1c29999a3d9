"""`optimizer=` on optax.contrib's `schedule_free` and `sam` (see docs/optimizer.md), live and restored
without their types: every value read is the one optax uses at the next update, attached where the
transformation that holds it keeps its state; what cannot be read is said, never guessed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optree_inspect as oi
from helpers import PARAMS, trained
from internals.test_index_build import as_restored

oc = optax.contrib
GRADS = jax.tree.map(jnp.ones_like, PARAMS)
WARMUP = optax.warmup_constant_schedule(0.0, 1e-3, warmup_steps=100)
"""What `schedule_free_adamw(1e-3, warmup_steps=100)` builds (its `warmup_constant_schedule`)."""
RISING = optax.linear_schedule(1e-3, 1e-2, transition_steps=10)


def _restored(state: Any) -> Any:
    """`state` as orbax restores it without a target (`as_restored`); an older optax's dataclass
    state (its `SAMState`) becomes a dict of its fields too."""
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return {f.name: _restored(getattr(state, f.name)) for f in dataclasses.fields(state)}
    return as_restored(state)


FORMS: dict[str, Callable[[Any], Any]] = {"live": lambda state: state, "restored": _restored}


def _factory(name: str) -> Any:
    factory = getattr(oc, name, None)
    if factory is None:
        pytest.skip(f"optax {optax.__version__} has no contrib.{name}")
    return factory


def _names(path: tuple[Any, ...]) -> tuple[Any, ...]:
    """A path as plain names and positions: the same for a live state and its restored form."""
    return tuple(getattr(key, "name", getattr(key, "key", getattr(key, "idx", None))) for key in path)


def _read(tree: Any, tx: Any) -> dict[tuple[Any, ...], Any]:
    """Each value `hyperparams` reads from `tx`, by where it is attached; each of its keys is a
    query that `get` resolves to that value alone."""
    found = {}
    for query, value in oi.hyperparams(tree, optimizer=tx).items():
        (match,) = oi.find(tree, query, optimizer=tx)
        assert jnp.array_equal(oi.get(tree, query, optimizer=tx), value), query
        found[_names(match.path)] = value
    return found


def _assert_read(tree: Any, tx: Any, expected: dict[tuple[Any, ...], Any]) -> None:
    found = _read(tree, tx)
    assert sorted(found, key=str) == sorted(expected, key=str)
    for where, value in expected.items():
        assert np.asarray(found[where]).dtype == np.asarray(value).dtype, where
        assert np.array_equal(found[where], value), (where, found[where], value)


def _last_line(tree: Any, tx: Any) -> str:
    return str(oi.describe(tree, optimizer=tx)).splitlines()[-1]


# schedule_free ---------------------------------------------------------------------------------


def _adamw() -> tuple[Any, Callable[[Any], dict[tuple[Any, ...], Any]]]:
    tx = _factory("schedule_free_adamw")(learning_rate=1e-3, warmup_steps=100, weight_decay=1e-4)
    return tx, lambda state: {
        ("learning_rate",): WARMUP(state.step_count),  # as schedule_free uses it, at its step_count
        ("weight_lr_power",): 2.0,
        ("base_optimizer_state", 0, "b2"): 0.999,
        ("base_optimizer_state", 0, "eps"): 1e-8,
        ("base_optimizer_state", 1, "weight_decay"): 1e-4,
        ("base_optimizer_state", 2, "learning_rate"): WARMUP(state.base_optimizer_state[2].count),
    }


def _adamw_constant() -> tuple[Any, Callable[[Any], dict[tuple[Any, ...], Any]]]:
    tx = _factory("schedule_free_adamw")(learning_rate=2e-3, b2=0.95, eps=1e-6, weight_decay=0.5)
    return tx, lambda state: {
        ("learning_rate",): 2e-3,
        ("weight_lr_power",): 2.0,
        ("base_optimizer_state", 0, "b2"): 0.95,
        ("base_optimizer_state", 0, "eps"): 1e-6,
        ("base_optimizer_state", 1, "weight_decay"): 0.5,
        ("base_optimizer_state", 2, "learning_rate"): 2e-3,
    }


def _sgd() -> tuple[Any, Callable[[Any], dict[tuple[Any, ...], Any]]]:
    tx = _factory("schedule_free_sgd")(learning_rate=1e-3, warmup_steps=100, weight_decay=1e-3)
    return tx, lambda state: {
        ("learning_rate",): WARMUP(state.step_count),
        ("weight_lr_power",): 2.0,
        ("base_optimizer_state", 0, "weight_decay"): 1e-3,
        ("base_optimizer_state", 1, 1, "learning_rate"): WARMUP(state.base_optimizer_state[1][1].count),
    }


def _wrapped_constant() -> tuple[Any, Callable[[Any], dict[tuple[Any, ...], Any]]]:
    tx = _factory("schedule_free")(optax.adam(1e-3, b1=0.0), learning_rate=1e-3, b1=0.95)
    return tx, lambda state: {
        ("learning_rate",): 1e-3,
        ("weight_lr_power",): 2.0,
        ("base_optimizer_state", 0, "b1"): 0.0,  # the base's own; schedule_free's is in the state
        ("base_optimizer_state", 0, "b2"): 0.999,
        ("base_optimizer_state", 0, "eps"): 1e-8,
        ("base_optimizer_state", 0, "eps_root"): 0.0,
        ("base_optimizer_state", 1, "learning_rate"): 1e-3,
    }


def _wrapped_schedule() -> tuple[Any, Callable[[Any], dict[tuple[Any, ...], Any]]]:
    tx = _factory("schedule_free")(optax.sgd(RISING), learning_rate=RISING, b1=0.8, weight_lr_power=1.0)
    return tx, lambda state: {
        ("learning_rate",): RISING(state.step_count),
        ("weight_lr_power",): 1.0,
        ("base_optimizer_state", 1, "learning_rate"): RISING(state.base_optimizer_state[1].count),
    }


SCHEDULE_FREE = {
    "adamw": _adamw,
    "adamw_constant": _adamw_constant,
    "sgd": _sgd,
    "wrapped_constant": _wrapped_constant,
    "wrapped_schedule": _wrapped_schedule,
}


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("name", sorted(SCHEDULE_FREE))
def test_schedule_free_reads_its_rate_and_its_base_where_they_are_held(name: str, form: str) -> None:
    tx, expected = SCHEDULE_FREE[name]()
    state = trained(tx)
    tree = FORMS[form](state)
    _assert_read(tree, tx, expected(state))
    assert "not matched" not in _last_line(tree, tx)
    # schedule_free's b1 is read from the state (once), never from the closure beside it
    (b1,) = [m.value for m in oi.find(tree, "b1", optimizer=tx) if _names(m.path) == ("b1",)]
    assert b1 is oi.get(tree, "b1") and float(b1) == float(state.b1)
    with pytest.raises(oi.AmbiguousMatchError):  # schedule_free's learning rate and its base's
        oi.get(tree, "learning_rate", optimizer=tx)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_schedule_free_adamw_describes_each_value_under_its_state_node(form: str) -> None:
    tx, _ = _adamw()
    tree = FORMS[form](trained(tx))
    lines = [line.strip() for line in str(oi.describe(tree, optimizer=tx)).splitlines()]
    shown = [
        line.split(":")[0] if line.startswith("[") else line
        for line in lines
        if "in the optimizer" in line or line.startswith("[")
    ]
    assert shown == [
        "learning_rate: 3e-05 (schedule in the optimizer, for step 3, the next update)",
        "weight_lr_power: 2 (constant in the optimizer)",
        "[0]",
        "b2: 0.999 (constant in the optimizer)",
        "eps: 1e-08 (constant in the optimizer)",
        "[1]",
        "weight_decay: 0.0001 (constant in the optimizer)",
        "[2]",
        "learning_rate: 2e-05 (schedule in the optimizer, for step 2, the next update)",
    ]
    assert float(oi.get(tree, "b2", optimizer=tx)) == 0.999
    assert float(oi.get(tree, "weight_decay", optimizer=tx)) == 1e-4


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", ["adamw", "sgd", "wrapped_schedule"])
def test_schedule_free_s_rate_is_the_one_its_next_update_uses(name: str, dtype: Any) -> None:
    tx, _ = SCHEDULE_FREE[name]()
    params = jax.tree.map(lambda leaf: leaf.astype(dtype), PARAMS)
    state = trained(tx, params=params)
    read = oi.get(state, ".learning_rate", optimizer=tx)
    # Its schedule rises, so the next update's max_lr is the value it used: read exactly.
    used = tx.update(jax.tree.map(jnp.ones_like, params), state, params)[1].max_lr
    assert read.dtype == used.dtype == dtype and read == used


def test_schedule_free_reads_under_jit_and_on_an_abstract_state() -> None:
    tx, _ = _adamw()
    state = trained(tx)

    @jax.jit
    def read_and_step(state: Any) -> tuple[dict[str, Any], Any]:
        return oi.hyperparams(state, optimizer=tx), tx.update(GRADS, state, PARAMS)[1].max_lr

    traced, used = read_and_step(state)
    assert traced.keys() == oi.hyperparams(state, optimizer=tx).keys()
    assert traced[".learning_rate"] == used  # what the jitted update uses, traced alike
    assert traced["b2"] == jnp.float32(0.999)
    abstract = oi.get(jax.eval_shape(lambda: state), ".learning_rate", optimizer=tx)
    assert abstract == jax.ShapeDtypeStruct((), jnp.float32)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_schedule_free_says_what_it_cannot_read(form: str) -> None:
    schedule_free = _factory("schedule_free")
    per_parameter = schedule_free(optax.sgd(0.1), learning_rate=np.array([1e-3, 2e-3]))
    tree = FORMS[form](per_parameter.init(PARAMS))
    assert "learning_rate is neither a number nor a schedule" in _last_line(tree, per_parameter)
    assert _read(tree, per_parameter) == {
        ("weight_lr_power",): 2.0,
        ("base_optimizer_state", 1, "learning_rate"): 0.1,
    }

    custom = optax.GradientTransformation(lambda params: optax.EmptyState(), lambda u, s, p=None: (u, s))
    tx = schedule_free(custom, learning_rate=1e-3)
    tree = FORMS[form](trained(tx))
    last = _last_line(tree, tx)
    assert (
        last.startswith("(optimizer) not matched: schedule_free's base optimizer: ")
        and "base_optimizer_state" in last
    )
    assert _read(tree, tx) == {("learning_rate",): 1e-3, ("weight_lr_power",): 2.0}


def test_schedule_free_eval_params_is_not_an_optimizer_and_reading_leaves_its_input_alone() -> None:
    tx, _ = _adamw()
    state = trained(tx)
    evaluated = oc.schedule_free_eval_params(state, PARAMS)
    str(oi.describe(state, optimizer=tx))
    oi.hyperparams(state, optimizer=tx)
    again = oc.schedule_free_eval_params(state, PARAMS)
    assert all(
        jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(evaluated), jax.tree.leaves(again), strict=True)
    )
    with pytest.raises(oi.InvalidArgumentError, match="GradientTransformation"):
        oi.hyperparams(state, optimizer=oc.schedule_free_eval_params)


# sam -------------------------------------------------------------------------------------------


def _sam_sgd() -> tuple[Any, Callable[[Any], dict[tuple[Any, ...], Any]]]:
    tx = _factory("sam")(optax.sgd(0.1), optax.chain(oc.normalize(), optax.sgd(0.05)), sync_period=2)
    return tx, lambda state: {
        ("sync_period",): 2,
        ("opt_state", 1, "learning_rate"): 0.1,
        ("adv_state", 1, 1, "learning_rate"): 0.05,
    }


def _sam_adam() -> tuple[Any, Callable[[Any], dict[tuple[Any, ...], Any]]]:
    tx = _factory("sam")(optax.adamw(RISING, weight_decay=1e-2), optax.sgd(0.05, momentum=0.5), sync_period=3)
    return tx, lambda state: {
        ("sync_period",): 3,
        ("opt_state", 0, "b1"): 0.9,
        ("opt_state", 0, "b2"): 0.999,
        ("opt_state", 0, "eps"): 1e-8,
        ("opt_state", 0, "eps_root"): 0.0,
        ("opt_state", 1, "weight_decay"): 1e-2,
        ("opt_state", 2, "learning_rate"): RISING(state.opt_state[2].count),
        ("adv_state", 0, "momentum"): 0.5,
        ("adv_state", 1, "learning_rate"): 0.05,
    }


def _sam_opaque() -> tuple[Any, Callable[[Any], dict[tuple[Any, ...], Any]]]:
    tx = _factory("sam")(optax.sgd(0.1), optax.sgd(0.05), sync_period=4, opaque_mode=True)
    return tx, lambda state: {
        ("sync_period",): 4,
        ("opt_state", 1, "learning_rate"): 0.1,
        ("adv_state", 1, "learning_rate"): 0.05,
    }


SAM = {"sgd": _sam_sgd, "adam": _sam_adam, "opaque": _sam_opaque}


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("name", sorted(SAM))
def test_sam_reads_both_its_optimizers_in_step_with_their_states(name: str, form: str) -> None:
    tx, expected = SAM[name]()
    extra = {"grad_fn": lambda params, step: GRADS} if name == "opaque" else {}
    state = trained(tx, steps=2, **extra)
    tree = FORMS[form](state)
    _assert_read(tree, tx, expected(state))
    assert "not matched" not in _last_line(tree, tx)
    with pytest.raises(oi.AmbiguousMatchError, match="2 nodes") as ambiguous:
        oi.get(tree, "learning_rate", optimizer=tx)
    # the outer and the adversarial one, each under a query that selects it alone
    for query in ["opt_state.learning_rate", "adv_state.learning_rate"]:
        assert f"get(tree, {query!r})" in str(ambiguous.value)
        assert query in oi.hyperparams(tree, optimizer=tx)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_sam_names_the_inner_optimizer_it_cannot_read(form: str) -> None:
    sam = _factory("sam")
    custom = optax.GradientTransformation(lambda params: optax.EmptyState(), lambda u, s, p=None: (u, s))
    for tx, name, field, other in [
        (sam(custom, optax.sgd(0.05)), "optimizer", "opt_state", ("adv_state", 1, "learning_rate")),
        (sam(optax.sgd(0.05), custom), "adv_optimizer", "adv_state", ("opt_state", 1, "learning_rate")),
    ]:
        tree = FORMS[form](trained(tx))
        last = _last_line(tree, tx)
        assert last.startswith(f"(optimizer) not matched: sam's {name}: ") and field in last, last
        assert _read(tree, tx) == {("sync_period",): 2, other: 0.05}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_sam_of_other_inner_optimizers_is_refused(form: str) -> None:
    sam = _factory("sam")
    tree = FORMS[form](trained(sam(optax.sgd(0.1), optax.sgd(0.05))))
    for wrong in [sam(optax.adam(0.1), optax.sgd(0.05)), sam(optax.sgd(0.1), optax.chain(optax.sgd(0.05)))]:
        with pytest.raises(oi.OptimizerMismatchError):
            oi.hyperparams(tree, optimizer=wrong)
