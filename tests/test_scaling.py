"""Costs that must not grow with the tree, and behaviour across processes."""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import optree_inspect as oi
from helpers import layered_params, run_two_processes, seed_optimizer
from optree_inspect import _cache


def _count_calls(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Count calls of `module.name`: only for a function its own module calls by that global name."""
    calls: ClassVar[list[int]] = []
    original = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


FLATTENS: list[int] = []


@jax.tree_util.register_pytree_with_keys_class
class Counted:
    """A node that counts every time JAX flattens it: any walk of the whole tree flattens it."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def tree_flatten_with_keys(self) -> tuple[list[tuple[Any, Any]], None]:
        FLATTENS.append(1)
        return [(jax.tree_util.GetAttrKey("value"), self.value)], None

    def tree_flatten(self) -> tuple[list[Any], None]:
        FLATTENS.append(1)
        return [self.value], None

    @classmethod
    def tree_unflatten(cls, aux: None, children: Any) -> Counted:
        return cls(children[0])


@pytest.mark.parametrize("layers", [100, 5000])
def test_exact_paths_never_walk_the_tree(layers: int) -> None:
    # Counted nodes off the path: a walk, a flatten or an index build anywhere would flatten them.
    state = {
        "opt": seed_optimizer().init(layered_params(layers)),
        "side": [Counted(jnp.zeros(1)) for _ in range(layers)],
    }
    FLATTENS.clear()
    path = "['opt'][1].hyperparams['weight_decay']"
    assert oi.get(state, path) is state["opt"][1].hyperparams["weight_decay"]
    mu = oi.get(state, "['opt'][1].inner_state[0].mu['layer7']['w']")
    assert mu is state["opt"][1].inner_state[0].mu["layer7"]["w"]
    new = oi.set(state, path, 0.5)
    assert new["opt"][1].inner_state is state["opt"][1].inner_state and new["side"] is state["side"]
    assert FLATTENS == []
    oi.find(state, "w")  # a floating query does walk: the counter sees it
    assert FLATTENS


def test_a_cached_structure_is_walked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    state = seed_optimizer().init(layered_params(50))
    oi.get(state, "learning_rate")
    builds = _count_calls(monkeypatch, _cache, "build_index")
    other = seed_optimizer().init(layered_params(50))  # another tree of the same structure
    for _ in range(3):
        oi.get(other, "learning_rate")
        oi.find(other, "w")
        oi.describe(other)
    assert builds == []


def test_custom_nodes_whose_keys_the_treedef_does_not_fix_are_never_cached() -> None:
    @jax.tree_util.register_pytree_with_keys_class
    class Named:
        def __init__(self, name: str, value: Any) -> None:
            self.name, self.value = name, value

        def tree_flatten_with_keys(self) -> tuple[list[tuple[Any, Any]], None]:
            return [(jax.tree_util.DictKey(self.name), self.value)], None

        def tree_flatten(self) -> tuple[list[Any], None]:
            return [self.value], None

        @classmethod
        def tree_unflatten(cls, aux: None, children: Any) -> Named:
            return cls("restored", children[0])

    # Equal treedefs, different keys: a structure-keyed cache would answer for the wrong tree.
    assert jax.tree.structure(Named("a", 1.0)) == jax.tree.structure(Named("b", 2.0))
    assert oi.get(Named("a", 1.0), "a") == 1.0
    assert oi.get(Named("b", 2.0), "b") == 2.0
    assert oi.find(Named("b", 2.0), "a") == []


def _pairs() -> list[tuple[str, Any, Any]]:
    """Trees that differ from each other in one structural way, and a query that tells them apart."""
    return [
        ("extra dict key", {"a": 1.0, "b": 2.0}, {"a": 1.0, "c": 2.0}),
        ("subtree where a leaf was", {"a": 1.0, "b": 2.0}, {"a": {"x": 1.0}, "b": 2.0}),
        ("None where a leaf was", {"a": 1.0, "b": 2.0}, {"a": None, "b": 2.0}),
        ("NamedTuple type", (optax.EmptyState(),), (optax.MaskedNode(),)),
        ("tuple and list", {"a": (1.0, 2.0)}, {"a": [1.0, 2.0]}),
        ("dict and OrderedDict", {"a": {"x": 1.0}}, {"a": collections.OrderedDict(x=1.0)}),
        ("empty node where a leaf was", {"a": 1.0, "b": 2.0}, {"a": optax.MaskedNode(), "b": 2.0}),
        ("Variable where a leaf was", {"a": jnp.ones(1)}, {"a": nnx.Param(jnp.ones(1))}),
        ("Variable types", {"a": nnx.Param(jnp.ones(1))}, {"a": nnx.BatchStat(jnp.ones(1))}),
    ]


def _cold() -> None:
    oi.clear_caches()


@pytest.mark.parametrize("name", [name for name, _, _ in _pairs()])
def test_the_last_structure_shortcut_never_answers_for_another_tree(name: str) -> None:
    [(_, first, second)] = [pair for pair in _pairs() if pair[0] == name]
    queries = [
        "a",
        "b",
        "c",
        "*",
        "x",
        "EmptyState",
        "MaskedNode",
        "list",
        "OrderedDict",
        "Param",
        "BatchStat",
    ]

    def answers(tree: Any) -> dict[str, list[Any]]:
        return {q: [m.path for m in oi.find(tree, q)] for q in queries} | {
            "describe": [str(oi.describe(tree))]
        }

    for tree, other in ((first, second), (second, first)):
        _cold()
        expected = answers(tree)
        _cold()
        assert answers(other) != expected  # the queries tell the two trees apart
        assert answers(tree) == expected  # right after `other` was the last structure seen
    _cold()


def test_two_processes_joined_by_jax_distributed() -> None:
    """set and describe on arrays this process cannot address (gloo CPU collectives)."""
    worker = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    outputs = run_two_processes([worker], env)
    assert sorted(out.strip() for out in outputs) == ["OK 0", "OK 1"]


# describe fits a screen, whatever the state ----------------------------------------------------


class Cell(NamedTuple):
    a: jax.Array
    b: jax.Array


class Pair(NamedTuple):
    left: Cell
    right: Any


def _namedtuples(count: int) -> Any:
    # Alternating shapes defeat sibling runs: only the line budget keeps this on a screen.
    return tuple(
        Pair(Cell(jnp.zeros(1), jnp.zeros(2)), Cell(jnp.zeros(1), jnp.zeros(2)) if i % 2 else (jnp.zeros(3),))
        for i in range(count)
    )


def _partition_of_adams(groups: int, injected: bool) -> Any:
    params = {f"p{i:03d}": jnp.zeros(3) for i in range(groups)}
    labels = {name: f"g{i:03d}" for i, name in enumerate(params)}

    def make(i: int) -> optax.GradientTransformation:
        rate = 10 ** (-4 + 2 * i / (groups - 1))
        return optax.inject_hyperparams(optax.adam)(learning_rate=rate) if injected else optax.adam(rate)

    return optax.partition({f"g{i:03d}": make(i) for i in range(groups)}, labels).init(params)


SCREEN_CASES = {
    "2,000 NamedTuples": lambda: _namedtuples(1000),
    "deep and wide": lambda: {
        f"k{i}": {f"j{j}": (optax.EmptyState(), {"x": jnp.ones(j + 1)}) for j in range(30)} for i in range(30)
    },
    "partition of 200 masked adams": lambda: _partition_of_adams(200, injected=False),
    "partition of 100 injected adams": lambda: _partition_of_adams(100, injected=True),
    "20,000-leaf seed state": lambda: seed_optimizer().init(layered_params(5000)),
}


@pytest.mark.parametrize("name", sorted(SCREEN_CASES))
def test_describe_fits_one_screen_for_every_state(name: str) -> None:
    tree = SCREEN_CASES[name]()
    description = oi.describe(tree)
    assert len(str(description).splitlines()) <= oi._layout.MAX_LINES
    assert len(description._repr_html_()) < 60_000
    for row in list(description)[:: max(1, len(description) // 20)]:
        if row.query:
            assert oi.get(tree, row.query) is oi.get(tree, row.path)


def test_layer_wise_learning_rates_are_one_line_with_their_range() -> None:
    state = _partition_of_adams(100, injected=True)
    text = str(oi.describe(state))
    assert "g001 ... g099: 99 like .inner_states['g000']" in text
    assert "learning_rate 0.0001048 ... 0.01" in text
    values = oi.hyperparams(state)
    rates = [float(v) for q, v in values.items() if q.endswith("learning_rate")]
    assert len(rates) == 100 and rates[0] == pytest.approx(1e-4) and rates[-1] == pytest.approx(1e-2)
    for query, value in values.items():
        assert oi.get(state, query) is value


def _rows_work(tree: Any, monkeypatch: pytest.MonkeyPatch) -> float:
    """How many node numbers the pattern matcher handles to name every row of a description, per
    node of the tree."""
    from optree_inspect import _match

    seen = [0]
    original = _match._candidates

    def counted(index: Any, component: Any) -> list[int]:
        found = original(index, component)
        seen[0] += len(found)
        return found

    monkeypatch.setattr(_match, "_candidates", counted)
    oi.clear_caches()
    description = oi.describe(tree)
    description.to_dict()
    monkeypatch.undo()
    return (seen[0] + len(description)) / len(oi._cache.structure_index(tree))


@pytest.mark.parametrize(
    "make",
    [lambda n: _namedtuples(n), lambda n: _partition_of_adams(n, injected=True)],
    ids=["namedtuples", "injected partition"],
)
def test_naming_every_row_costs_near_linear_work(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    small, large = _rows_work(make(40), monkeypatch), _rows_work(make(160), monkeypatch)
    assert large <= 1.5 * small, (small, large)  # the work per node stays flat as the tree grows


def test_huge_patterns_cost_nothing_beyond_their_length(monkeypatch: pytest.MonkeyPatch) -> None:
    from optree_inspect import _match

    state = seed_optimizer().init(layered_params(50))
    oi.find(state, "w")
    calls: ClassVar[list[int]] = []
    original = _match._candidates
    monkeypatch.setattr(_match, "_candidates", lambda *args: calls.append(1) or original(*args))
    assert oi.find(state, ".".join(["w"] * 500_000)) == []  # more components than the tree is deep
    assert calls == []
    assert oi.find(state, "*a" * 500_000) == []  # longer than any name: no fnmatch over the tree
    assert oi.find(state, "?" * 1_000_000) == []


class _CountedEquality:
    """Aux data that counts its `==` calls: comparing two treedefs that hold it calls it once."""

    calls: ClassVar[list[int]] = []

    def __eq__(self, other: object) -> bool:
        _CountedEquality.calls.append(1)
        return isinstance(other, _CountedEquality)

    def __hash__(self) -> int:
        return 0


for _number in range(100):  # module-level sentinels: an index holding one may be cached
    globals()[f"_TAG{_number}"] = _CountedEquality()


@functools.partial(jax.tree_util.register_dataclass, data_fields=["value"], meta_fields=["tag"])
@dataclasses.dataclass
class _Tagged:
    """A node whose aux data holds a sentinel `_TAG{number}`: equal, not identical, between trees."""

    value: Any
    tag: _CountedEquality


@pytest.mark.parametrize("where", ["top", "nested", "in a list"])
def test_a_first_call_compares_no_cached_structure_that_differs_only_in_names(where: str) -> None:
    # `PyTreeDef`'s hash leaves out dict keys: 31 cached trees of one shape under other names would
    # each be compared with a new one (the `_Tagged` node first, so each comparison counts).
    def tree(run: int, tag: int | None = None) -> Any:
        names = {f"run{run}_layer{i}": jnp.zeros(2) for i in range(8)}
        placed = {"top": names, "nested": {"model": {"params": names}}, "in a list": [{"p": names}]}[where]
        return (_Tagged(jnp.zeros(1), globals()[f"_TAG{run if tag is None else tag}"]), placed)

    _cold()
    for run in range(31):
        oi.find(tree(run), "layer*")
    _CountedEquality.calls.clear()
    fresh = tree(99)
    assert [m.path[-1].key for m in oi.find(fresh, "run99_layer3")] == ["run99_layer3"]
    assert len(_CountedEquality.calls) <= 2  # the last structure's check, not one a cached tree
    _CountedEquality.calls.clear()
    oi.find(tree(5, tag=50), "*")  # a cached structure is still found, and compared once
    assert 1 <= len(_CountedEquality.calls) <= 3
    _cold()


def test_dict_keys_inserted_in_another_order_reuse_the_cached_index(monkeypatch: pytest.MonkeyPatch) -> None:
    names = [f"layer{i}" for i in range(20)]
    state = optax.adam(1e-3).init({name: {"w": jnp.zeros(2), "b": jnp.zeros(2)} for name in names})
    oi.find(state, "w")
    builds = _count_calls(monkeypatch, _cache, "build_index")
    reordered = optax.adam(1e-3).init({name: {"b": jnp.zeros(2), "w": jnp.zeros(2)} for name in names[::-1]})
    stepped = jax.tree.map(lambda x: x + 1, state)  # JAX rebuilds dicts in sorted key order
    for tree in (reordered, stepped):
        assert len(oi.find(tree, "w")) == 40
        assert oi.get(tree, "mu.layer3.b") is tree[0].mu["layer3"]["b"]
    assert builds == []


def test_a_dict_whose_dicts_lie_deeper_than_its_children_reuses_its_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def tree() -> Any:  # as many mappings under "top" as it has children, one of them in a tuple
        return {"top": {"a": ({"x": jnp.zeros(1)},), "b": {"y": jnp.zeros(1)}}}

    assert len(oi.find(tree(), "x")) == 1
    builds = _count_calls(monkeypatch, _cache, "build_index")
    for _ in range(3):
        assert len(oi.find(tree(), "y")) == 1
    assert builds == []
