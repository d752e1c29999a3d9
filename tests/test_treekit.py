"""The tree toolkit: walks, a bottom-up build, a rebuild along a spine and a zip of two trees by name."""

from __future__ import annotations

import collections
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.tree_util import DictKey, GetAttrKey, SequenceKey, keystr

from optree_inspect._treekit import (
    Matched,
    OneSided,
    leaves_with_paths,
    map_with_path,
    match_children,
    rebuild,
    walk,
    zip_by_name,
)

DEPTH = 2_000


class Pair(NamedTuple):
    first: Any
    second: Any


def zipped(a: Any, b: Any, **options: Any) -> list[tuple[str, str, str]]:
    """Each item of the zip as (what, path in a, path in b); a one-sided item has one path."""
    rows = []
    for item in zip_by_name(a, b, **options):
        if isinstance(item, OneSided):
            rows.append((f"only {item.side}", keystr(item.path), ""))
        else:
            rows.append(("matched", keystr(item.path_a), keystr(item.path_b)))
    return rows


def nested(depth: int, leaf: Any) -> Any:
    tree = leaf
    for level in range(depth):
        tree = {"x": tree} if level % 2 else [tree]
    return tree


# Zip by name ---------------------------------------------------------------------------------------


def test_fields_match_str_keys_and_positions_match_int_keys() -> None:
    second = collections.OrderedDict([(0, 2), ("1", 3)])  # mixed keys: only an OrderedDict flattens
    rows = zipped(Pair(1, [2, 3]), {"first": 1, "second": second})
    assert rows == [
        ("matched", "", ""),
        ("matched", ".first", "['first']"),
        ("matched", ".second", "['second']"),
        ("matched", ".second[0]", "['second'][0]"),
        ("matched", ".second[1]", "['second']['1']"),
    ]


def test_an_int_key_matches_the_str_that_spells_it_on_either_side() -> None:
    assert zipped({0: 1, 1: 2}, {"0": 1, "1": 2})[1:] == [
        ("matched", "[0]", "['0']"),
        ("matched", "[1]", "['1']"),
    ]
    assert zipped({"0": 1}, {0: 1})[1:] == [("matched", "['0']", "[0]")]


def test_with_spelled_b_only_a_str_key_of_b_spells_a_key_of_a() -> None:
    assert zipped({0: 1}, {"0": 1}, spelled="b")[1:] == [("matched", "[0]", "['0']")]
    assert zipped({"0": 1}, {0: 1}, spelled="b")[1:] == [("only a", "['0']", ""), ("only b", "[0]", "")]


def test_a_key_matches_its_text_only_where_nothing_else_does() -> None:
    both = collections.OrderedDict([(0, "int"), ("0", "str")])  # JAX keeps both, in order
    assert zipped(both, {"0": "x"})[1:] == [("only a", "[0]", ""), ("matched", "['0']", "['0']")]
    both_b = collections.OrderedDict([(0, 1), ("0", 2)])
    assert zipped({0: 1}, both_b)[1:] == [("matched", "[0]", "[0]"), ("only b", "['0']", "")]
    assert zipped({1: 1}, {"01": 1})[1:] == [("only a", "[1]", ""), ("only b", "['01']", "")]


def test_match_children_keeps_each_sides_order() -> None:
    matched, only_b = match_children(
        [(DictKey("b"), 1), (DictKey("a"), 2)], [(DictKey("z"), 0), (DictKey("a"), 3), (DictKey("y"), 4)]
    )
    assert [(key.key, found and found[0].key) for key, _, found in matched] == [("b", None), ("a", "a")]
    assert [key.key for key, _ in only_b] == ["z", "y"]


def test_one_sided_children_stand_where_a_has_them_and_b_s_come_after() -> None:
    rows = zipped({"a": 1, "b": {"c": 2}, "d": 3}, {"b": {"e": 4}, "d": 3, "f": 5})
    assert rows == [
        ("matched", "", ""),
        ("only a", "['a']", ""),
        ("matched", "['b']", "['b']"),
        ("only a", "['b']['c']", ""),
        ("only b", "['b']['e']", ""),
        ("matched", "['d']", "['d']"),
        ("only b", "['f']", ""),
    ]


def test_a_subtree_against_a_leaf_is_not_entered_unless_asked() -> None:
    [_, inner] = list(zip_by_name({"w": [1, 2]}, {"w": 7}))
    assert isinstance(inner, Matched) and not inner.entered and inner.children_b is None
    everything = lambda a, b, ca, cb: True  # noqa: E731
    rows = zipped({"w": [1, 2]}, {"w": 7}, enter=everything)
    assert rows[2:] == [("only a", "['w'][0]", ""), ("only a", "['w'][1]", "")]


def test_enter_decides_which_pairs_are_entered() -> None:
    items = list(zip_by_name({"a": {"b": 1}}, {"a": {"b": 1}}, enter=lambda a, b, ca, cb: "a" in a))
    assert [(keystr(i.path_a), i.entered) for i in items if isinstance(i, Matched)] == [
        ("", True),
        ("['a']", False),
    ]


def test_a_variable_stands_for_its_value_against_a_leaf() -> None:
    param = nnx.Param(jnp.zeros(2))
    # From flax 0.11 a Variable is a node whose child is its value; before, a leaf to JAX.
    value = "" if jax.tree_util.all_leaves([param]) else ".value"
    assert zipped({"w": param}, {"w": jnp.ones(2)})[1:] == [("matched", f"['w']{value}", "['w']")]
    assert zipped({"w": jnp.ones(2)}, {"w": param})[1:] == [("matched", "['w']", f"['w']{value}")]
    assert zipped({"w": param}, {"w": None})[1:] == [("matched", f"['w']{value}", "['w']")]
    # a Variable saved as {'value': ...} (restored without its target) stands for its value too
    assert zipped({"w": param}, {"w": {"value": jnp.ones(2)}})[1:] == [
        ("matched", f"['w']{value}", "['w']['value']")
    ]
    assert zipped({"w": {"value": jnp.ones(2)}}, {"w": jnp.ones(2)})[1:] == [
        ("matched", "['w']['value']", "['w']")
    ]
    # against a subtree, it is a node
    assert zipped({"w": param}, {"w": {"a": jnp.ones(2)}})[1] == ("matched", "['w']", "['w']")
    assert zipped({"w": param}, {"w": jnp.ones(2)}, variables=False)[1:] == [("matched", "['w']", "['w']")]


@pytest.mark.parametrize("options", [{}, {"spelled": "b", "variables": False}])
def test_zip_at_any_depth(options: dict[str, Any]) -> None:
    a, b = nested(DEPTH, 1), nested(DEPTH, 2)
    items = list(zip_by_name(a, b, **options))
    assert len(items) == DEPTH + 1 and all(isinstance(item, Matched) for item in items)
    assert (items[-1].a, items[-1].b, len(items[-1].path_a)) == (1, 2, DEPTH)


# Walks, maps and rebuilds ----------------------------------------------------------------------------


def test_walk_and_leaves_go_in_flatten_order_and_skip_what_is_not_entered() -> None:
    tree = {"b": [1, {"c": 2}], "a": (3,)}
    assert [keystr(path) for path, _ in leaves_with_paths(tree)] == ["['a'][0]", "['b'][0]", "['b'][1]['c']"]
    skipped = walk(tree, enter=lambda path, node: path != (DictKey("b"),))
    assert [keystr(path) for path, _, _ in skipped] == ["", "['a']", "['a'][0]", "['b']"]


def test_map_with_path_rebuilds_every_container_type() -> None:
    tree = {"p": Pair(1, [2, (3,)]), "n": None}
    mapped = map_with_path(lambda path, leaf: f"{keystr(path)}={leaf}", tree)
    assert mapped == {"p": Pair("['p'].first=1", ["['p'].second[0]=2", ("['p'].second[1][0]=3",)]), "n": None}
    assert type(mapped["p"]) is Pair


def test_rebuild_makes_only_the_spine_new() -> None:
    untouched, sibling = {"k": [1, 2]}, Pair(3, 4)
    tree = {"a": untouched, "b": {"c": sibling, "d": [5, 6]}}
    new = rebuild(
        tree,
        [
            ((DictKey("b"), DictKey("d"), SequenceKey(1)), 60),
            ((DictKey("b"), DictKey("c"), GetAttrKey("first")), 30),
        ],
    )
    assert new == {"a": {"k": [1, 2]}, "b": {"c": Pair(30, 4), "d": [5, 60]}}
    assert new["a"] is untouched and new["b"] is not tree["b"] and new["b"]["c"] is not sibling
    assert tree == {"a": {"k": [1, 2]}, "b": {"c": Pair(3, 4), "d": [5, 6]}}  # unchanged
    assert rebuild(tree, []) is tree and rebuild(tree, [((), 0)]) == 0


def test_walk_map_and_rebuild_at_any_depth() -> None:
    tree = nested(DEPTH, 1)
    [(path, leaf)] = list(leaves_with_paths(tree))
    assert leaf == 1 and len(path) == DEPTH
    [(_, mapped)] = list(leaves_with_paths(map_with_path(lambda _, leaf: leaf + 1, tree)))
    assert mapped == 2
    new = rebuild(tree, [(path, 5)])
    assert list(leaves_with_paths(new)) == [(path, 5)] and list(leaves_with_paths(tree)) == [(path, 1)]
