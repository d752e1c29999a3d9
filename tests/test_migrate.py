"""`migrate`: a state trained a few steps carried across each optimizer change users make, live and
from a checkpoint restored without its types: every moment of every parameter on both sides carried
bit-exactly by name, every new counter at the old step, nothing dropped that is not listed, and
where the new optimizer computes the same thing, ten more steps equal to the old optimizer's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optree_inspect as oi

PARAMS = {f"layer{i}": {"w": jnp.full((3, 3), i + 1.0), "b": jnp.full(3, 0.5 * i)} for i in range(4)}
SCHEDULE = optax.linear_schedule(2.0**-10, 2.0**-12, 64)


def grads_at(step: int, params: Any = PARAMS) -> Any:
    return jax.tree.map(lambda p: jnp.sin(p + 0.25 * (step + 1)), params)


def trained(tx: optax.GradientTransformation, params: Any = PARAMS, steps: int = 3) -> Any:
    state = tx.init(params)
    for step in range(steps):
        state = tx.update(grads_at(step, params), state, params)[1]
    return state


def as_restored(tree: Any) -> Any:
    """What orbax restores without a target: NamedTuples as dicts, tuples as lists, empty states
    as None."""
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return {k: as_restored(v) for k, v in tree._asdict().items()} if tree._fields else None
    if isinstance(tree, tuple | list):
        return [as_restored(v) for v in tree]
    if isinstance(tree, dict):
        return {k: as_restored(v) for k, v in tree.items()}
    return tree


def moments(state: Any) -> dict[tuple[str, str, str], np.ndarray]:
    """Every moment leaf by (field, layer, parameter), wherever its state stands."""
    found = {}
    for field in ("mu", "nu", "trace"):
        for match in oi.find(state, f"{field}.*.*"):
            layer, name = (jax.tree_util.keystr((k,)).strip("[]'.") for k in match.path[-2:])
            found[(field, layer, name)] = np.asarray(match.value)
    return found


def count_values(state: Any) -> list[int]:
    return [
        int(v)
        for k, v in oi.hyperparams(state, counters=True).items()
        if k.endswith(("count", "gradient_step"))
    ]


EDITS: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
    "+clip_by_global_norm in front": (
        lambda: optax.adam(2.0**-10),
        lambda: optax.chain(optax.clip_by_global_norm(1e6), optax.adam(2.0**-10)),
    ),
    "adam -> adamw": (lambda: optax.adam(2.0**-10), lambda: optax.adamw(2.0**-10, weight_decay=0.0)),
    "adamw -> inject_hyperparams(adamw) with a schedule": (
        lambda: optax.adamw(SCHEDULE, b1=0.875, b2=0.9375, weight_decay=2.0**-8),
        lambda: optax.inject_hyperparams(optax.adamw)(
            learning_rate=SCHEDULE, b1=0.875, b2=0.9375, weight_decay=2.0**-8
        ),
    ),
    "+MultiSteps": (
        lambda: optax.adam(2.0**-10),
        lambda: optax.MultiSteps(optax.adam(2.0**-10), every_k_schedule=1),
    ),
    "+apply_if_finite": (
        lambda: optax.adam(2.0**-10),
        lambda: optax.apply_if_finite(optax.adam(2.0**-10), 3),
    ),
}
SAME_UPDATES = sorted(EDITS)  # each new optimizer computes what the old one does


@pytest.fixture(params=["live", "restored"])
def form(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_every_moment_carries_and_every_counter_agrees(edit: str, form: str) -> None:
    make_old, make_new = EDITS[edit]
    old = trained(make_old())
    source = old if form == "live" else as_restored(old)
    migration = oi.migrate(source, make_new().init(PARAMS))
    carried, before = moments(migration.state), moments(old)
    assert carried.keys() == before.keys() and before
    for key, value in before.items():
        np.testing.assert_array_equal(carried[key], value, err_msg=str(key))
    assert set(count_values(migration.state)) == {3}, oi.hyperparams(migration.state, counters=True)
    assert jax.tree.structure(migration.state) == jax.tree.structure(make_new().init(PARAMS))
    assert all(row.kind != "dropped" or row.query for row in migration.rows)
    assert str(migration).count("\n") < 120


@pytest.mark.parametrize("edit", SAME_UPDATES)
def test_ten_more_steps_equal_the_old_optimizers(edit: str) -> None:
    make_old, make_new = EDITS[edit]
    old_tx, new_tx = make_old(), make_new()
    old = trained(old_tx)
    new = oi.migrate(old, new_tx.init(PARAMS)).state
    with jax.disable_jit():
        for step in range(3, 13):
            old_updates, old = old_tx.update(grads_at(step), old, PARAMS)
            new_updates, new = new_tx.update(grads_at(step), new, PARAMS)
            for a, b in zip(jax.tree.leaves(old_updates), jax.tree.leaves(new_updates), strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"step {step}")


LABELS = {name: "a" if name in ("layer0", "layer1") else "b" for name in PARAMS}


def _labels(moved: dict[str, str]) -> Any:
    return {
        name: {"w": moved.get(name, label), "b": moved.get(name, label)} for name, label in LABELS.items()
    }


def test_a_partition_relabel_carries_each_parameters_moments(form: str) -> None:
    """layer1 moves from group a to group b; layer3 moves from set_to_zero (c) to adam (a)."""
    old_labels = _labels({"layer3": "c"})
    new_labels = _labels({"layer1": "b", "layer3": "a"})
    groups = {"a": optax.adam(2.0**-10), "b": optax.adam(2.0**-9), "c": optax.set_to_zero()}
    old = trained(optax.partition(groups, old_labels))
    source = old if form == "live" else as_restored(old)
    migration = oi.migrate(source, optax.partition(groups, new_labels).init(PARAMS))
    state = migration.state
    a_mu = state.inner_states["a"].inner_state[0].mu
    b_mu = state.inner_states["b"].inner_state[0].mu
    old_b_mu = old.inner_states["b"].inner_state[0].mu
    # layer1 kept its name: its moments in group b are the old group a's; layer3 had none (zeros)
    np.testing.assert_array_equal(b_mu["layer1"]["w"], old.inner_states["a"].inner_state[0].mu["layer1"]["w"])
    np.testing.assert_array_equal(b_mu["layer2"]["w"], old_b_mu["layer2"]["w"])
    assert not np.any(np.asarray(a_mu["layer3"]["w"]))
    assert any(row.kind == "initialised" for row in migration.rows)


def test_a_layer_added_is_initialised_and_a_layer_removed_must_be_dropped(form: str) -> None:
    tx = optax.adam(2.0**-10)
    old = trained(tx)
    source = old if form == "live" else as_restored(old)
    more = {**PARAMS, "layer9": {"w": jnp.ones((3, 3)), "b": jnp.ones(3)}}
    added = oi.migrate(source, tx.init(more))
    np.testing.assert_array_equal(added.state[0].mu["layer2"]["w"], old[0].mu["layer2"]["w"])
    assert not np.any(np.asarray(added.state[0].mu["layer9"]["w"]))
    assert any(row.kind == "initialised" and "layer9" in row.summary for row in added.rows)
    fewer = {k: v for k, v in PARAMS.items() if k != "layer3"}
    with pytest.raises(oi.MigrationError, match="layer3") as info:
        oi.migrate(source, tx.init(fewer))
    assert "drop=" in str(info.value) and len(str(info.value)) < 3000
    removed = oi.migrate(source, tx.init(fewer), drop=["mu.layer3", "nu.layer3"])
    assert [row.kind for row in removed.rows].count("dropped") == 2
    assert oi.migrate(source, tx.init(fewer), drop=True).state[0].mu.keys() == fewer.keys()


def test_a_removed_transforms_state_is_an_error_unless_dropped() -> None:
    old = trained(optax.chain(optax.trace(0.5), optax.adam(2.0**-10)))
    like = optax.adam(2.0**-10).init(PARAMS)
    with pytest.raises(oi.MigrationError, match="trace"):
        oi.migrate(old, like)
    migration = oi.migrate(old, like, drop="TraceState")
    assert any(row.kind == "dropped" for row in migration.rows)


def test_rules_rename_parameters_and_refuse_what_matches_nothing() -> None:
    renamed = {k.replace("layer", "block"): v for k, v in PARAMS.items()}
    tx = optax.adam(2.0**-10)
    old = trained(tx)
    rules = {f"{field}.block{i}.*": f"{field}.layer{i}.*" for field in ("mu", "nu") for i in range(4)}
    migration = oi.migrate(old, tx.init(renamed), rules=rules)
    np.testing.assert_array_equal(migration.state[0].mu["block1"]["w"], old[0].mu["layer1"]["w"])
    np.testing.assert_array_equal(migration.state[0].nu["block3"]["b"], old[0].nu["layer3"]["b"])
    with pytest.raises(oi.MigrationError, match="pair no leaf"):
        oi.migrate(old, tx.init(renamed), rules={**rules, "mu.nothing.*": "mu.layer0.*"})


def test_a_dtype_change_is_cast_and_said() -> None:
    tx = optax.adam(2.0**-10)
    old = trained(tx)
    half = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
    migration = oi.migrate(old, tx.init(half))
    assert migration.state[0].mu["layer0"]["w"].dtype == jnp.bfloat16
    assert {row.kind for row in migration.rows} >= {"cast", "carried"}


def test_a_counter_without_an_old_step_asks_for_step() -> None:
    old = {"mu": PARAMS}
    like = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1).init(PARAMS)
    with pytest.raises(oi.MigrationError, match="step="):
        oi.migrate(old, like, drop=True)
    state = oi.migrate(old, like, drop=True, step=7).state
    assert int(state.count) == 7


def test_bad_arguments_are_refused_and_inputs_unchanged() -> None:
    tx = optax.adam(2.0**-10)
    old = trained(tx)
    before = jax.tree.map(np.asarray, old)
    with pytest.raises(oi.InvalidArgumentError):
        oi.migrate(old, tx.init(PARAMS), step=1.5)  # type: ignore[arg-type]
    with pytest.raises(oi.InvalidArgumentError):
        oi.migrate(old, tx.init(PARAMS), rules={"mu": 1})  # type: ignore[dict-item]
    with pytest.raises(oi.MigrationError, match="selects nothing"):
        oi.migrate(old, tx.init(PARAMS), drop="nonexistent")
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, old))


def test_the_plan_prints_as_a_listing() -> None:
    migration = oi.migrate(trained(optax.adam(2.0**-10)), optax.adamw(2.0**-10).init(PARAMS))
    assert repr(migration).startswith("Migration(3 carried)") and bool(migration)
    assert "<div" in migration._repr_html_()
    assert all(isinstance(row, oi.MigrationRow) for row in migration.rows)


def test_a_linen_train_state_into_the_nnx_optimizer_of_the_same_model(form: str) -> None:
    nnx = pytest.importorskip("flax.nnx")
    train_state = pytest.importorskip("flax.training.train_state")
    import inspect

    if "model" not in inspect.signature(nnx.Optimizer.update).parameters:
        pytest.skip("before flax 0.11 an nnx.Optimizer is no pytree")
    linen_params = {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}}
    tx = optax.adam(2.0**-10)
    old = train_state.TrainState.create(apply_fn=None, params=linen_params, tx=tx)
    for step in range(3):
        old = old.apply_gradients(grads=grads_at(step, linen_params))
    source = (
        old
        if form == "live"
        else as_restored({"step": old.step, "params": old.params, "opt_state": old.opt_state})
    )

    class Model(nnx.Module):
        def __init__(self, rngs: Any) -> None:
            self.dense = nnx.Linear(3, 4, rngs=rngs)

    like = nnx.state(nnx.Optimizer(Model(nnx.Rngs(0)), tx, wrt=nnx.Param))
    rules = {f"{field}.dense.*": f"{field}.Dense_0.*" for field in ("mu", "nu")}
    with pytest.raises(oi.MigrationError, match="params"):
        oi.migrate(source, like, rules=rules)
    migration = oi.migrate(source, like, rules=rules, drop="params")
    state = migration.state
    assert type(state) is type(like)
    mu = oi.get(state, "mu.dense.kernel")
    np.testing.assert_array_equal(mu, old.opt_state[0].mu["Dense_0"]["kernel"])
    assert int(oi.get(state, "ScaleByAdamState.count")) == 3 and int(oi.get(state, "step")) == 3


WRAPPERS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "apply_if_finite": (lambda tx: optax.apply_if_finite(tx, 3), lambda state: state.inner_state),
    "MultiSteps": (
        lambda tx: optax.MultiSteps(tx, every_k_schedule=1).gradient_transformation(),
        lambda state: state.inner_opt_state,
    ),
    "clip in front": (lambda tx: optax.chain(optax.clip_by_global_norm(1e6), tx), lambda state: state[1]),
}


def _without_hyperparameters(tree: Any) -> list[tuple[str, np.ndarray]]:
    """Every leaf by path but injected hyperparameters, which are the new optimizer's."""
    return [
        (jax.tree_util.keystr(path), np.asarray(leaf))
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        if "hyperparams'" not in jax.tree_util.keystr(path)
        and ".hyperparams[" not in jax.tree_util.keystr(path)
    ]


@hypothesis.settings(
    deadline=None, max_examples=max(5, hypothesis.settings().max_examples // 2)
)  # each: two inits
@hypothesis.given(data=hypothesis.strategies.data())
def test_random_optimizers_with_a_wrapper_added_or_removed(data: Any) -> None:
    from strategies import optimizers, params_trees

    params = data.draw(params_trees())
    tx = data.draw(optimizers(params))
    name = data.draw(hypothesis.strategies.sampled_from(sorted(WRAPPERS)))
    wrap, inner_of = WRAPPERS[name]
    added = data.draw(hypothesis.strategies.booleans())
    old_tx, new_tx = (tx, wrap(tx)) if added else (wrap(tx), tx)
    grads = jax.tree.map(jnp.ones_like, params)
    try:
        old = old_tx.init(params)
        for _ in range(2):
            old = old_tx.update(grads, old, params)[1]
    except TypeError:  # optax cannot run some compositions (see test_properties.py)
        hypothesis.reject()
    like = new_tx.init(params)
    migrated = oi.migrate(old, like, drop=None if added else True).state
    carried, before = (inner_of(migrated), old) if added else (migrated, inner_of(old))
    assert jax.tree.structure(migrated) == jax.tree.structure(like)
    got, expected = _without_hyperparameters(carried), _without_hyperparameters(before)
    assert [p for p, _ in got] == [p for p, _ in expected]
    for (path, a), (_, b) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=path)


def test_a_state_whose_moments_start_anew_counts_anew() -> None:
    """sgd replaced by adam: adam's moments are zeros, so its count is too (bias correction)."""
    old = trained(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), steps=5)
    new_tx = optax.inject_hyperparams(optax.adam)(learning_rate=0.1)
    state = oi.migrate(old, new_tx.init(PARAMS)).state
    assert int(state.count) == 5 and int(state.inner_state[0].count) == 0
    fresh = new_tx.init(PARAMS)
    migrated_update = new_tx.update(grads_at(5), state, PARAMS)[0]
    fresh_update = new_tx.update(grads_at(5), fresh._replace(count=state.count), PARAMS)[0]
    jax.tree.map(np.testing.assert_array_equal, migrated_update, fresh_update)


def test_a_moment_is_never_carried_twice() -> None:
    only_first = {name: {"w": name == "layer0", "b": name == "layer0"} for name in PARAMS}
    old = trained(optax.chain(optax.masked(optax.scale_by_adam(), only_first), optax.scale_by_adam(b1=0.5)))
    new = optax.chain(optax.scale_by_adam(), optax.scale_by_adam(b1=0.5)).init(PARAMS)
    state = oi.migrate(old, new).state
    np.testing.assert_array_equal(state[1].mu["layer1"]["w"], old[1].mu["layer1"]["w"])
    assert not np.any(np.asarray(state[0].mu["layer1"]["w"]))  # layer1 had no first moments
    np.testing.assert_array_equal(state[0].mu["layer0"]["w"], old[0].inner_state.mu["layer0"]["w"])


def test_states_of_one_type_at_no_common_place_are_refused_unless_named() -> None:
    """Which of three `scale_by_adam` was removed is not known: the plan refuses to guess."""
    old = trained(optax.chain(*(optax.scale_by_adam(b1=b1) for b1 in (0.125, 0.5, 0.875))))
    new = optax.chain(optax.scale_by_adam(b1=0.125), optax.scale_by_adam(b1=0.875)).init(PARAMS)
    with pytest.raises(oi.MigrationError, match="which carries into which"):
        oi.migrate(old, new)
    state = oi.migrate(old, new, drop="[1]").state
    np.testing.assert_array_equal(state[1].mu["layer2"]["w"], old[2].mu["layer2"]["w"])


def test_abstract_old_leaves_and_bad_drops_are_refused() -> None:
    tx = optax.adam(2.0**-10)
    abstract = jax.eval_shape(lambda: trained(tx))
    with pytest.raises(oi.LeafTypeError, match="arrays=True"):
        oi.migrate(abstract, tx.init(PARAMS))
    for bad in (5, 1.5, {"mu": 1}):
        with pytest.raises(oi.InvalidArgumentError):
            oi.migrate(trained(tx), tx.init(PARAMS), drop=bad)  # type: ignore[arg-type]
    with pytest.raises(oi.InvalidArgumentError):
        oi.migrate(trained(tx), tx.init(PARAMS), step=-1)
    assert (
        int(
            oi.migrate(
                {"mu": PARAMS},
                optax.inject_hyperparams(optax.sgd)(0.1).init(PARAMS),
                drop=True,
                step=np.int64(4),
            ).state.count
        )
        == 4
    )


def test_the_old_step_of_an_nnx_state() -> None:
    nnx = pytest.importorskip("flax.nnx")
    import inspect

    if "model" not in inspect.signature(nnx.Optimizer.update).parameters:
        pytest.skip("before flax 0.11 an nnx.Optimizer is no pytree")
    model = nnx.Linear(3, 3, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(2.0**-10), wrt=nnx.Param)
    for _ in range(5):
        optimizer.update(model, jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param)))
    new = nnx.Optimizer(model, optax.inject_hyperparams(optax.adam)(learning_rate=2.0**-10), wrt=nnx.Param)
    state = oi.migrate(nnx.state(optimizer), nnx.state(new)).state
    assert (
        int(
            oi.get(state, "InjectStatefulHyperparamsState>count", default=None)
            or oi.get(state, "InjectHyperparamsState>count")
        )
        == 5
    )


def partition(labels: dict[str, str]) -> optax.GradientTransformation:
    groups = {"a": optax.adam(2.0**-10), "b": optax.adam(2.0**-8), "s": optax.sgd(0.1, momentum=0.9)}
    return optax.partition(groups, labels)


LABELS = {name: "a" for name in PARAMS}


def test_each_row_names_the_old_region_its_values_came_from(form: str) -> None:
    """A group that takes moments from two old groups: a row for each run of one source, whose
    `source` holds, at each leaf's place below it, that leaf's value."""
    old = trained(partition({**LABELS, "layer1": "b", "layer2": "b"}))
    source = old if form == "live" else as_restored(old)
    migration = oi.migrate(source, partition(LABELS).init(PARAMS))
    old_values = dict(jax.tree_util.tree_leaves_with_path(source))
    checked = 0
    for row in migration.rows:
        if row.kind != "carried":
            continue
        assert row.source is not None
        below = oi.get(migration.state, row.query) if row.query else migration.state
        for suffix, value in jax.tree_util.tree_leaves_with_path(below):
            np.testing.assert_array_equal(value, old_values[(*row.source, *suffix)])
            checked += 1
    assert checked >= 2 * 2 * len(PARAMS)  # every mu and nu leaf
    sources = {jax.tree_util.keystr(row.source) for row in migration.rows if "layer1" in row.summary}
    assert sources and all("['b']" in text for text in sources)


@pytest.mark.parametrize("lost", [("layer1", "layer3"), ("layer0",), ("layer1", "layer2")])
def test_an_errors_drop_queries_select_exactly_the_leaves_that_carry_nowhere(
    form: str, lost: tuple[str, ...]
) -> None:
    """Following the error's suggestion drops what carries nowhere and nothing else."""
    old = trained(optax.adam(2.0**-10))
    kept = {name: value for name, value in PARAMS.items() if name not in lost}
    like = optax.adam(2.0**-10).init(kept)
    source = old if form == "live" else as_restored(old)
    with pytest.raises(oi.MigrationError) as raised:
        oi.migrate(source, like)
    queries = [line.rsplit("drop=", 1)[1].strip("'") for line in str(raised.value).splitlines()[1:]]
    covered = set()
    for query in queries:
        for match in oi.find(source, query):
            covered |= {(*match.path, *p) for p, _ in jax.tree_util.tree_leaves_with_path(match.value)}
    lost_leaves = {
        path
        for path, _ in jax.tree_util.tree_leaves_with_path(source)
        if any(f"'{name}'" in jax.tree_util.keystr(path) for name in lost)
    }
    assert covered == lost_leaves
    state = oi.migrate(source, like, drop=queries).state
    for name in kept:
        np.testing.assert_array_equal(state[0].mu[name]["w"], old[0].mu[name]["w"])
    assert int(state[0].count) == int(old[0].count)


@pytest.mark.parametrize("change", ["layer added", "regrouped"])
def test_a_rows_source_stands_where_its_path_does(form: str, change: str) -> None:
    """Each carried row's leaves stand below its `source` in the old state as below its `path`
    in the new one (the same names under both)."""
    if change == "layer added":
        old = trained(optax.adam(2.0**-10))
        like = optax.adam(2.0**-10).init({**PARAMS, "extra": {"w": jnp.ones(2)}})
    else:
        old = trained(partition({**LABELS, "layer1": "b"}))
        like = partition({**LABELS, "layer2": "b"}).init(PARAMS)
    source_tree = old if form == "live" else as_restored(old)
    migration = oi.migrate(source_tree, like, drop=True)
    old_values = dict(jax.tree_util.tree_leaves_with_path(source_tree))
    checked = 0
    for row in migration.rows:
        if row.kind != "carried" or not row.query:
            continue
        assert row.source is not None
        for suffix, value in jax.tree_util.tree_leaves_with_path(oi.get(migration.state, row.query)):
            np.testing.assert_array_equal(value, old_values[(*row.source, *suffix)])
            checked += 1
    assert checked >= 2 * 2 * len(PARAMS)


def test_a_counter_whose_states_moments_all_start_anew_keeps_likes_value(form: str) -> None:
    """An adam group that held no parameters kept counting; given parameters whose moments are
    all new, its count starts anew (bias correction), as does one whose moments are dropped."""
    old = trained(partition({name: "s" for name in PARAMS}), steps=3)
    source = old if form == "live" else as_restored(old)
    state = oi.migrate(source, partition(LABELS).init(PARAMS), drop="trace").state
    assert int(state.inner_states["a"].inner_state[0].count) == 0
    adam = trained(optax.adam(2.0**-10))
    dropped = oi.migrate(
        adam if form == "live" else as_restored(adam), optax.adam(2.0**-10).init(PARAMS), drop=["mu", "nu"]
    )
    assert int(dropped.state[0].count) == 0
    assert int(oi.migrate(adam, optax.adam(2.0**-10).init(PARAMS)).state[0].count) == 3


def test_multisteps_accumulation_carries_or_starts_anew_with_its_accumulators() -> None:
    """An accumulation in progress carries (the next update is the old optimizer's); where the
    accumulators are dropped, `mini_step` starts anew with them and `gradient_step` goes on."""
    tx = optax.MultiSteps(optax.adam(2.0**-10), every_k_schedule=4)
    old = trained(tx, steps=7)
    assert int(old.mini_step) == 3
    carried = oi.migrate(old, tx.init(PARAMS)).state
    assert int(carried.mini_step) == 3
    new_update, _ = tx.update(grads_at(7), carried, PARAMS)
    old_update, _ = tx.update(grads_at(7), old, PARAMS)
    jax.tree.map(np.testing.assert_array_equal, new_update, old_update)
    with pytest.raises(oi.MigrationError):
        oi.migrate(old, optax.adam(2.0**-10).init(PARAMS))  # the accumulators carry nowhere
    restarted = oi.migrate(old, tx.init(PARAMS), drop="acc_grads")
    assert int(restarted.state.mini_step) == 0
    assert int(restarted.state.gradient_step) == int(old.gradient_step) == 1
    assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(restarted.state.acc_grads))
    np.testing.assert_array_equal(
        restarted.state.inner_opt_state[0].nu["layer2"]["w"], old.inner_opt_state[0].nu["layer2"]["w"]
    )
    assert "mini_step: initialised" in str(restarted) and "acc_grads: dropped" in str(restarted)


@pytest.mark.parametrize("keys", [("1", "01"), ("0", "00"), ("7", "007", "70")])
def test_keys_that_spell_one_int_differently_stay_apart(keys: tuple[str, ...]) -> None:
    params = {key: jnp.full(2, float(i)) for i, key in enumerate(keys)}
    old = trained(optax.adam(2.0**-10), params)
    state = oi.migrate(old, optax.adam(2.0**-10).init(params)).state
    for key in keys:
        np.testing.assert_array_equal(state[0].mu[key], old[0].mu[key])


def test_a_rename_into_another_partition_group() -> None:
    renamed = {("encoder" if name == "layer0" else name): value for name, value in PARAMS.items()}
    old = trained(partition({**LABELS, "layer0": "b"}))
    like = partition({("encoder" if n == "layer0" else n): "a" for n in PARAMS}).init(renamed)
    state = oi.migrate(old, like, rules={"encoder.*": "layer0.*"}).state
    np.testing.assert_array_equal(
        state.inner_states["a"].inner_state[0].nu["encoder"]["b"],
        old.inner_states["b"].inner_state[0].nu["layer0"]["b"],
    )


def test_an_abstract_old_step_for_a_new_counter_is_refused() -> None:
    abstract = jax.eval_shape(lambda: trained(optax.adam(2.0**-10)))
    like = optax.inject_hyperparams(optax.scale)(step_size=1.0).init(PARAMS)
    with pytest.raises(oi.LeafTypeError, match="step="):
        oi.migrate(abstract, like, drop=True)
    assert int(oi.migrate(abstract, like, drop=True, step=5).state.count) == 5


def test_a_scheduled_hyperparameter_keeps_the_value_its_last_update_used() -> None:
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=optax.linear_schedule(1.0, 0.0, 10))
    old = trained(tx, steps=4)
    migration = oi.migrate(old, tx.init(PARAMS))
    kept = migration.state.hyperparams["learning_rate"]
    assert float(kept) == float(old.hyperparams["learning_rate"]) == np.float32(0.7)
    assert "used at step 3" in str(oi.describe(migration.state))
    constant = optax.inject_hyperparams(optax.adam)(learning_rate=0.5)
    assert float(oi.migrate(old, constant.init(PARAMS)).state.hyperparams["learning_rate"]) == 0.5
    fresh = oi.migrate(trained(optax.sgd(0.1)), tx.init(PARAMS), drop=True, step=0).state
    assert float(fresh.hyperparams["learning_rate"]) == 1.0
