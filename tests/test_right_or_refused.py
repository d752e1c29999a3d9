"""Every answer is exactly right, or a documented error (an `oi.Error`) with a bounded message says
why not: bad values for `set`, deep and huge inputs, abstract and donated states, and a fuzz over
queries and values that lets no other exception out."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import equinox as eqx
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

import optree_inspect as oi
from helpers import PARAMS, layered_params, nnx_optimizer, seed_optimizer, skip_unless_a_pytree, trained
from optree_inspect._compat import variable_value

MAX_MESSAGE = 4096


# set: which values are called --------------------------------------------------------------------


class Scaler(eqx.Module):
    factor: jax.Array

    def __call__(self, x: Any) -> Any:
        return self.factor * x


@flax.struct.dataclass
class Settings:
    factor: jax.Array

    def __call__(self, x: Any) -> Any:
        return self.factor * x


class Layer(nnx.Module):
    def __init__(self) -> None:
        self.w = nnx.Param(jnp.ones(2))

    def __call__(self, x: Any) -> Any:
        return x


def _called(value: Any) -> bool:
    return oi._edit.is_function(value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Scaler(jnp.float32(2.0)),
        lambda: Settings(jnp.float32(2.0)),
        lambda: jax.tree_util.Partial(jnp.multiply, jnp.float32(2.0)),
        lambda: Layer(),
    ],
    ids=["eqx.Module", "flax.struct", "tree_util.Partial", "nnx.Module"],
)
def test_a_callable_pytree_is_stored_never_called(make: Any) -> None:
    value = make()
    tree = {"slot": make(), "other": jnp.zeros(2)}
    assert not _called(value)
    new = oi.set(tree, "slot", value)
    assert jax.tree.structure(new["slot"]) == jax.tree.structure(value)
    assert new["other"] is tree["other"]


@pytest.mark.parametrize(
    "function",
    [
        lambda old: old + 1,
        functools.partial(jnp.add, 1.0),
        jnp.negative,  # a jitted JAX function
        np.negative,  # a NumPy ufunc
        abs,  # a builtin
        jax.jit(lambda old: old * 3),
    ],
    ids=["lambda", "partial", "jnp", "ufunc", "builtin", "jit"],
)
def test_plain_functions_are_called_on_the_old_node(function: Any) -> None:
    tree = {"w": jnp.array([1.0, -2.0])}
    new = oi.set(tree, "w", function)
    assert np.allclose(new["w"], np.asarray(function(tree["w"])))


def test_a_function_stored_in_a_non_array_leaf_needs_no_call() -> None:
    @dataclasses.dataclass
    class Callback:
        def __call__(self, x: Any) -> Any:
            return x

    tree = {"hook": Callback()}
    replacement = Callback()
    assert oi.set(tree, "hook", replacement)["hook"] is replacement


# set: out-of-range values ----------------------------------------------------------------------

OUT_OF_RANGE = [
    (jnp.int32, np.int64(2**32)),
    (jnp.int32, 3_000_000_000),
    (jnp.int32, 2**100),
    (jnp.int32, np.array([1, 2**40])),
    (jnp.uint8, -1),
    (jnp.uint8, 256),
    (jnp.int8, np.int16(200)),
    (jnp.int4, 100),
    (jnp.float16, 1e6),
    (jnp.float16, np.float32(70000.0)),
    (jnp.float16, 100_000),
    (jnp.bfloat16, 1e39),
    (jnp.float32, 1e300),
]


@pytest.mark.parametrize(
    ("dtype", "value"), OUT_OF_RANGE, ids=[f"{d.__name__}-{v!r}"[:40] for d, v in OUT_OF_RANGE]
)
@pytest.mark.parametrize("kind", ["jax", "numpy"])
def test_values_out_of_range_are_refused(dtype: Any, value: Any, kind: str) -> None:
    if kind == "numpy" and dtype in (jnp.int4, jnp.bfloat16):
        pytest.skip("NumPy has no such dtype")
    leaf = jnp.zeros(2, dtype) if kind == "jax" else np.zeros(2, dtype)
    tree = {"leaf": leaf}
    with pytest.raises(oi.StructureError, match="out of range") as info:
        oi.set(tree, "leaf", value)
    assert isinstance(info.value, ValueError) and len(str(info.value)) < 400
    assert tree["leaf"] is leaf


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        (jnp.int32, 2**31 - 1),
        (jnp.uint8, 255),
        (jnp.int4, -8),
        (jnp.float16, 65504.0),
        (jnp.float16, float("inf")),
    ],
)
def test_values_at_the_edge_of_the_range_are_stored(dtype: Any, value: Any) -> None:
    new = oi.set({"leaf": jnp.zeros(2, dtype)}, "leaf", value)
    assert new["leaf"].dtype == dtype and float(new["leaf"][0]) == float(value)


def test_a_python_float_leaf_refuses_what_a_float_cannot_hold() -> None:
    with pytest.raises(oi.StructureError):
        oi.set({"x": 1.0}, "x", 10**400)
    assert oi.set({"n": 1}, "n", 2**80)["n"] == 2**80  # a Python int has no range


def test_traced_values_are_cast_as_jax_casts() -> None:
    tree = {"count": jnp.int32(0)}
    new = jax.jit(lambda t, v: oi.set(t, "count", v))(tree, jnp.int32(5))
    assert int(new["count"]) == 5


# set: schedules changed through an ancestor ---------------------------------------------------


def test_a_scheduled_value_changed_through_an_ancestor_is_refused() -> None:
    state = trained(seed_optimizer())

    def change(s: Any) -> Any:
        return s._replace(hyperparams={**s.hyperparams, "learning_rate": jnp.float32(9.0)})

    for query in ("[1]", (jax.tree_util.SequenceKey(1),), "InjectStatefulHyperparamsState", ""):
        edit = change if query != "" else (lambda root: (root[0], change(root[1]), *root[2:]))
        with pytest.raises(oi.ScheduledHyperparameterError, match="schedule"):
            oi.set(state, query, edit)
    with pytest.raises(oi.ScheduledHyperparameterError):
        jax.jit(lambda s: oi.set(s, "[1]", change))(state)


def test_ancestor_edits_that_keep_the_scheduled_value_or_move_the_schedule_pass() -> None:
    state = trained(seed_optimizer())
    moved = oi.set(state, "[1]", lambda s: s._replace(count=s.count + 1))
    assert int(moved[1].count) == int(state[1].count) + 1
    restored = oi.set(state, "[1]", trained(seed_optimizer(), steps=5)[1])  # schedule and value together
    assert int(restored[1].hyperparams_states["learning_rate"].count) == 5
    same = oi.set(state, "[1]", lambda s: s._replace(hyperparams={**s.hyperparams}))
    assert float(same[1].hyperparams["learning_rate"]) == float(state[1].hyperparams["learning_rate"])


# Depth -----------------------------------------------------------------------------------------


def _nested(depth: int, leaf: Any = 1.0) -> Any:
    tree = leaf
    for _ in range(depth):
        tree = {"a": tree}
    return tree


@pytest.mark.parametrize("depth", [500, 750])
def test_set_find_and_describe_at_any_depth_jax_can_flatten(depth: int) -> None:
    tree = _nested(depth)
    path = "".join(["['a']"] * depth)
    assert oi.get(oi.set(tree, path, 2.0), path) == 2.0
    assert oi.set(tree, path[: -5 * 10], _nested(10, 3.0)) is not tree
    assert len(oi.find(tree, "a")) == depth
    assert len(str(oi.describe(tree)).splitlines()) <= oi._layout.MAX_LINES


@pytest.mark.parametrize("depth", [100, 750, 5000])
def test_siblings_of_one_deep_structure_at_any_depth(depth: int) -> None:
    """Siblings of one structure are indexed as a run; a deep one must not exhaust Python's stack
    (5,000 levels: where JAX can flatten them, as on Python 3.13)."""
    try:
        jax.tree.flatten(_nested(depth))
    except (RecursionError, SystemError):
        pytest.skip(f"JAX cannot flatten {depth} levels here")
    for tree in ([_nested(depth), _nested(depth)], {"x": _nested(depth), "y": _nested(depth)}):
        assert len(oi.find(tree, "a")) == 2 * depth
        assert len(str(oi.describe(tree)).splitlines()) <= oi._layout.MAX_LINES


def test_past_jaxs_depth_limit_a_documented_error() -> None:
    # JAX's own limit depends on the Python version (about 1,000 levels on 3.11, 10,000 on 3.13).
    for depth in (1500, 12_000, 60_000):
        tree = _nested(depth)
        try:
            jax.tree.flatten(tree)
        except (RecursionError, SystemError):
            break
    else:
        pytest.skip("JAX flattens 60,000 levels here")
    for call in (lambda: oi.describe(tree), lambda: oi.find(tree, "a"), lambda: oi.hyperparams(tree)):
        with pytest.raises(oi.TreeTooDeepError, match="deeper than JAX can flatten"):
            call()


# Abstract and donated states --------------------------------------------------------------------


def test_abstract_states_from_eval_shape() -> None:
    tx = seed_optimizer()
    abstract = jax.eval_shape(tx.init, PARAMS)
    text = str(oi.describe(abstract))
    assert (
        "ShapeDtypeStruct" not in text
        and "count: i32[]" in text
        and "learning_rate: f32[] (scheduled)" in text
    )
    assert oi.get(abstract, "learning_rate") == jax.ShapeDtypeStruct((), jnp.float32)
    assert set(oi.hyperparams(abstract)) >= {"learning_rate", "weight_decay"}
    with pytest.raises(oi.LeafTypeError, match="abstract"):
        oi.set(abstract, "weight_decay", 0.1)
    same = jax.ShapeDtypeStruct((), jnp.float32)
    assert oi.get(oi.set(abstract, "weight_decay", same), "weight_decay") is same
    plain = optax.adamw(optax.linear_schedule(1.0, 0.0, 10))
    read = oi.get(jax.eval_shape(plain.init, PARAMS), "learning_rate", optimizer=plain)
    assert isinstance(read, jax.ShapeDtypeStruct) and read.shape == ()


def test_donated_states_describe_with_deleted_leaves_marked() -> None:
    tx = optax.adamw(optax.linear_schedule(1.0, 0.0, 10))
    state = tx.init(PARAMS)
    jax.jit(lambda s: s, donate_argnums=0)(state)
    text = str(oi.describe(state))
    assert "(deleted)" in text and "count: i32[] (deleted)" in text
    with pytest.raises(oi.DeletedArrayError, match=r"\[0\]\.count"):
        oi.get(state, "[0].count")
    with pytest.raises(oi.DeletedArrayError, match="count"):
        oi.get(state, "learning_rate", optimizer=tx)
    with pytest.raises(oi.DeletedArrayError, match=r"\[0\]\.count"):
        oi.set(state, "[0].count", lambda c: c + 1)
    fresh = oi.set(state, "[0].count", 3)  # a value replaces a deleted leaf
    assert int(fresh[0].count) == 3


# Counters --------------------------------------------------------------------------------------


class Moments(eqx.Module):
    t: jax.Array
    step: jax.Array
    count: jax.Array


def test_counters_are_fields_of_optax_states_only() -> None:
    params = Moments(jnp.ones(2), jnp.ones(2), jnp.ones(2))
    state = trained(optax.adam(1e-3), params=params)
    counters = oi.hyperparams(state, counters=True)
    [(query, value)] = counters.items()  # the moments' own t, step and count are parameters
    assert value is state[0].count and oi.get(state, query) is value
    nested = {"opt_state": state, "t": jnp.int32(3), "step": {"count": jnp.int32(2)}}
    assert list(oi.hyperparams(nested, counters=True).values()) == [state[0].count]


# Bounded messages ------------------------------------------------------------------------------

STATE = trained(seed_optimizer())


@pytest.mark.parametrize(
    "call",
    [
        lambda: oi.get(STATE, "['" + "k" * 1_000_000 + "']"),
        lambda: oi.get(STATE, "[" + "1" * 100_000 + "]"),
        lambda: oi.get({"k" * 100_000: 1.0, "kk": 2.0}, "kkk"),
        lambda: oi.set(STATE, "weight_decay", "x" * 10_000),
        lambda: oi.set(STATE, "weight_decay", STATE),
        lambda: oi.set(STATE, "weight_decay", {"a": 1.0}),
        lambda: oi.set(STATE, "weight_decay", [[1.0, 2.0], [3.0]]),
        lambda: oi.set(STATE, "[1].inner_state", ("y" * 10_000,)),
        lambda: oi.find(STATE, "[{{}}]"),
        lambda: oi.find(STATE, "x" * 100_000 + "["),
        lambda: oi.get(STATE, "mu", default=oi.find(STATE, "*" * 100_000)),
        lambda: oi.get(STATE, "count"),
        lambda: oi.get(STATE, object()),
        lambda: oi.set(STATE, {"weight_decay": 1.0, "[1].hyperparams['weight_decay']": 2.0}),
    ],
)
def test_every_message_is_bounded_and_documented(call: Any) -> None:
    try:
        call()
    except oi.Error as error:
        assert len(str(error)) < MAX_MESSAGE
        assert len(repr(error)) < 2 * MAX_MESSAGE + 200 or isinstance(error, oi.QueryError)


def test_syntax_errors_point_at_the_right_character() -> None:
    with pytest.raises(oi.QuerySyntaxError, match="hashable") as info:
        oi.find(STATE, "[[1, 2]]")
    assert info.value.position == 1
    with pytest.raises(oi.QuerySyntaxError) as info:
        oi.find(STATE, "mu.[{{}}]")
    assert info.value.position == 4


def test_a_dict_given_for_an_array_leaf_names_the_path() -> None:
    with pytest.raises(oi.StructureError, match=r"\[1\]\.hyperparams\['weight_decay'\]"):
        oi.set(STATE, "weight_decay", {"a": 1.0})


# Small -----------------------------------------------------------------------------------------


def test_numpy_scalars_show_like_numpy_arrays_and_keep_their_kind() -> None:
    text = str(oi.describe({"a": np.float64(2.5), "b": np.float32(1.5), "c": 2.5}))
    assert "a: f64[] = 2.5" in text and "b: f32[] = 1.5" in text and "c: float = 2.5" in text
    zero_d = oi.set({"a": np.array(1.0)}, "a", 2.0)["a"]
    assert type(zero_d) is np.ndarray and zero_d.shape == () and float(zero_d) == 2.0
    scalar = oi.set({"a": np.float32(1.0)}, "a", 2.0)["a"]
    assert type(scalar) is np.float32 and scalar == 2.0


# No undocumented exception, whatever the input ------------------------------------------------

ODD_QUERIES = st.one_of(
    st.text(alphabet="ab01.[]'\"*?{}()_ -", max_size=12),
    st.sampled_from(["", ".", "[", "]", "[0", "['a", "a..b", "[<flat index 1>]", "*.*", "[1.5]", "[None]"]),
    st.sampled_from([int, float, optax.ScaleByAdamState, lambda p, n: True, (jax.tree_util.DictKey("x"),)]),
    st.sampled_from([None, 3, 2.5, b"x", ["a"], {"a": 1}]),
)
ODD_VALUES = st.one_of(
    st.sampled_from([None, "text", b"x", [1.0], (1.0,), {"a": 1.0}, object(), 1j, 2**70, -1, float("nan")]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.booleans(),
)
TREES = [
    STATE,
    trained(optax.MultiSteps(optax.adam(1e-3), 2).gradient_transformation()),
    {"x": {0: 1.0, "b": 2.0}, "y": ["s", None, np.int8(3)]},
    seed_optimizer().init(layered_params(3)),
]


@given(st.sampled_from(range(len(TREES))), ODD_QUERIES, ODD_VALUES, st.booleans())
def test_no_undocumented_exception_for_any_query_or_value(
    tree_number: int, query: Any, value: Any, every: bool
) -> None:
    tree = TREES[tree_number]
    before = _snapshot(tree)
    for call in (
        lambda: oi.find(tree, query),
        lambda: oi.get(tree, query),
        lambda: oi.set(tree, query, value, every=every),
        lambda: oi.set(tree, {query: value}) if isinstance(query, str | type) else None,
    ):
        try:
            call()
        except oi.Error as error:
            assert len(str(error)) < MAX_MESSAGE
    assert _snapshot(tree) == before


def _snapshot(tree: Any) -> Any:
    """What must not change: the structure and the identity of every leaf."""
    try:
        leaves, treedef = jax.tree.flatten(tree)
    except ValueError:  # a dict whose keys JAX cannot sort: compare its text
        return repr(tree)
    return treedef, [id(leaf) for leaf in leaves]


# What a person sees of a match and of an error ---------------------------------------------------


def test_a_match_reads_as_its_keystr_and_value() -> None:
    [match] = oi.find(STATE, "[1].count")
    assert repr(match) == f"Match('[1].count', {STATE[1].count!r})"
    assert match.path == (jax.tree_util.SequenceKey(1), jax.tree_util.GetAttrKey("count"))


def test_a_match_of_an_nnx_variable_reads_in_one_line() -> None:
    optimizer = nnx_optimizer()
    skip_unless_a_pytree(optimizer)
    [match] = oi.find(optimizer, "ScaleByAdamState.count", variables=True)
    inner = variable_value(match.value)
    expected = f"Match('.opt_state[1].inner_state[0].count', {type(match.value).__name__}({inner!r}))"
    assert repr(match) == expected and "\n" not in repr(match)
    [match] = oi.find(optimizer, "ScaleByAdamState.mu", variables=True)  # a subtree of Variables
    assert "\n" not in repr(match) and "OptVariable(" in repr(match)
    [match] = oi.find(optimizer, "ScaleByAdamState.count")
    assert repr(match) == f"Match('.opt_state[1].inner_state[0].count', {inner!r})"


def test_errors_start_at_the_public_call() -> None:
    import traceback

    with pytest.raises(oi.ScheduledHyperparameterError) as info:
        oi.set(STATE, "learning_rate", 1e-3)
    frames = traceback.extract_tb(info.value.__traceback__)
    inside = [frame for frame in frames if "optree_inspect" in frame.filename]
    assert len(inside) == 1, [f"{f.filename}:{f.name}" for f in frames]
    assert type(info.value).__module__ == "optree_inspect" and info.value.__suppress_context__
