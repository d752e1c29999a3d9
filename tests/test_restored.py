"""States restored from a checkpoint without their types: every optax rule holds as on the live state.

Restored with orbax and no target, NamedTuple states come back as dicts, tuples as lists and
`EmptyState`/`MaskedNode` as `None`; these tests save and restore real states in a temporary
directory.
"""

from __future__ import annotations

import pathlib
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
import pytest
from flax.training import train_state
from jax.tree_util import DictKey, GetAttrKey, keystr

import optree_inspect as oi
from helpers import LABELS, MASK, PARAMS, WRAPPED, schedule, seed_optimizer, trained, wrapped_state
from optax_catalogue import FACTORIES
from optree_inspect._optax.fields import STATE_FIELDS, is_state_type
from optree_inspect._registry import children_with_keys


def _restore_raw(state: Any, directory: pathlib.Path) -> Any:
    """`state` saved with orbax and restored without a target: the form a checkpoint reader gets."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / "state", state)
    checkpointer.wait_until_finished()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # orbax: "Sharding info not provided when restoring"
        return checkpointer.restore(directory / "state")


def _as_restored(path: tuple[Any, ...]) -> str:
    """The keystr a live path has in the restored tree (fields become dict keys)."""
    return keystr(tuple(DictKey(k.name) if isinstance(k, GetAttrKey) else k for k in path))


def _train_state() -> Any:
    tx = optax.MultiSteps(seed_optimizer(), 2)
    return train_state.TrainState.create(apply_fn=None, params=PARAMS, tx=tx)


STATES = {
    "seed": lambda: trained(seed_optimizer()),
    "multi_steps": lambda: wrapped_state("multi_steps"),
    "partition": lambda: wrapped_state("partition"),
    "masked": lambda: wrapped_state("masked"),
    "named_chain": lambda: wrapped_state("named_chain"),
    "train_state": _train_state,
    "partition_masked_multi_steps": lambda: trained(
        optax.MultiSteps(
            optax.partition(
                {
                    "decay": optax.masked(optax.inject_hyperparams(optax.adam)(0.1), MASK),
                    "no_decay": optax.set_to_zero(),
                },
                LABELS,
            ),
            2,
        ).gradient_transformation()
    ),
}


@pytest.fixture(scope="module", params=sorted(STATES))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    state = STATES[request.param]()
    return state, _restore_raw(state, tmp_path_factory.mktemp(request.param))


def test_restored_form_is_plain_containers(pair: tuple[Any, Any]) -> None:
    state, raw = pair
    kinds = {type(node) for node in jax.tree.leaves(raw, is_leaf=lambda n: not isinstance(n, dict | list))}
    assert not any(is_state_type(kind) for kind in kinds)
    assert len(jax.tree.leaves(raw)) == len(jax.tree.leaves(state))


def test_counters_and_hyperparameters_are_those_of_the_live_state(pair: tuple[Any, Any]) -> None:
    state, raw = pair
    live, restored = oi.hyperparams(state, counters=True), oi.hyperparams(raw, counters=True)
    # The same keys (in the restored tree's order): a logger sees one series across a restore.
    assert sorted(live) == sorted(restored)
    for key, value in live.items():
        assert jnp.array_equal(restored[key], value)
        assert jnp.array_equal(oi.get(raw, key), value)


def test_patterns_select_the_same_nodes(pair: tuple[Any, Any]) -> None:
    state, raw = pair
    for query in ["count", "learning_rate", "mu", "hyperparams_states.*", "*.count", "inner_state"]:
        live = sorted(_as_restored(m.path) for m in oi.find(state, query))
        assert sorted(keystr(m.path) for m in oi.find(raw, query)) == live, query


def test_scheduled_values_are_refused_and_their_steps_settable(pair: tuple[Any, Any]) -> None:
    state, raw = pair
    scheduled = oi.find(state, "hyperparams_states>*")
    for match in scheduled:
        name = match.path[-1].key
        with pytest.raises(oi.ScheduledHyperparameterError):
            oi.set(raw, name, 0.5)
        hyperparams = _as_restored(match.path[:-2]) + "['hyperparams']"
        with pytest.raises(oi.ScheduledHyperparameterError):  # through an ancestor, too
            oi.set(raw, hyperparams, lambda h, name=name: {**h, name: h[name] * 2})
        moved = oi.set(raw, f"hyperparams_states.{name}.count", 5)
        assert int(oi.get(moved, f"hyperparams_states.{name}.count")) == 5


def test_describe_reads_like_the_live_state(pair: tuple[Any, Any]) -> None:
    state, raw = pair
    live, restored = str(oi.describe(state)).splitlines(), str(oi.describe(raw)).splitlines()
    assert len(restored) == len(live)  # the optimizer state is not folded away

    def names(lines: list[str]) -> list[str]:  # restored dicts list fields in key order
        return sorted(line.strip().split(":")[0] for line in lines[1:])

    def scheduled(lines: list[str]) -> list[str]:
        return sorted(line.strip() for line in lines if "(scheduled" in line)

    assert names(restored) == names(live) and scheduled(restored) == scheduled(live)


def test_restored_state_types_show_and_match_by_name(tmp_path: pathlib.Path) -> None:
    raw = _restore_raw(trained(seed_optimizer()), tmp_path)
    text = str(oi.describe(raw))
    assert "[1]: dict (InjectStatefulHyperparamsState)" in text
    assert "[0]: dict (ScaleByAdamState)" in text
    assert [keystr(m.path) for m in oi.find(raw, "ScaleByAdamState.mu")] == ["[1]['inner_state'][0]['mu']"]
    # Several types have adam's fields: the restored dict matches each of their names.
    assert oi.find(raw, "ScaleByBeliefState.mu") == oi.find(raw, "ScaleByAdamState.mu")


def test_set_keeps_the_restored_form(tmp_path: pathlib.Path) -> None:
    raw = _restore_raw(trained(seed_optimizer()), tmp_path)
    new = oi.set(raw, {"weight_decay": 0.5, "ScaleByAdamState.count": 9})
    assert jax.tree.structure(new) == jax.tree.structure(raw)
    assert float(new[1]["hyperparams"]["weight_decay"]) == 0.5
    assert int(new[1]["inner_state"][0]["count"]) == 9 and new[1]["count"] is raw[1]["count"]


# Where a dict is read as a state ---------------------------------------------------------------


def test_parameter_dicts_named_like_state_fields_are_not_states() -> None:
    params = {"count": jnp.zeros(2), "mu": jnp.ones(2), "nu": jnp.ones(2)}
    state = trained(optax.adam(1e-3), params=params)
    raw_like = [{"count": state[0].count, "mu": dict(state[0].mu), "nu": dict(state[0].nu)}, None]
    for tree in (state, raw_like):
        counters = oi.hyperparams(tree, counters=True)
        assert len(counters) == 1, counters  # the moments' `count` parameters are not counters
        description = str(oi.describe(tree))
        assert "mu['count']" not in description and "ScaleByAdamState" in description


def test_one_field_dicts_are_states_only_beside_states() -> None:
    count = jnp.int32(3)
    assert oi.hyperparams({"step": {"count": count}}, counters=True) == {}
    assert oi.hyperparams([{"count": count}], counters=True) == {}
    # In a restored chain (beside None, an EmptyState) it is `ScaleByScheduleState`.
    assert list(oi.hyperparams([None, {"count": count}], counters=True).values()) == [count]


def test_every_optax_field_that_holds_a_state_is_known() -> None:
    """`STATE_FIELDS` must name each field through which one optax state holds another, or a
    restored state inside it would not be recognised."""
    holding: set[str] = set()  # (records such as `ZoomLinesearchInfo` are data, not states)
    cases = [case() for case in FACTORIES.values()]
    states = [case.tx.init(case.params) for case in cases] + [wrapped_state(n) for n in WRAPPED]
    for state in states:
        holding.update(_fields_holding_states(state, None))
    assert holding <= STATE_FIELDS, holding - STATE_FIELDS
    assert {"inner_state", "inner_states", "inner_opt_state", "hyperparams_states"} <= holding


def _fields_holding_states(node: Any, field: str | None) -> set[str]:
    """The fields of optax states in `node` through which another state is reached; `field` is
    the field of the nearest enclosing state that `node` is under."""
    found: set[str] = set()
    if is_state_type(type(node)) and type(node).__name__.endswith("State"):
        if field is not None:
            found.add(field)
        for key, child in children_with_keys(node) or ():
            found |= _fields_holding_states(child, key.name)
        return found
    for _, child in children_with_keys(node) or ():
        found |= _fields_holding_states(child, field)
    return found


@pytest.mark.parametrize(
    "tx",
    [
        pytest.param(optax.adamw(schedule(), weight_decay=1e-4), id="adamw"),
        pytest.param(seed_optimizer(), id="seed"),
        pytest.param(optax.MultiSteps(optax.sgd(schedule(), 0.9), 2).gradient_transformation(), id="multi"),
        pytest.param(
            optax.partition(
                {"decay": optax.masked(optax.lion(1e-3), MASK), "no_decay": optax.sgd(0.1)}, LABELS
            ),
            id="partition",
        ),
    ],
)
def test_an_optimizer_reads_the_restored_state_as_the_live_one(
    tx: optax.GradientTransformation, tmp_path: pathlib.Path
) -> None:
    state = trained(tx)
    raw = _restore_raw(state, tmp_path)
    live, restored = oi.hyperparams(state, optimizer=tx), oi.hyperparams(raw, optimizer=tx)
    assert live.keys() == restored.keys() and live
    for key, value in live.items():
        assert jnp.array_equal(restored[key], value), key
    with pytest.raises(oi.OptimizerMismatchError):
        oi.hyperparams(raw, optimizer=optax.chain(optax.clip(1.0), tx))
