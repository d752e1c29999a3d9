"""Hyperparameters that were never injected, read from the optimizer itself (see docs/optimizer.md).

What is read from closures depends on optax's closure layout; the tests that pin it say so when a
new optax changes it (see test_closure_layout_of_this_optax).
"""

from __future__ import annotations

import inspect
import itertools
import re
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optree_inspect as oi
from helpers import MASK, PARAMS, schedule, trained
from optax_catalogue import INJECTED, P

GRADS = jax.tree.map(jnp.ones_like, PARAMS)

GIVEN: dict[str, tuple[Any, dict[str, float]]] = {
    "adam": (
        lambda: optax.adam(2e-3, b1=0.8, b2=0.99, eps=1e-7, eps_root=1e-9),
        {"learning_rate": 2e-3, "b1": 0.8, "b2": 0.99, "eps": 1e-7, "eps_root": 1e-9},
    ),
    "adamw": (
        lambda: optax.adamw(3e-4, b1=0.7, weight_decay=0.02),
        {"learning_rate": 3e-4, "b1": 0.7, "weight_decay": 0.02},
    ),
    "sgd": (lambda: optax.sgd(0.1, momentum=0.8), {"learning_rate": 0.1, "momentum": 0.8}),
    "lion": (lambda: optax.lion(1e-4, b1=0.85, b2=0.97, weight_decay=0.01), {"b1": 0.85, "b2": 0.97}),
    "rmsprop": (lambda: optax.rmsprop(1e-3, decay=0.8, eps=1e-6), {"decay": 0.8, "eps": 1e-6}),
    "clip": (lambda: optax.clip_by_global_norm(2.5), {"max_norm": 2.5}),
}


def wrap(kind: str, make: Any, params: Any = PARAMS) -> optax.GradientTransformation:
    if kind == "alone":
        return make()
    if kind == "chain":
        return optax.chain(optax.clip(10.0), make())
    if kind == "named_chain":
        return optax.named_chain(("guard", optax.clip(10.0)), ("body", make()))
    if kind == "partition":
        labels = jax.tree.map(lambda x: "main" if x.ndim == 2 else "frozen", params)
        return optax.partition({"main": make(), "frozen": optax.set_to_zero()}, labels)
    return optax.MultiSteps(make(), every_k_schedule=2).gradient_transformation()


@pytest.mark.parametrize("kind", ["alone", "chain", "named_chain", "partition", "multi_steps"])
@pytest.mark.parametrize("name", sorted(GIVEN))
def test_values_read_equal_the_arguments_given(name: str, kind: str) -> None:
    make, given = GIVEN[name]
    tx = wrap(kind, make)
    state = trained(tx)
    for hyperparameter, value in given.items():
        assert float(oi.get(state, hyperparameter, optimizer=tx)) == pytest.approx(value)
    values = oi.hyperparams(state, optimizer=tx)
    for hyperparameter, value in given.items():
        [query] = [q for q in values if q.split(".")[-1] == hyperparameter]
        assert float(values[query]) == pytest.approx(value)
        assert float(oi.get(state, query, optimizer=tx)) == pytest.approx(value)


NOT_READABLE = {
    "optimistic_adam": "passes learning_rate as alpha and beta of scale_by_optimistic_gradient",
    "rprop": "uses learning_rate only at init, as the initial step sizes (they are in the state)",
    "fromage": "folds learning_rate into a step size and a decay it computes from it",
}


SHARED_NAMES = {
    ("lamb", "eps"): "scale_by_trust_ratio has an eps too, which lamb leaves at 0",
}
"""Where an alias gives a second transformation a parameter of the same name but not the user's
value: both are read, each under its own transformation, and one of them is the injected value."""


@pytest.mark.parametrize("kind", ["alone", "chain", "named_chain", "partition", "multi_steps"])
@pytest.mark.parametrize("name", sorted(INJECTED))
def test_closure_values_agree_with_what_inject_hyperparams_stores(name: str, kind: str) -> None:
    """A differential test over the catalogue: plain factory read from closures, versus the same
    factory under inject_hyperparams read from its state, alone and inside each wrapper."""
    factory, static = INJECTED[name]
    extra = {"key": 0} if "key" in static else {}
    plain = wrap(kind, lambda: factory(learning_rate=0.0123, **extra), P)
    injected = oi.hyperparams(
        optax.inject_hyperparams(factory, static_args=static)(learning_rate=0.0123, **extra).init(P)
    )
    state = plain.init(P)
    reading = oi._optax.closures.read_optimizer(plain, state)
    assert reading.unmatched == ([] if name != "fromage" else reading.unmatched[:2])
    by_name: dict[str, list[Any]] = {}
    for constant in reading.constants:
        by_name.setdefault(constant.name, []).append(constant.value)
    assert by_name
    if name in NOT_READABLE:
        assert "learning_rate" not in by_name
        assert "weight_decay" not in by_name or name != "fromage"
        return
    # Every learning rate read (one per partition group) is the one given, with its sign.
    assert by_name["learning_rate"]
    assert all(float(v) == pytest.approx(0.0123, rel=1e-4) for v in by_name["learning_rate"]), by_name
    for hyperparameter in set(injected) & set(by_name):
        expected = np.float32(injected[hyperparameter])
        agree = any if (name, hyperparameter) in SHARED_NAMES else all
        assert agree(np.isclose(np.float32(v), expected, rtol=1e-4) for v in by_name[hyperparameter]), (
            hyperparameter
        )


@pytest.mark.parametrize("steps", [0, 1, 5])
def test_schedule_value_is_what_the_next_update_uses(steps: int) -> None:
    tx = optax.sgd(schedule())
    state = trained(tx, steps=steps)
    next_lr = float(oi.get(state, "learning_rate", optimizer=tx))
    assert next_lr == pytest.approx(float(schedule()(steps)))
    updates, _ = tx.update(GRADS, state, PARAMS)
    constant_updates, _ = optax.sgd(next_lr).update(GRADS, optax.sgd(next_lr).init(PARAMS), PARAMS)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.allclose(a, b)), updates, constant_updates))


@pytest.mark.parametrize("steps", [0, 1, 4])
def test_schedule_inside_adamw_matches_a_run_with_that_constant(steps: int) -> None:
    tx = optax.adamw(schedule(), weight_decay=0.1)
    state = trained(tx, steps=steps)
    next_lr = float(oi.get(state, "learning_rate", optimizer=tx))
    constant = optax.adamw(next_lr, weight_decay=0.1)
    constant_state = (state[0], state[1], optax.EmptyState())
    expected, _ = constant.update(GRADS, constant_state, PARAMS)
    updates, _ = tx.update(GRADS, state, PARAMS)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.allclose(a, b, rtol=1e-5)), updates, expected))


def test_multi_steps_counts_gradient_steps() -> None:
    tx = optax.MultiSteps(optax.sgd(schedule()), every_k_schedule=2).gradient_transformation()
    state = trained(tx, steps=5)  # 5 mini-steps: 2 gradient steps, one accumulation under way
    next_lr = float(oi.get(state, "learning_rate", optimizer=tx))
    assert next_lr == pytest.approx(float(schedule()(2)))
    updates, _ = tx.update(GRADS, state, PARAMS)  # completes the accumulation: sgd applies
    assert float(updates["head"]["w"][0, 0]) == pytest.approx(-next_lr)


def test_describe_labels_what_comes_from_the_optimizer() -> None:
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule()))
    text = str(oi.describe(trained(tx), optimizer=tx))
    assert "  [0]: EmptyState\n    max_norm: 1 (constant in the optimizer)" in text
    assert "      b1: 0.9 (constant in the optimizer)" in text
    assert (
        "      learning_rate: 0.0002 (schedule in the optimizer, for step 2, the next update)\n"
        "      count: i32[] = 2" in text
    )
    rows = [row for row in oi.describe(trained(tx), optimizer=tx) if row.type == "optimizer"]
    assert {row.query for row in rows} >= {"max_norm", "b1", "learning_rate", "weight_decay"}


def test_set_on_an_optimizer_constant_says_how_to_make_it_settable() -> None:
    tx = optax.adamw(1e-3)
    state = trained(tx)
    with pytest.raises(
        oi.ConstantHyperparameterError, match=r"constant of the optimizer[\s\S]*inject_hyperparams"
    ):
        oi.set(state, "weight_decay", 0.1, optimizer=tx)
    with pytest.raises(oi.NoMatchError, match=r"optimizer=tx[\s\S]*inject_hyperparams"):
        oi.set(state, "weight_decay", 0.1)


def test_injected_and_closure_values_use_the_same_names_without_duplicates() -> None:
    tx = optax.chain(
        optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3)
    )
    state = trained(tx)
    values = oi.hyperparams(state, optimizer=tx)
    assert list(values) == ["max_norm", "b1", "b2", "eps", "eps_root", "learning_rate", "weight_decay"]
    assert oi.get(state, "learning_rate", optimizer=tx) is state[1].hyperparams["learning_rate"]


def test_what_cannot_be_matched_is_said_never_guessed() -> None:
    def custom() -> optax.GradientTransformation:
        return optax.GradientTransformation(lambda p: optax.EmptyState(), lambda u, s, p=None: (u, s))

    tx = optax.chain(custom(), optax.sgd(0.1))
    state = trained(tx)
    description = str(oi.describe(state, optimizer=tx))
    assert description.splitlines()[-1] == (
        "(optimizer) not matched: custom.<lambda> at [0]: not an optax transformation"
    )
    assert float(oi.get(state, "learning_rate", optimizer=tx)) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "wrong",
    [
        optax.sgd(0.1),  # the same chain length, another first transformation: nothing is read
        optax.adamw(1e-3),  # another chain length
        optax.named_chain(("a", optax.adam(1e-3))),
        optax.partition({"x": optax.sgd(0.1)}, "x"),
        optax.MultiSteps(optax.adam(1e-3), 2).gradient_transformation(),
        optax.masked(optax.adam(1e-3), MASK),
    ],
)
def test_an_optimizer_that_is_not_the_states_is_refused_whole(wrong: Any) -> None:
    state = trained(optax.adam(2e-3))
    for call in (
        lambda: oi.get(state, "learning_rate", optimizer=wrong),
        lambda: oi.find(state, "b1", optimizer=wrong),
        lambda: oi.hyperparams(state, optimizer=wrong),
        lambda: oi.describe(state, optimizer=wrong),
        lambda: oi.set(state, "count", 1, optimizer=wrong),
    ):
        with pytest.raises(oi.OptimizerMismatchError, match="does not match this state") as info:
            call()
        assert len(str(info.value)) < 600


@pytest.mark.parametrize("optimizer", [{"lr": 1e-3}, [optax.adam(1e-3)], 1e-3, "adam", optax.adam])
def test_an_optimizer_argument_that_is_no_optimizer_is_a_documented_error(optimizer: Any) -> None:
    state = trained(optax.adam(2e-3))
    with pytest.raises(oi.InvalidArgumentError, match="GradientTransformation"):
        oi.get(state, "learning_rate", optimizer=optimizer)


@pytest.mark.parametrize(
    ("tx", "expected"),
    [
        (lambda: optax.adam(1.0), {"learning_rate": 1.0}),  # scale(-1.0) is the learning rate here
        (lambda: optax.sgd(-0.1), {"learning_rate": -0.1}),  # the sign as given
        (lambda: optax.sgd(0.3, momentum=0.9), {"learning_rate": 0.3, "momentum": 0.9}),
        (lambda: optax.lars(0.2), {"learning_rate": 0.2}),  # momentum follows the step
        (lambda: optax.rmsprop(0.05, momentum=0.5), {"learning_rate": 0.05}),
        (lambda: optax.adafactor(0.01), {"learning_rate": 0.01}),  # flip_sign=False, then scale(-1)
        (lambda: optax.chain(optax.scale_by_adam(), optax.scale(-2e-3)), {"learning_rate": 2e-3}),
        # A user's own scale that is not where optax's aliases put the learning rate: its factor.
        (lambda: optax.chain(optax.scale(0.5), optax.adam(1e-3)), {"step_size": 0.5, "learning_rate": 1e-3}),
        (lambda: optax.chain(optax.clip(1.0), optax.scale(0.5), optax.scale(-1.0)), {"step_size": None}),
        (lambda: optax.chain(optax.scale_by_adam(), optax.scale_by_schedule(schedule())), {"step_size": 0.0}),
    ],
)
def test_the_learning_rate_is_read_exactly_or_not_at_all(tx: Any, expected: dict[str, Any]) -> None:
    optimizer = tx()
    state = optimizer.init(PARAMS)
    values = oi.hyperparams(state, optimizer=optimizer)
    for name, value in expected.items():
        found = [v for q, v in values.items() if q.split(".")[-1] == name]
        assert found, (name, values)
        if value is not None:
            assert float(found[-1]) == pytest.approx(value)
    if "learning_rate" not in expected:
        assert not any(q.split(".")[-1] == "learning_rate" for q in values)


@pytest.mark.parametrize("scheduled", [False, True])
def test_fromage_reports_no_transformed_learning_rate_nor_an_invented_weight_decay(scheduled: bool) -> None:
    try:
        tx = optax.fromage(schedule() if scheduled else 0.5)
    except TypeError:
        pytest.skip(f"optax {optax.__version__}'s fromage takes no schedule")
    state = trained(tx)
    values = oi.hyperparams(state, optimizer=tx)
    assert not {"learning_rate", "weight_decay", "step_size"} & set(values), values
    assert float(values["min_norm"]) == pytest.approx(1e-6)
    if not scheduled:
        assert "fromage folds its learning rate" in str(oi.describe(state, optimizer=tx))
    with pytest.raises(oi.NoMatchError):
        oi.get(state, "learning_rate", optimizer=tx)


def test_a_scheduled_learning_rate_under_jit_is_the_schedules_value() -> None:
    tx = optax.adamw(schedule(), weight_decay=1e-4)
    state = trained(tx, steps=3)
    eager = oi.get(state, "learning_rate", optimizer=tx)
    traced = jax.jit(lambda s: oi.get(s, "learning_rate", optimizer=tx))(state)
    metrics = jax.jit(lambda s: oi.hyperparams(s, optimizer=tx))(state)
    assert eager is not None and float(traced) == pytest.approx(float(eager))
    assert float(metrics["learning_rate"]) == pytest.approx(float(eager))
    assert all(value is not None for value in metrics.values())


def test_type_queries_and_predicates_see_optimizer_held_values() -> None:
    tx = optax.adamw(1e-3, weight_decay=0.05)
    state = trained(tx)
    floats = oi.find(state, float, optimizer=tx)
    assert {jax.tree_util.keystr(m.path) for m in floats} >= {
        "[0].b1",
        "[1].weight_decay",
        "[2].learning_rate",
    }
    named = oi.find(state, lambda path, node: path and str(path[-1]) == ".weight_decay", optimizer=tx)
    assert [m.value for m in named] == [0.05]


def test_hyperparams_keys_are_unique_queries_even_where_the_state_holds_the_same_name() -> None:
    tx = optax.contrib.schedule_free_adamw(1e-3, warmup_steps=5)
    state = trained(tx)
    values = oi.hyperparams(state, optimizer=tx)
    assert "learning_rate" in {query.rsplit(".", 1)[-1] for query in values}
    for query, value in values.items():  # a schedule's value is computed again on each read
        assert jnp.array_equal(oi.get(state, query, optimizer=tx), value), query


def test_closure_layout_of_this_optax() -> None:
    """Pins the closure layout read in _closures.py; fails loudly when optax changes it."""
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule(), weight_decay=0.01))
    reading = oi._optax.closures.read_optimizer(tx, tx.init(PARAMS))
    found = [(jax.tree_util.keystr(c.path), c.schedule is not None) for c in reading.constants]
    assert (reading.unmatched, found) == (
        [],
        [
            ("[0].max_norm", False),
            ("[1][0].b1", False),
            ("[1][0].b2", False),
            ("[1][0].eps", False),
            ("[1][0].eps_root", False),
            ("[1][1].weight_decay", False),
            ("[1][2].learning_rate", True),
        ],
    ), f"optax {optax.__version__} changed the closure layout that optree_inspect reads (built for 0.2.8)"


def test_a_schedule_whose_counter_is_an_nnx_variable() -> None:
    from flax import nnx

    class Model(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.linear = nnx.Linear(2, 3, rngs=rngs)

    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 100))
    optimizer = nnx.Optimizer(Model(nnx.Rngs(0)), tx, wrt=nnx.Param)
    assert float(oi.get(optimizer.opt_state, "learning_rate", optimizer=tx)) == 0.0
    assert set(oi.hyperparams(optimizer.opt_state, optimizer=tx)) >= {"b1", "learning_rate", "weight_decay"}


# The inject hint names a factory that takes the name ---------------------------------------------


def _factory(where: str) -> Any:
    module, _, attribute = where.rpartition(".")
    return getattr(optax.contrib if module else optax, attribute)


@pytest.mark.parametrize("name", sorted(oi._optax.names.HYPERPARAMETER_FACTORIES))
def test_the_inject_hint_names_an_optax_factory_that_takes_the_hyperparameter(name: str) -> None:
    where = oi._optax.names.HYPERPARAMETER_FACTORIES[name]
    factory = _factory(where)
    signature = inspect.signature(factory)
    assert name in signature.parameters, (name, where)
    required = {p.name: 0.1 for p in signature.parameters.values() if p.default is p.empty and p.name != name}
    if "key" in signature.parameters:
        required["key"] = 0
    default = signature.parameters[name].default
    value = default if isinstance(default, int | float) and not isinstance(default, bool) else 0.5
    injected = optax.inject_hyperparams(factory)(**required, **{name: value})
    assert name in injected.init(PARAMS).hyperparams  # injecting it, as the hint says, works
    with pytest.raises(oi.NoMatchError) as info:
        oi.get(optax.sgd(0.1).init(PARAMS), name)
    [example] = [line for line in str(info.value).splitlines() if line.startswith("  >>> ")]
    assert example.startswith(f"  >>> optax.inject_hyperparams(optax.{where})(")
    assert re.search(rf"[(, ]{name}=\.\.\.[,)]", example), example


@pytest.mark.parametrize("alias", sorted(oi._optax.names.HYPERPARAMETER_ALIASES))
def test_every_alias_means_names_of_the_table(alias: str) -> None:
    meant = oi._optax.names.optax_names(alias)
    assert meant and set(meant) <= oi._optax.names.HYPERPARAMETER_NAMES
    assert alias not in oi._optax.names.HYPERPARAMETER_NAMES or alias == "momentum"


# A user's own scale: its exact factor, unless the chain is one an alias builds ------------------

FN = optax.linear_schedule(0.5, 0.25, 10)

USER_LAYOUTS: dict[str, tuple[Any, dict[str, list[float]]]] = {
    "scale before adam": (
        lambda: optax.chain(optax.scale(0.5), optax.adam(1e-3)),
        {"step_size": [0.5], "learning_rate": [1e-3]},
    ),
    "scale after adam": (
        lambda: optax.chain(optax.adam(1e-3), optax.scale(0.5)),
        {"step_size": [0.5], "learning_rate": [1e-3]},
    ),
    "negative scale after adam": (
        lambda: optax.chain(optax.adam(1e-3), optax.scale(-0.5)),
        {"step_size": [-0.5], "learning_rate": [1e-3]},
    ),
    "scale between": (
        lambda: optax.chain(optax.clip(1.0), optax.scale(0.5), optax.scale_by_adam()),
        {"step_size": [0.5]},
    ),
    "after clipping": (
        lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.scale(-0.5)),
        {"step_size": [-0.5]},
    ),
    "momentum after": (
        lambda: optax.chain(optax.clip(1.0), optax.scale(-0.5), optax.trace(0.9)),
        {"step_size": [-0.5], "momentum": [0.9]},
    ),
    "adam, then momentum": (
        lambda: optax.chain(optax.scale_by_adam(), optax.scale(-1e-3), optax.trace(0.9)),
        {"step_size": [-1e-3], "momentum": [0.9]},
    ),
    "not rprop's sign flip": (
        lambda: optax.chain(optax.scale_by_rprop(0.1), optax.scale(0.5)),
        {"step_size": [0.5]},
    ),
    "named_chain": (
        lambda: optax.named_chain(("a", optax.scale_by_adam()), ("b", optax.scale(-0.5))),
        {"step_size": [-0.5]},
    ),
    "partition": (
        lambda: optax.partition(
            {"a": optax.chain(optax.clip(1.0), optax.scale(-0.5)), "b": optax.sgd(0.1)},
            {"dense1": {"w": "a", "b": "b"}, "head": {"w": "b"}},
        ),
        {"step_size": [-0.5], "learning_rate": [0.1]},
    ),
    "multi_steps": (
        lambda: optax.MultiSteps(
            optax.chain(optax.adam(1e-3), optax.scale(0.5)), 2
        ).gradient_transformation(),
        {"step_size": [0.5], "learning_rate": [1e-3]},
    ),
    "a user schedule, then a sign flip": (
        lambda: optax.chain(optax.trace(0.9), optax.scale_by_schedule(FN), optax.scale(-1.0)),
        {"step_size": [0.5], "momentum": [0.9]},  # the sign flip is no hyperparameter
    ),
    # Chains an alias builds read as that alias, with its sign: nothing tells them apart.
    "adam's layout": (
        lambda: optax.chain(optax.scale_by_adam(), optax.scale(-2e-3)),
        {"learning_rate": [2e-3]},
    ),
    "adam(-0.5)'s layout": (
        lambda: optax.chain(optax.scale_by_adam(), optax.scale(0.5)),
        {"learning_rate": [-0.5]},
    ),
    "rmsprop's layout": (
        lambda: optax.chain(optax.scale_by_rms(), optax.scale(-0.1), optax.trace(0.9)),
        {"learning_rate": [0.1], "momentum": [0.9]},
    ),
    "adafactor without a learning rate": (lambda: optax.adafactor(learning_rate=None), {}),
    "cocob": (lambda: optax.contrib.cocob(0.3), {"learning_rate": [0.3]}),
    "lbfgs": (lambda: optax.lbfgs(0.5), {"learning_rate": [0.5]}),
}
if hasattr(optax, "optimistic_adam_v2"):  # optax 0.2.7 and newer
    USER_LAYOUTS["optimistic_adam_v2"] = (lambda: optax.optimistic_adam_v2(0.01), {"learning_rate": [0.01]})
ALIAS_LAYOUTS_ARE_THIS_OPTAX_S = tuple(map(int, optax.__version__.split(".")[:3])) >= (0, 2, 8)
"""The alias layouts are optax 0.2.8's: an older optax's alias of another layout (its `muon`,
say) reads its learning rate as `step_size`, the exact factor, never as another value."""


@pytest.mark.parametrize("layout", sorted(USER_LAYOUTS))
def test_a_scale_is_a_learning_rate_only_in_an_alias_layout(layout: str) -> None:
    make, expected = USER_LAYOUTS[layout]
    tx = make()
    state = tx.init(PARAMS)
    values = oi.hyperparams(state, optimizer=tx)
    read: dict[str, list[float]] = {}
    for query, value in values.items():
        name = query.split(".")[-1]
        if name in ("learning_rate", "step_size", "momentum"):
            read.setdefault(name, []).append(float(value))
    assert read.keys() == expected.keys(), values
    for name, found in expected.items():
        assert read[name] == pytest.approx(found), values
    text = str(oi.describe(state, optimizer=tx))
    for name in ("learning_rate", "step_size"):
        lines = [line for line in text.splitlines() if f" {name}: " in line and "in the optimizer" in line]
        assert len(lines) == len(expected.get(name, [])), text


def _alias_variants() -> list[tuple[str, Any]]:
    """Every optax alias that takes a learning rate, in each layout its flags and optional parts
    build (as optax 0.2.8 builds them)."""
    variants = []
    for module, prefix in ((optax, ""), (optax.contrib, "contrib.")):
        for name in sorted(dir(module)):
            function = getattr(module, name)
            if name.startswith("_") or isinstance(function, type) or not callable(function):
                continue
            try:
                parameters = inspect.signature(function).parameters
            except (TypeError, ValueError):
                continue
            if "learning_rate" not in parameters or "GradientTransformation" not in str(
                inspect.signature(function).return_annotation
            ):
                continue
            options = [
                (p.name, [True, False] if isinstance(p.default, bool) else [None, 0.9])
                for p in parameters.values()
                if isinstance(p.default, bool)
                or (p.default is None and p.name in ("momentum", "decay", "clipping_threshold"))
            ]
            for combination in itertools.product(*[values for _, values in options]):
                variants.append((prefix + name, dict(zip([n for n, _ in options], combination, strict=True))))
    return variants


def test_every_alias_layout_reads_its_learning_rate() -> None:
    """A differential test over optax's aliases and their flags: the learning rate given, read
    with its sign, once per group, nothing else as learning_rate or step_size."""
    checked = 0
    for name, flags in _alias_variants():
        if name.split(".")[-1].startswith("scale_by_"):  # a transformation, not an alias
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecations of the factories themselves
                tx = _factory(name)(learning_rate=0.0123, **flags)
                state = tx.init(P)
        except Exception:  # a combination the factory refuses, or needing other arguments
            continue
        reading = oi._optax.closures.read_optimizer(tx, state)
        rates = [float(c.value) for c in reading.constants if c.name == "learning_rate"]
        steps = [c for c in reading.constants if c.name == "step_size"]
        checked += 1
        assert all(abs(float(s.value)) == pytest.approx(0.0123) for s in steps), (name, flags, steps)
        if ALIAS_LAYOUTS_ARE_THIS_OPTAX_S:
            assert not steps, (name, flags, steps)
        if name.split(".")[-1] in NOT_READABLE:
            assert not rates, (name, flags)
        else:
            assert rates or steps, (name, flags)
            assert all(r == pytest.approx(0.0123) for r in rates), (name, flags, rates)
    assert checked > 100
