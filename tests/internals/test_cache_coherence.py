"""A cached structure index never answers for another tree: key types, leaf types, custom nodes,
threads, and the objects the cache may keep alive."""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import gc
import threading
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optree_inspect as oi
from helpers import layered_params, seed_optimizer


class Foo:
    pass


class Bar:
    pass


@jax.tree_util.register_pytree_with_keys_class
class Box:
    """A custom node keyed by a name it keeps in its aux data."""

    def __init__(self, name: str, value: Any) -> None:
        self.name, self.value = name, value

    def tree_flatten_with_keys(self) -> tuple[list[tuple[Any, Any]], str]:
        return [(jax.tree_util.GetAttrKey(self.name), self.value)], self.name

    def tree_flatten(self) -> tuple[list[Any], str]:
        return [self.value], self.name

    @classmethod
    def tree_unflatten(cls, name: str, children: Any) -> Box:
        return cls(name, children[0])


@jax.tree_util.register_pytree_with_keys_class
class Table:
    """A custom mapping node that keeps its keys in its aux data, as `nnx.State` does."""

    def __init__(self, items: dict[Any, Any]) -> None:
        self.items = items

    def tree_flatten_with_keys(self) -> tuple[list[tuple[Any, Any]], tuple[Any, ...]]:
        keys = tuple(sorted(self.items, key=repr))  # never raises: a raising flatten leaks JAX's depth count
        return [(jax.tree_util.DictKey(k), self.items[k]) for k in keys], keys

    def tree_flatten(self) -> tuple[list[Any], tuple[Any, ...]]:
        keys = tuple(sorted(self.items, key=repr))  # never raises: a raising flatten leaks JAX's depth count
        return [self.items[k] for k in keys], keys

    @classmethod
    def tree_unflatten(cls, keys: tuple[Any, ...], children: Any) -> Table:
        return cls(dict(zip(keys, children, strict=True)))


class StrKey(str, enum.Enum):
    a = "a"


class UserStr(str):
    pass


# Keys that compare equal across types, and leaves of different types in one position, are exactly
# what a treedef cannot tell apart: the trees below are drawn as one template filled in several ways.
# (`str` subclasses, which equal their `str`, are checked by `test_str_subclass_keys_get_their_own_paths`.)
EQUAL_KEYS = [[0, False, 0.0, np.int64(0)], [1, True, 1.0], ["a"], [("a", 1)]]
LEAF_CHOICES = [1.0, 2, "text", None, Foo(), Bar(), np.float32(1.5), jnp.ones(2)]


TEMPLATES = st.recursive(
    st.just("leaf"),
    lambda children: st.one_of(
        st.dictionaries(st.integers(0, len(EQUAL_KEYS) - 1), children, max_size=3).map(
            lambda classes: {("key", c): v for c, v in classes.items()}
        ),
        st.lists(children, max_size=3).map(tuple),
        st.tuples(st.sampled_from(["a", "b"]), children).map(lambda pair: ("box", *pair)),
    ),
    max_leaves=8,
)
"""A tree whose dict keys are key classes (indices into EQUAL_KEYS) and whose leaves are slots."""


def _fill(template: Any, draw: Any) -> Any:
    if template == "leaf":
        return draw(st.sampled_from(LEAF_CHOICES))
    if isinstance(template, dict):
        return {draw(st.sampled_from(EQUAL_KEYS[c])): _fill(v, draw) for (_, c), v in template.items()}
    if template and template[0] == "box":
        return Box(template[1], _fill(template[2], draw))
    return tuple(_fill(child, draw) for child in template)


@st.composite
def tree_sequences(draw: Any) -> list[Any]:
    template = draw(TEMPLATES)
    return [_fill(template, draw) for _ in range(draw(st.integers(2, 5)))]


QUERIES = ["0", "1", "False", "True", "1.0", "a", "*", "[0]", "[False]", "[1.0]", "['a']", "x.0", "StrKey"]
QUERIES += [Foo, Bar]


def _key_types(path: Any) -> tuple[type, ...]:
    """The types of the keys on a path: `keystr` spells `UserStr('a')` as `'a'`."""
    return tuple(type(key.key) for key in path if isinstance(key, jax.tree_util.DictKey))


def _answers(tree: Any) -> list[Any]:
    answers: list[Any] = []
    for query in QUERIES:
        try:
            found = oi.find(tree, query)
            answers.append([(oi.keystr(m.path), _key_types(m.path), type(m.value)) for m in found])
        except (TypeError, ValueError):  # unsortable mixed keys: JAX itself refuses such a dict
            answers.append("refused")
    try:
        description = oi.describe(tree)
        answers.append(str(description))
        answers.append([(row.query, _key_types(row.path)) for row in description])
    except (TypeError, ValueError):
        answers.append("refused")
    return answers


@settings(max_examples=150)
@given(tree_sequences())
def test_every_answer_equals_an_uncached_answer(trees: list[Any]) -> None:
    for tree in trees:  # each answer may come from the cache built for an earlier tree
        cached = _answers(tree)
        oi.clear_caches()
        assert cached == _answers(tree)


def test_keys_equal_across_types_are_never_confused() -> None:
    oi.clear_caches()
    oi.describe({"x": {False: 1.0, True: 2.0}})
    assert [oi.keystr(m.path) for m in oi.find({"x": {0: 1.0, 1: 2.0}}, "x.0")] == ["['x'][0]"]
    assert oi.find({"x": {0: 1.0, 1: 2.0}}, "x.False") == []
    oi.describe({"x": {1.0: 1.0}})
    assert oi.find({"x": {1: 1.0}}, "x.1.0") == []
    assert oi.get({"x": {1: 1.0}}, "x[1]") == 1.0
    assert oi.get({"x": {1: 5.0}}, "['x'][1]") == 5.0
    with pytest.raises(oi.NoMatchError):
        oi.get({"x": {True: 1.0}}, "['x'][1]")


def test_leaf_types_are_part_of_the_structure() -> None:
    oi.find({"a": Foo()}, "Foo")
    assert [type(m.value) for m in oi.find({"a": Bar()}, "Bar")] == [Bar]
    assert oi.find({"a": Bar()}, Foo) == []
    assert "Bar" in str(oi.describe({"a": Bar()}))


def test_a_leaf_type_registered_as_a_node_later_is_seen_as_a_node() -> None:
    """JAX's registry can make a type that was a leaf a node: the last structure, whose treedef
    has a leaf there, answers no more."""

    class Holder:
        def __init__(self, value: Any) -> None:
            self.value = value

    tree = {"a": Holder(1.0), "b": [Holder(2.0), 3.0]}
    for _ in range(2):  # the second call takes the last structure's path
        assert oi.find(tree, "value") == []
    jax.tree_util.register_pytree_with_keys(
        Holder,
        lambda h: (((jax.tree_util.GetAttrKey("value"), h.value),), None),
        lambda _, children: Holder(*children),
    )
    assert [oi.keystr(m.path) for m in oi.find(tree, "value")] == ["['a'].value", "['b'][0].value"]


class _Pairish(tuple):  # a plain tuple subclass: a leaf unless an instance has `_fields`
    pass


def test_a_tuple_subclass_leaf_that_gains_fields_is_seen_as_a_node() -> None:
    """JAX makes an instance of a tuple subclass a NamedTuple node when it has a `_fields`
    attribute, which one instance may have and another of its type not: the last structure, in
    which both were leaves, answers no more."""
    a, b = _Pairish((1.0, 2.0)), _Pairish((3.0, 4.0))
    for _ in range(2):  # the second call takes the last structure's path
        assert oi.find({"a": a, "b": b}, "x") == []
    b._fields = ("x", "y")  # type: ignore[attr-defined]
    assert [oi.keystr(m.path) for m in oi.find({"a": a, "b": b}, "x")] == ["['b'].x"]


def test_many_threads_at_once() -> None:
    states = [seed_optimizer().init(layered_params(n)) for n in range(1, 40)]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for number in range(60):
                state = states[(offset + number) % len(states)]
                oi.find(state, "w")
                oi.get(state, "learning_rate")
                oi.set(state, "weight_decay", 0.5)
                oi.describe(state).to_dict()
                if number % 20 == 0:
                    oi.clear_caches()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(k * 7,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.mark.parametrize("key", [StrKey.a, np.str_("a"), UserStr("a")], ids=["enum", "np.str_", "user"])
@pytest.mark.parametrize("node", ["dict", "nested", "frozen"])
def test_str_subclass_keys_get_their_own_paths(key: Any, node: str) -> None:
    def make(k: Any) -> Any:
        if node == "dict":
            return {k: 1.0}
        if node == "nested":
            return ({"mu": {"layer": {k: jnp.ones(2)}}}, 2)
        return {"m": Table({k: 1.0})}

    def answers(tree: Any) -> list[Any]:
        rows = [(row.query, _key_types(row.path)) for row in oi.describe(tree)]
        return [[(m.path, _key_types(m.path)) for m in oi.find(tree, "*")], rows]

    for first, second in ((make("a"), make(key)), (make(key), make("a"))):
        oi.clear_caches()
        uncached = answers(second)
        oi.clear_caches()
        answers(first)  # now the last structure seen, and cached
        assert answers(second) == uncached
    assert type(key) in {t for _, types in answers(make(key))[0] for t in types}


class Payload:
    """A user object held in a custom node's aux data."""

    def __init__(self) -> None:
        self.rate = 0.1  # plain attributes do not make it inert


@jax.tree_util.register_pytree_with_keys_class
class Holder:
    def __init__(self, payload: Any, value: Any) -> None:
        self.payload, self.value = payload, value

    def tree_flatten_with_keys(self) -> tuple[list[tuple[Any, Any]], Any]:
        return [(jax.tree_util.GetAttrKey("value"), self.value)], self.payload

    def tree_flatten(self) -> tuple[list[Any], Any]:
        return [self.value], self.payload

    @classmethod
    def tree_unflatten(cls, payload: Any, children: Any) -> Holder:
        return cls(payload, children[0])


@dataclasses.dataclass
class Meta:
    value: Any
    config: Any


jax.tree_util.register_dataclass(Meta, data_fields=["value"], meta_fields=["config"])


def _holding(kind: str, payload: Any) -> Any:
    """A tree whose node of `kind` holds `payload` in its static (aux) data."""
    import equinox as eqx
    import flax.struct

    value = jnp.ones(2)
    if kind == "defaultdict":
        return {"d": collections.defaultdict(lambda: payload, value=value)}
    if kind == "defaultdict partial":
        return {"d": collections.defaultdict(functools.partial(Payload.__init__, payload), value=value)}
    if kind == "OrderedDict":
        return {"d": collections.OrderedDict(value=value, other=payload)}  # a leaf: never kept
    if kind == "eqx static":

        class Static(eqx.Module):
            value: Any
            config: Any = eqx.field(static=True)

        return {"m": Static(value, payload)}
    if kind == "register_dataclass":
        return {"m": Meta(value, payload)}
    if kind == "register_dataclass in tuple":
        return {"m": Meta(value, (1, "x", payload))}
    if kind == "flax struct":

        @flax.struct.dataclass
        class Struct:
            value: Any
            config: Any = flax.struct.field(pytree_node=False)

        return {"m": Struct(value, payload)}
    return {"h": Holder(payload, value)}


AUX_KINDS = [
    "defaultdict",
    "defaultdict partial",
    "OrderedDict",
    "eqx static",
    "register_dataclass",
    "register_dataclass in tuple",
    "flax struct",
    "custom aux",
]


@pytest.mark.parametrize("kind", AUX_KINDS)
def test_the_cache_keeps_no_user_object_alive(kind: str) -> None:
    payload = Payload()
    alive = weakref.ref(payload)
    tree = _holding(kind, payload)
    for _ in range(2):  # built, then answered from the cache if it was stored
        assert oi.get(tree, "value").shape == (2,)
        assert "value" in str(oi.describe(tree))
        oi.hyperparams(tree)
    del tree, payload
    gc.collect()
    assert alive() is None


def test_inert_aux_data_is_still_cached() -> None:
    import equinox as eqx

    model = eqx.nn.MLP(2, 2, 4, 2, key=jax.random.key(0))
    tree = {"model": model, "d": collections.defaultdict(list, a=jnp.ones(1)), "m": Meta(1.0, ("x", 2))}
    index = oi._cache.structure_index(tree)
    assert index.cacheable
    assert oi._cache.structure_index(tree) is index
