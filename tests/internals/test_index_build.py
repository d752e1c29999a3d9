"""The structure index, built with runs of one structure recorded in bulk, is exactly the index a
walk of every node alone builds; and the nodes walked alone do not grow with the params."""

from __future__ import annotations

import enum
from typing import Any

import equinox as eqx
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st
from jax.tree_util import DictKey

import optree_inspect as oi
from helpers import LABELS, MASK, layered_params, nnx_optimizer, seed_optimizer
from optree_inspect import _build
from optree_inspect._keys import edge_text, field_name
from optree_inspect._registry import cacheable_node, flatten_one_level
from optree_inspect._state_rules import DATA, TOP, active, child_places


def node_by_node(tree: Any) -> dict[str, Any]:
    """The index's records from a plain pre-order walk that visits every node alone."""
    records: dict[str, Any] = {
        name: []
        for name in [
            *("keys", "texts", "types", "parents", "is_leaf", "leaf_counts", "sizes", "arities", "depths"),
            *("hidden", "state_names"),
        ]
    }
    rules = active()
    holes, restored, by_state, cacheable = [], {}, {}, True
    stack: list[tuple[Any, ...]] = [(tree, None, -1, 0, False, TOP, False)]
    while stack:
        node, key, parent, depth, hidden, where, in_data = stack.pop()
        number = len(records["keys"])
        flat = flatten_one_level(node)
        pairs = None if flat is None else flat[0]
        if flat is not None:
            cacheable = cacheable and cacheable_node(type(node), [key for key, _ in flat[0]], flat[1])
        kind = type(node)
        name = rules.state_name(kind)
        aliases = None
        if name is None and kind is dict and where != DATA:
            aliases = rules.restored_names(node, where)
            name = None if aliases is None else aliases[0]
        for field, value in (
            ("keys", key),
            ("texts", edge_text(key)),
            ("types", kind),
            ("parents", parent),
            ("is_leaf", pairs is None),
            ("leaf_counts", 1 if pairs is None else 0),
            ("sizes", 1),
            ("arities", len(pairs or ())),
            ("depths", depth),
            ("hidden", hidden),
            ("state_names", name),
        ):
            records[field].append(value)
        if (node is None and in_data) or rules.is_hole_type(kind):
            holes.append(number)
        if pairs is None:
            continue
        if name is not None:
            if aliases is not None:
                restored[number] = aliases
            for alias in aliases or (name,):
                by_state.setdefault(alias, []).append(number)
        wheres = child_places(rules, name, where, pairs)
        for (child_key, child), child_where in zip(reversed(pairs), reversed(wheres), strict=True):
            enters = name is not None and field_name(child_key) in rules.hidden_fields
            enters = enters and rules.hides(name, child_key)
            child_in_data = in_data if name is None else aliases is not None and child_where == DATA
            child_hidden = hidden or enters
            stack.append((child, child_key, number, depth + 1, child_hidden, child_where, child_in_data))
    for number in range(len(records["keys"]) - 1, 0, -1):
        parent = records["parents"][number]
        records["leaf_counts"][parent] += records["leaf_counts"][number]
        records["sizes"][parent] += records["sizes"][number]
    records.update(holes=holes, restored_names=restored, by_state_name=by_state, cacheable=cacheable)
    records["signatures"] = _signatures(records, set(holes))
    return records


def _signatures(records: dict[str, Any], holes: set[int]) -> list[int]:
    """Subtree structures by value: type, keys and children's structures; leaves and holes alike."""
    structures: list[Any] = [None] * len(records["keys"])
    for node in range(len(structures) - 1, -1, -1):
        if records["is_leaf"][node] or node in holes:
            structures[node] = ()
            continue
        end = node + records["sizes"][node]
        child, children = node + 1, []
        while child < end:
            children.append((records["keys"][child], structures[child]))
            child += records["sizes"][child]
        structures[node] = (records["types"][node], tuple(children))
    numbers: dict[Any, int] = {}
    return [numbers.setdefault(structure, len(numbers)) for structure in structures]


def assert_same_index(tree: Any) -> None:
    leaves = jax.tree.leaves(tree)
    index = _build.build_index(tree, leaves)
    expected = node_by_node(tree)
    for name, value in expected.items():
        if name != "signatures":
            assert getattr(index, name) == value, name
    # keys equal under == may still differ in kind (`'w'` and a str enum member `'w'`)
    assert list(map(_key_kind, index.keys)) == list(map(_key_kind, expected["keys"]))
    # signatures are numbers: equal exactly where the expected ones are
    assert _partition(index.signatures) == _partition(expected["signatures"])
    assert index.leaf_nodes == [n for n, leaf in enumerate(expected["is_leaf"]) if leaf]
    texts = sorted(set(expected["texts"]))
    some = texts[::2]
    some_nodes = [n for n, t in enumerate(expected["texts"]) if t in some]
    assert index.by_text.nodes_of(some) == some_nodes  # found by a scan
    for text in texts:  # the first few by scans, then from the whole table
        assert index.by_text.get(text) == [n for n, t in enumerate(expected["texts"]) if t == text]
    assert index.by_text.nodes_of(some) == some_nodes  # from the whole table, where it was built
    for kind in set(expected["types"]):
        nodes = [n for n, k in enumerate(expected["types"]) if k.__name__ == kind.__name__]
        assert index.by_type_name.get(kind.__name__) == nodes


def _key_kind(key: Any) -> tuple[type, ...]:
    return (type(key), type(getattr(key, "key", None)))


def _partition(numbers: list[int]) -> list[int]:
    first: dict[int, int] = {}
    return [first.setdefault(number, position) for position, number in enumerate(numbers)]


def as_restored(tree: Any) -> Any:
    """`tree` as a checkpoint restored without its types gives it back: NamedTuples are dicts of
    their fields, tuples lists, `EmptyState` and `MaskedNode` are None."""
    if isinstance(tree, tuple) and hasattr(type(tree), "_fields"):
        if not tree._fields:
            return None
        return {name: as_restored(getattr(tree, name)) for name in tree._fields}
    if isinstance(tree, list | tuple):
        return [as_restored(item) for item in tree]
    if isinstance(tree, dict):
        return {key: as_restored(value) for key, value in tree.items()}
    return tree


class Linear(eqx.Module):
    weight: Any
    bias: Any
    activation: Any = eqx.field(static=True, default="relu")


@flax.struct.dataclass
class Block:
    kernel: Any
    scale: Any


class Key(str, enum.Enum):
    W = "w"


class Named:
    """A custom node whose keys come from its data, not its treedef: never cached."""

    def __init__(self, name: Any, value: Any) -> None:
        self.name, self.value = name, value


jax.tree_util.register_pytree_with_keys(
    Named,
    lambda n: (((DictKey(n.name), n.value),), None),
    lambda _, children: Named("?", children[0]),
    lambda n: ((n.value,), None),
)


KEYS = ["w", "b", "count", "mu", "nu", "inner_state", "hyperparams", "layer0", "layer1", "scale"]
LEAVES = st.sampled_from([np.zeros(2, np.float32), 1.0, 3, jnp.ones(()), np.int32(0)])


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    runs = st.builds(lambda child, n: {f"layer{i}": child for i in range(n)}, children, st.integers(2, 6))
    return st.one_of(
        st.dictionaries(st.sampled_from(KEYS), children, max_size=4),
        st.lists(children, max_size=4),
        st.lists(children, max_size=3).map(tuple),
        runs,
        st.builds(lambda child, n: [child] * n, children, st.integers(2, 5)),
        st.builds(
            lambda a, b, n, tail: [a, b] * n + [a] * tail,
            children,
            children,
            st.integers(2, 4),
            st.integers(0, 1),
        ),
        st.builds(
            lambda a, b, c, n: {
                f"block{i}_{name}": x for i in range(n) for name, x in (("x", a), ("y", b), ("z", c))
            },
            children,
            children,
            children,
            st.integers(2, 4),
        ),
        st.builds(lambda mu, count: optax.ScaleByAdamState(count, mu, mu), children, LEAVES),
        st.builds(lambda inner: optax.MaskedState(inner), children),
        st.just(optax.EmptyState()),
        st.just(optax.MaskedNode()),
        st.builds(Linear, children, children),
        st.builds(lambda w, b: Linear(w, b, "gelu"), children, children),
        st.builds(Block, children, children),
        st.builds(Named, st.sampled_from(["a", "b", 0, False]), children),
        st.builds(lambda child: [Linear(child, 1.0), Linear(child, 1.0, object())], children),
        st.builds(lambda n, child: [Block(child, 1.0)] * n, st.integers(2, 4), children),
        st.builds(
            lambda names, child: [Named(name, child) for name in names],
            st.lists(st.sampled_from(["a", "b", 0, False])),
            children,
        ),
        st.builds(lambda child: {0: child, 1: child}, children),
        st.builds(lambda child: [{0: child}, {False: child}, {0: child}], children),
        st.builds(lambda child: [{"w": child}, {Key.W: child}, {"w": child}], children),
        st.builds(lambda child: [{Key.W: child}, {"w": child}], children),
    )


TREES = st.recursive(st.one_of(LEAVES, st.none()), _containers, max_leaves=24)


@given(TREES)
def test_random_trees_index_as_node_by_node(tree: Any) -> None:
    assert_same_index(tree)
    assert_same_index(as_restored(tree))


@given(TREES, st.integers(0, 5))
def test_runs_broken_by_one_sibling_index_as_node_by_node(child: Any, odd: int) -> None:
    """A run with a sibling of another structure inside it, or a None beside it."""
    params: dict[str, Any] = {f"layer{i}": {"w": child, "b": 1.0} for i in range(6)}
    params[f"layer{odd}"] = {"w": child}
    assert_same_index(params)
    assert_same_index({**params, "extra": None})
    assert_same_index([params, None, params])


def _states() -> dict[str, Any]:
    params = layered_params(40)
    labels = {name: "decay" if name.endswith("7") else "frozen" for name in params}
    return {
        "seed": seed_optimizer().init(params),
        "masked": optax.masked(optax.adam(1e-3), MASK).init(
            {"dense1": {"w": jnp.ones((4, 4)), "b": jnp.zeros(4)}, "head": {"w": jnp.ones((4, 2))}}
        ),
        "partition": optax.partition(
            {"decay": optax.adamw(1e-3), "frozen": optax.set_to_zero()}, labels
        ).init(params),
        "labels": optax.partition({"decay": optax.adam(1e-3), "no_decay": optax.sgd(1e-2)}, LABELS).init(
            {"dense1": {"w": jnp.ones((4, 4)), "b": jnp.zeros(4)}, "head": {"w": jnp.ones((4, 2))}}
        ),
        "multisteps": optax.MultiSteps(seed_optimizer(), 2).init(params),
        "list params": optax.adam(1e-3).init([{"w": jnp.ones(2), "b": jnp.ones(1)}] * 30),
        "nnx": nnx.state(nnx_optimizer()),
        "eqx": optax.adam(1e-3).init([Linear(jnp.ones((2, 2)), jnp.ones(2)) for _ in range(30)]),
        "eqx Sequential": optax.adam(1e-3).init(eqx.filter(_sequential(12), eqx.is_array)),
    }


def _sequential(layers: int) -> eqx.nn.Sequential:
    """Linear, ReLU, Linear, ReLU, ...: siblings that alternate between two structures."""
    keys = jax.random.split(jax.random.key(0), layers)
    return eqx.nn.Sequential(
        [m for key in keys for m in (eqx.nn.Linear(2, 2, key=key), eqx.nn.Lambda(jax.nn.relu))]
    )


@pytest.mark.parametrize("name", list(_states()))
def test_optax_states_index_as_node_by_node(name: str) -> None:
    state = _states()[name]
    assert_same_index(state)
    assert_same_index(as_restored(state))


def test_nodes_walked_alone_do_not_grow_with_the_params(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the optax states and the roots of the moments are visited one by one; the layers of a
    moment are one run, whether there are 10 or 2,000."""
    visits: list[int] = []
    visit = _build._Walk.visit

    def counted(self: Any, *args: Any) -> None:
        visits.append(1)
        visit(self, *args)

    monkeypatch.setattr(_build._Walk, "visit", counted)
    counts = []
    for layers in (10, 2000):
        state = seed_optimizer().init(layered_params(layers))
        oi.clear_caches()
        visits.clear()
        oi.describe(state)
        counts.append(len(visits))
    assert counts[0] == counts[1] < 100
