"""find and get: every query form, wrapper and container of the README, and its errors."""

from __future__ import annotations

import collections
import dataclasses
import enum
from typing import Any, NamedTuple

import equinox as eqx
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey, keystr

import optree_inspect as oi
from helpers import (
    MASK,
    PARAMS,
    WRAPPED,
    layered_params,
    nnx_optimizer,
    seed_optimizer,
    trained,
    wrapped_state,
)
from properties import nodes

SEED_STATE = trained(seed_optimizer())


# Query forms -----------------------------------------------------------------------------------


def test_key_path_keystr_pattern_type_and_predicate_select_the_same_node() -> None:
    path = (SequenceKey(1), GetAttrKey("hyperparams"), DictKey("learning_rate"))
    expected = SEED_STATE[1].hyperparams["learning_rate"]
    assert oi.get(SEED_STATE, path) is expected
    assert oi.get(SEED_STATE, "[1].hyperparams['learning_rate']") is expected
    assert oi.get(SEED_STATE, "learning_rate") is expected
    assert oi.get(SEED_STATE, lambda p, _: p == path) is expected
    assert oi.get(SEED_STATE, optax.ScaleByAdamState) is SEED_STATE[1].inner_state[0]


def test_match_is_a_named_tuple_of_jax_path_and_node() -> None:
    [match] = oi.find(SEED_STATE, "learning_rate")
    assert isinstance(match, oi.Match)
    assert keystr(match.path) == "[1].hyperparams['learning_rate']"
    assert oi.get(SEED_STATE, match.path) is match.value


def test_empty_keystr_and_empty_key_path_are_the_root() -> None:
    assert oi.get(SEED_STATE, "") is SEED_STATE
    assert oi.get(SEED_STATE, ()) is SEED_STATE


def test_every_leaf_path_and_its_keystr_round_trip_to_the_same_object() -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(SEED_STATE)[0]:
        assert oi.get(SEED_STATE, path) is leaf
        assert oi.get(SEED_STATE, keystr(path)) is leaf


def test_find_returns_pre_order_with_siblings_in_flatten_order() -> None:
    paths = [keystr(m.path) for m in oi.find(SEED_STATE, "count")]
    assert paths == ["[1].count", "[1].inner_state[0].count"]
    everything = [m.path for m in oi.find(SEED_STATE, lambda p, n: True)]
    leaf_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(SEED_STATE)[0]]
    assert [p for p in everything if p in set(leaf_paths)] == leaf_paths


def test_subsequence_rule_and_last_component_is_the_last_edge() -> None:
    state = wrapped_state("named_chain")
    assert keystr(oi.find(state, "body.learning_rate")[0].path) == "['body'].hyperparams['learning_rate']"
    assert oi.find(state, "clip.learning_rate") == []
    # "mu" names the subtree, not the leaves below it.
    [mu] = oi.find(state, "mu")
    assert mu.value is state["body"].inner_state[0].mu


def test_globs_match_keys_and_type_names() -> None:
    found = [keystr(m.path) for m in oi.find(SEED_STATE, "mu.dense1.*")]
    assert found == ["[1].inner_state[0].mu['dense1']['b']", "[1].inner_state[0].mu['dense1']['w']"]
    assert [type(m.value).__name__ for m in oi.find(SEED_STATE, "ScaleBy*")] == ["ScaleByAdamState"]
    assert len(oi.find(SEED_STATE, "n?")) == 1


def test_type_name_component_and_type_query() -> None:
    assert oi.get(SEED_STATE, "ScaleByAdamState.mu") is SEED_STATE[1].inner_state[0].mu
    assert oi.get(SEED_STATE, "ScaleByAdamState.count") is SEED_STATE[1].inner_state[0].count
    empties = oi.find(SEED_STATE, optax.EmptyState)
    assert [keystr(m.path) for m in empties] == ["[0]", "[1].inner_state[1]", "[1].inner_state[2]"]


def test_root_type_name_matches_a_pattern() -> None:
    state = optax.scale_by_adam().init(PARAMS)
    assert oi.get(state, "ScaleByAdamState.mu") is state.mu
    assert oi.get(state, "ScaleByAdamState") is state


def test_bracketed_literals_for_dotted_and_integer_keys() -> None:
    tree = {"mu": {"enc.1": {"w": 1.0}, "0": {"w": 3.0}}, "nu": {0: {"w": 2.0}}}
    assert oi.get(tree, "mu['enc.1'].w") == 1.0
    assert oi.get(tree, "nu[0].w") == 2.0
    assert oi.get(tree, "mu['0'].w") == 3.0
    assert oi.get(tree, "['nu'][0]['w']") == 2.0
    assert oi.find(tree, "mu[0].w") == []
    assert oi.get(tree, '["mu"]["enc.1"]["w"]') == 1.0


def test_keystr_index_is_resolved_against_the_node() -> None:
    tree = {"a": [10.0, 20.0], "b": {1: 30.0}}
    assert oi.get(tree, "['a'][1]") == 20.0
    assert oi.get(tree, "['b'][1]") == 30.0
    [path] = [m.path for m in oi.find(tree, "['b'][1]")]
    assert path == (DictKey("b"), DictKey(1))


class _Pair(NamedTuple):
    first: Any
    second: Any


class _Shadowed(_Pair):
    @property
    def first(self) -> str:  # type: ignore[override]
        return "a property, not the field JAX flattens"


class _Color(str, enum.Enum):
    RED = "red"


def test_exact_paths_select_every_node_of_every_container_and_nothing_else() -> None:
    """Each node by its JAX key path and its keystr, through dicts of `str`, `int`, `bool` and `str`
    subclass keys, OrderedDict, defaultdict, lists, tuples and NamedTuples (a field shadowed by a
    property is still the item JAX flattens); and a step that names
    no child of its node (an index past the end, `True` for `1`, a field of a dict) selects none."""
    tree = {
        "pair": _Pair(1.0, [2.0, (3.0,)]),
        "shadowed": _Shadowed(12.0, 13.0),
        "ints": {0: 4.0, 1: {"x": 5.0}},
        "flags": {True: 6.0},
        "ordered": collections.OrderedDict(b=7.0, a=8.0),
        "default": collections.defaultdict(list, {"k": 9.0}),
        "enum": {_Color.RED: 10.0},
        "np": {np.str_("s"): 11.0},
    }
    for path, node in nodes(tree):
        assert [(m.path, m.value) for m in oi.find(tree, path)] == [(path, node)]
        if any(isinstance(key, DictKey) and type(key.key) not in (str, int, bool) for key in path):
            continue  # its keystr (`[<_Color.RED: 'red'>]`, `[np.str_('s')]`) is no literal
        [found] = oi.find(tree, keystr(path))
        assert found.value is node and keystr(found.path) == keystr(path)
    for query in (
        "['pair'][0]",
        "['pair'].third",
        "['pair'].second[2]",
        "['pair'].second[-1]",
        "['pair'].second[True]",
        "['ints'][2]",
        "['ints'][False]",
        "['flags'][1]",
        "['ordered'].a",
        "['default']['j']",
        ".pair",
        "[0]",
    ):
        assert oi.find(tree, query) == [], query
    # a key path's `DictKey(0)` names a dict's key, never a sequence's element; `SequenceKey(0)`
    # names an element, never a dict's key
    second = (DictKey("pair"), GetAttrKey("second"))
    for path in [
        (*second, DictKey(0)),
        (*second, SequenceKey(1), DictKey(0)),
        (DictKey("ints"), SequenceKey(0)),
        (DictKey("pair"), DictKey("first")),
        (SequenceKey(0),),
    ]:
        assert oi.find(tree, path) == [], path
    assert oi.get(tree, "['enum']['red']") == 10.0  # a str equals its (str, Enum) key, as in a dict
    assert oi.get(tree, "['np']['s']") == 11.0


def test_flat_index_key_of_unkeyed_custom_nodes() -> None:
    @jax.tree_util.register_pytree_node_class
    class Pair:
        def __init__(self, a: Any, b: Any) -> None:
            self.a, self.b = a, b

        def tree_flatten(self) -> tuple[tuple[Any, Any], None]:
            return (self.a, self.b), None

        @classmethod
        def tree_unflatten(cls, aux: None, children: Any) -> Pair:
            return cls(*children)

    tree = {"p": Pair(1.0, 2.0)}
    [(path, _leaf)] = [(p, v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0] if v == 2.0]
    assert path[-1] == FlattenedIndexKey(1)
    assert oi.get(tree, "['p'][<flat index 1>]") == 2.0
    assert oi.get(tree, path) == 2.0


def test_schedule_bookkeeping_is_entered_only_when_named() -> None:
    state = wrapped_state("inject_scheduled")
    assert oi.get(state, "learning_rate") is state.hyperparams["learning_rate"]
    count = oi.get(state, "hyperparams_states.learning_rate.count")
    assert count is state.hyperparams_states["learning_rate"].count
    assert [keystr(m.path) for m in oi.find(state, "WrappedScheduleState")] == []
    assert len(oi.find(state, lambda p, n: type(n).__name__ == "WrappedScheduleState")) == 1
    assert oi.get(state, ".hyperparams_states['learning_rate'].count") is count


# Wrappers and containers -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(WRAPPED) - {"partition"}))
def test_learning_rate_is_a_single_match_under_every_wrapper(name: str) -> None:
    state = wrapped_state(name)
    [match] = oi.find(state, "learning_rate")
    assert match.path[-2:] == (GetAttrKey("hyperparams"), DictKey("learning_rate"))
    assert oi.get(state, match.path) is match.value


def test_partition_labels_select_one_inner_optimizer() -> None:
    state = wrapped_state("partition")
    decay = oi.get(state, "decay.learning_rate")
    assert decay is state.inner_states["decay"].inner_state.hyperparams["learning_rate"]
    assert len(oi.find(state, "learning_rate")) == 2
    with pytest.raises(oi.AmbiguousMatchError):
        oi.get(state, "learning_rate")


def test_masked_nodes_are_nodes() -> None:
    state = trained(optax.masked(optax.adam(1e-3), MASK))
    holes = oi.find(state, optax.MaskedNode)
    assert [keystr(m.path) for m in holes] == [
        ".inner_state[0].mu['dense1']['b']",
        ".inner_state[0].nu['dense1']['b']",
    ]
    assert oi.get(state, "mu.dense1.b") == optax.MaskedNode()


def test_multi_steps_counters() -> None:
    state = wrapped_state("multi_steps")
    assert oi.get(state, "gradient_step") is state.gradient_step
    assert oi.get(state, "acc_grads.dense1.w") is state.acc_grads["dense1"]["w"]


def test_deprecated_inject_state_is_walked_like_the_new_one() -> None:
    inner = optax.adam(1e-3).init(PARAMS)
    hyperparams = {"learning_rate": jnp.asarray(1e-3)}
    state = optax.InjectHyperparamsState(jnp.zeros([], jnp.int32), hyperparams, inner)
    assert oi.get(state, "learning_rate") is state.hyperparams["learning_rate"]


def test_flax_train_state() -> None:
    ts = train_state.TrainState.create(apply_fn=lambda x: x, params=PARAMS, tx=seed_optimizer())
    assert oi.get(ts, "learning_rate") is ts.opt_state[1].hyperparams["learning_rate"]
    assert keystr(oi.find(ts, "learning_rate")[0].path) == ".opt_state[1].hyperparams['learning_rate']"
    assert oi.get(ts, "TrainState.step") is ts.step


def test_flax_struct_equinox_and_register_dataclass_containers() -> None:
    opt_state = seed_optimizer().init(PARAMS)

    @flax.struct.dataclass
    class FlaxBox:
        opt: Any
        name: str = flax.struct.field(pytree_node=False, default="x")

    class EqxBox(eqx.Module):
        opt: Any
        step: jax.Array

    @jax.tree_util.register_dataclass
    @dataclasses.dataclass
    class JaxBox:
        opt: Any

    expected = opt_state[1].hyperparams["learning_rate"]
    for box in (FlaxBox(opt_state), EqxBox(opt_state, jnp.zeros([])), JaxBox(opt_state), {"opt": opt_state}):
        [match] = oi.find(box, "learning_rate")
        assert match.value is expected
        assert keystr(match.path).endswith("[1].hyperparams['learning_rate']")


def test_nnx_optimizer_variables_are_nodes_returned_as_their_arrays() -> None:
    optimizer = nnx_optimizer()
    held = optimizer.opt_state[1].hyperparams["learning_rate"]
    lr = oi.get(optimizer.opt_state, "learning_rate", variables=True)
    assert lr is held
    assert oi.get(optimizer.opt_state, "learning_rate") is oi._compat.variable_value(held)
    kernel = oi.get(optimizer.opt_state, "mu.linear.kernel")
    assert isinstance(kernel, jax.Array)
    assert isinstance(oi.get(optimizer.opt_state, "mu.linear.kernel", variables=True), nnx.Variable)
    held_mu = optimizer.opt_state[1].inner_state[0].mu
    mu = oi.get(optimizer.opt_state, "mu")
    assert type(mu) is type(held_mu)
    assert not any(map(oi._leaf.is_variable, jax.tree.leaves(mu, is_leaf=oi._leaf.is_variable)))
    assert all(map(oi._leaf.is_variable, jax.tree.leaves(held_mu, is_leaf=oi._leaf.is_variable)))
    if jax.tree_util.default_registry.flatten_one_level(held) is None:
        pytest.skip("before flax 0.11 a Variable is a leaf to JAX: it has no .value child")
    assert oi.get(optimizer.opt_state, "learning_rate.value") is oi._compat.variable_value(held)


def test_custom_node_with_keys_that_are_not_attributes() -> None:
    @jax.tree_util.register_pytree_with_keys_class
    class Merged:
        """A wrapper whose flatten merges its inner state's children into its own."""

        def __init__(self, inner: Any, count: Any) -> None:
            self.inner, self.count = inner, count

        def tree_flatten_with_keys(self) -> tuple[list[tuple[Any, Any]], None]:
            mu, nu = self.inner
            return [(DictKey("m"), mu), (DictKey("v"), nu), (GetAttrKey("count"), self.count)], None

        def tree_flatten(self) -> tuple[list[Any], None]:
            return [*self.inner, self.count], None

        @classmethod
        def tree_unflatten(cls, aux: None, children: Any) -> Merged:
            return cls(tuple(children[:2]), children[2])

    tree = Merged(({"w": 1.0}, {"w": 2.0}), 5)
    assert oi.get(tree, "['v']['w']") == 2.0
    assert oi.get(tree, "v.w") == 2.0
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        assert oi.get(tree, path) == leaf


def test_ordered_and_default_dicts_and_none_nodes() -> None:
    tree = collections.OrderedDict(b={"x": None}, a=collections.defaultdict(int, {"k": 1.0}))
    assert oi.get(tree, "a.k") == 1.0
    assert oi.get(tree, "x") is None
    assert oi.find(tree, "x")[0].path == (DictKey("b"), DictKey("x"))


# Transformations ---------------------------------------------------------------------------------


def test_find_and_get_work_on_tracers_inside_jit() -> None:
    @jax.jit
    def read(state: Any) -> jax.Array:
        assert len(oi.find(state, "count")) == 2
        return oi.get(state, "learning_rate") + oi.get(state, "[1].inner_state[0].count")

    assert read(SEED_STATE) == SEED_STATE[1].hyperparams["learning_rate"] + 2


def test_type_query_sees_tracers_as_jax_arrays() -> None:
    @jax.jit
    def count_arrays(state: Any) -> int:
        return jnp.asarray(len(oi.find(state, jax.Array)))

    assert count_arrays(SEED_STATE) == len(jax.tree.leaves(SEED_STATE))


# Errors ----------------------------------------------------------------------------------------


def test_query_error_is_a_key_error_with_a_plain_message() -> None:
    with pytest.raises(KeyError) as info:
        oi.get(SEED_STATE, "learnin_rate")
    assert isinstance(info.value, oi.NoMatchError) and isinstance(info.value, oi.QueryError)
    assert str(info.value).startswith("No node matches 'learnin_rate'.")
    assert "Close names in the tree: learning_rate." in str(info.value)


def test_default_is_returned_for_no_match_even_none() -> None:
    assert oi.get(SEED_STATE, "nothing_here", default=None) is None
    assert oi.get(SEED_STATE, ".nothing", default=3) == 3


def test_ambiguous_lists_candidates_each_with_a_query_that_selects_only_it() -> None:
    with pytest.raises(oi.AmbiguousMatchError) as info:
        oi.get(SEED_STATE, "count")
    message = str(info.value)
    assert "'count' matches 2 nodes" in message
    for line in message.splitlines()[1:]:
        path, query = line.strip().split("  ->  get(tree, ")
        assert keystr(oi.find(SEED_STATE, query.rstrip(")").strip("'"))[0].path) == path
        assert len(oi.find(SEED_STATE, query.rstrip(")").strip("'"))) == 1


def test_exact_path_no_match_names_the_missing_step_and_lists_children() -> None:
    with pytest.raises(oi.NoMatchError) as info:
        oi.get(SEED_STATE, "[1].hyperparamz['learning_rate']")
    assert "[1] (InjectStatefulHyperparamsState) has no child .hyperparamz" in str(info.value)
    assert ".hyperparams_states" in str(info.value)


def test_namedtuple_fields_are_attributes_not_indices() -> None:
    with pytest.raises(oi.NoMatchError, match=r"\.count"):
        oi.get(SEED_STATE, "[1].inner_state[0][0]")


def test_hyperparameter_missing_from_the_state_says_to_inject() -> None:
    state = trained(optax.adamw(1e-3))
    with pytest.raises(oi.NoMatchError, match=r"optax\.inject_hyperparams"):
        oi.get(state, "learning_rate")
    with pytest.raises(oi.NoMatchError, match=r"injected ones here are b1, b2[\s\S]*clip_by_global_norm"):
        oi.get(SEED_STATE, "max_norm")
    with pytest.raises(oi.NoMatchError, match="Did you mean 'b1'"):
        oi.get(SEED_STATE, "momentum")  # adam's momentum is b1


@pytest.mark.parametrize(
    ("query", "position"),
    [("mu..w", 3), ("mu.", 3), ("mu[0", 4), ("[1]x", 3), ("mu[]", 3), (".1abc", 1), ("mu['a", 5), ("a]", 1)],
)
def test_malformed_queries_are_value_errors_that_point_at_the_position(query: str, position: int) -> None:
    with pytest.raises(oi.QuerySyntaxError) as info:
        oi.find(SEED_STATE, query)
    assert isinstance(info.value, ValueError) and isinstance(info.value, oi.QueryError)
    assert info.value.position == position
    assert str(info.value).splitlines()[-1] == " " * (2 + position) + "^"


def test_unsupported_query_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="A query is"):
        oi.find(SEED_STATE, 3)


def test_keystr_is_parsed_never_evaluated() -> None:
    with pytest.raises(oi.QuerySyntaxError):
        oi.find(SEED_STATE, "[__import__('os').getcwd()]")


def test_messages_stay_bounded_on_a_20000_leaf_state() -> None:
    state = seed_optimizer().init(layered_params(5000))
    assert len(jax.tree.leaves(state)) > 20000
    for query in ("w", "learnin_rate", "[1].inner_state[0].mu['nope']", "layer*.w"):
        with pytest.raises(oi.QueryError) as info:
            oi.get(state, query)
        assert len(str(info.value)) < 1500, query
        assert len(str(info.value).splitlines()) <= 12, query


def test_the_input_tree_is_never_modified() -> None:
    state = trained(seed_optimizer())
    before = jax.tree_util.tree_flatten_with_path(state)
    for query in ("learning_rate", "count", "nope", optax.ScaleByAdamState):
        oi.find(state, query)
    after = jax.tree_util.tree_flatten_with_path(state)
    assert before[1] == after[1]
    assert all(a is b for (_, a), (_, b) in zip(before[0], after[0], strict=True))


# `>`: the very next edge ---------------------------------------------------------------------


def test_child_separator_names_a_state_s_own_field() -> None:
    state = trained(seed_optimizer())
    own = oi.find(state, "InjectStatefulHyperparamsState>count")
    assert [keystr(m.path) for m in own] == ["[1].count"]
    assert len(oi.find(state, "InjectStatefulHyperparamsState.count")) == 2  # `.`: any depth below
    assert [keystr(m.path) for m in oi.find(state, "inner_state>0>count")] == ["[1].inner_state[0].count"]
    assert oi.find(state, "inner_state>count") == []
    assert [keystr(m.path) for m in oi.find(state, "tuple>1>count")] == ["[1].count"]  # the root's type
    assert [keystr(m.path) for m in oi.find(state, "ScaleByAdamState>mu>dense1>w")] == [
        "[1].inner_state[0].mu['dense1']['w']"
    ]
    assert oi.find(state, "ScaleByAdamState>dense1") == []
    assert len(oi.find(state, "mu>*>w")) == 2 and len(oi.find(state, "mu.w")) == 2


@pytest.mark.parametrize("query", ["a>", ">a", "a>>b", "a.>b", "a>.b"])
def test_child_separator_needs_components_on_both_sides(query: str) -> None:
    with pytest.raises(oi.QuerySyntaxError):
        oi.find(trained(seed_optimizer()), query)


def test_keys_with_a_greater_than_sign_are_bracketed() -> None:
    tree = {"x": {"a>b": {"c": jnp.ones(1)}, "a": {"b": {"c": jnp.zeros(1)}}}}
    assert [keystr(m.path) for m in oi.find(tree, "x['a>b'].c")] == ["['x']['a>b']['c']"]
    assert [keystr(m.path) for m in oi.find(tree, "a>b>c")] == ["['x']['a']['b']['c']"]
    rows = {row.path: row.query for row in oi.describe(tree).rows}
    assert rows[(DictKey("x"), DictKey("a>b"))] == "x['a>b']"


# Suggested queries are whole -------------------------------------------------------------------


def _long_name_tree(length: int, count: int) -> dict[str, Any]:
    """Transformer-like parameter names of about `length` characters, some with dots, as an adam
    state's moments: every `kernel` is ambiguous."""
    stem = "encoder_block_{}.attention_query_projection_" if length % 2 else "decoder_layer_{}_self_attn_"
    names = [(stem.format(i) * (1 + length // len(stem)))[:length] + f"_{i}" for i in range(count)]
    moments = {name: {"kernel": np.zeros(2, np.float32), "bias": np.zeros(1, np.float32)} for name in names}
    return {"mu": moments, "nu": dict(moments)}


@settings(max_examples=25, deadline=None)
@given(length=st.integers(1, 400), count=st.integers(1, 40))
def test_an_ambiguous_match_lists_whole_queries_that_each_select_their_candidate(
    length: int, count: int
) -> None:
    tree = _long_name_tree(length, count)
    with pytest.raises(oi.AmbiguousMatchError) as info:
        oi.get(tree, "kernel")
    error = info.value
    message = str(error)
    assert error.count == 2 * count and f"matches {2 * count} nodes" in message
    assert len(error.candidates) == min(2 * count, oi._errors.MAX_LISTED)
    for path, query in error.candidates:
        [match] = oi.find(tree, query)
        assert keystr(match.path) == path and oi.get(tree, query) is match.value
    assert len(message) <= 4000 and not message.endswith("...")
    rows = message.splitlines()[1:]
    listed = [row for row in rows if not row.startswith("  ... and ")]
    assert listed == [
        f"  {path}  ->  get(tree, {query!r})" for path, query in error.candidates[: len(listed)]
    ]
    more = 2 * count - len(listed)
    assert (rows[-1] == f"  ... and {more:,} more") if more else rows == listed


@pytest.mark.parametrize("length", [20, 99, 100, 101, 300])
def test_close_names_and_listed_children_are_whole_keys_of_the_tree(length: int) -> None:
    tree = _long_name_tree(length, 3)
    names = list(tree["mu"])
    typo = names[0][:-3] + "xx" + names[0][-1]
    with pytest.raises(oi.NoMatchError) as info:
        oi.get(tree, f"mu['{names[0]}'].kernal")
    for line in str(info.value).splitlines():
        if line.startswith("Close names in the tree: "):
            assert set(line.removeprefix("Close names in the tree: ").rstrip(".").split(", ")) <= {
                "kernel",
                "bias",
                "mu",
                "nu",
                *names,
            }
    with pytest.raises(oi.NoMatchError) as info:
        oi.get(tree, f"['mu']['{typo}']")
    children = [line.strip() for line in str(info.value).splitlines() if line.startswith("  ")]
    assert children and all(child in {f"[{name!r}]" for name in names} for child in children), children


HOLDS = {
    "injected": lambda: (optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3).init(PARAMS), None),
    "in the optimizer": lambda: (optax.adamw(1e-3).init(PARAMS), optax.adamw(1e-3)),
}


@pytest.mark.parametrize("holder", sorted(HOLDS))
@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("lr", "learning_rate"),
        ("LR", "learning_rate"),
        ("learning-rate", "learning_rate"),
        ("learningRate", "learning_rate"),
        ("beta1", "b1"),
        ("beta_1", "b1"),
        ("beta2", "b2"),
        ("epsilon", "eps"),
        ("wd", "weight_decay"),
        ("weight-decay", "weight_decay"),
        ("Weight_Decay", "weight_decay"),
        ("momentum", "b1"),
        ("ScaleByAdamState.beta1", "ScaleByAdamState.b1"),
    ],
)
def test_what_users_type_for_a_hyperparameter_suggests_the_states_own_name(
    typed: str, meant: str, holder: str
) -> None:
    state, tx = HOLDS[holder]()
    if holder == "injected" and "." in meant:
        meant = meant.replace("ScaleByAdamState", "InjectStatefulHyperparamsState")
        typed = typed.replace("ScaleByAdamState", "InjectStatefulHyperparamsState")
    with pytest.raises(oi.NoMatchError) as info:
        oi.get(state, typed, optimizer=tx)
    assert f"Did you mean {meant!r}?" in str(info.value)
    assert oi.get(state, meant, optimizer=tx) is not None


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("lr", "learning_rate"),
        ("beta1", "b1"),
        ("epsilon", "eps"),
        ("wd", "weight_decay"),
        ("clipnorm", "max_norm"),
    ],
)
def test_a_name_the_state_does_not_hold_gets_optaxs_name_and_how_to_read_or_inject_it(
    typed: str, meant: str
) -> None:
    state = optax.sgd(0.1).init(PARAMS)  # holds no hyperparameter at all
    with pytest.raises(oi.NoMatchError) as info:
        oi.get(state, typed)
    message = str(info.value)
    assert "Did you mean" not in message
    assert f"optax calls it {meant!r}" in message and f"oi.get(state, {meant!r}, optimizer=tx)" in message
    assert f"{meant}=...)" in message.splitlines()[-1]
