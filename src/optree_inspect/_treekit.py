"""One tree toolkit on JAX's registry: walks with paths, a bottom-up build (a map with paths, a
rebuild along a spine) and a zip of two trees by name.

Every function here is iterative: a tree as deep as JAX can flatten is fine, and an untouched
subtree is the same object in the result.

>>> from jax.tree_util import DictKey, SequenceKey, keystr
>>> tree = {"a": [1, 2], "b": (3,)}
>>> [keystr(path) for path, _ in leaves_with_paths(tree)]
["['a'][0]", "['a'][1]", "['b'][0]"]
>>> rebuild(tree, [((DictKey("a"), SequenceKey(1)), 20)])
{'a': [1, 20], 'b': (3,)}
>>> [(keystr(item.path_a), keystr(item.path_b)) for item in zip_by_name({0: 1}, {"0": 2})][1:]
[('[0]', "['0']")]
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, NamedTuple

import jax
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

from ._keys import KeyEntry, KeyPath
from ._leaf import is_any_variable, is_variable
from ._paths import child_at
from ._registry import DICT_TYPES, children_with_keys, is_namedtuple_type

Children = list[tuple[KeyEntry, Any]]
"""A node's `(key, child)` pairs in flatten order, as `children_with_keys` gives them."""

# Walks -----------------------------------------------------------------------------------------


def walk(
    tree: Any, prefix: KeyPath = (), *, enter: Callable[[KeyPath, Any], bool] | None = None
) -> Iterator[tuple[KeyPath, Any, Children | None]]:
    """Every node of `tree` with its path (after `prefix`) and its children (None for a leaf), a
    node before its children, in flatten order. Below a node for which `enter(path, node)` is
    false, nothing is walked.

    >>> [(len(path), children is None) for path, _, children in walk({"a": [1]})]
    [(0, False), (1, False), (2, True)]
    """
    stack: list[tuple[KeyPath, Any]] = [(prefix, tree)]
    while stack:
        path, node = stack.pop()
        children = children_with_keys(node)
        yield path, node, children
        if children and (enter is None or enter(path, node)):
            stack.extend(((*path, key), child) for key, child in reversed(children))


def leaves_with_paths(tree: Any, prefix: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    """Every leaf of `tree` with its path (after `prefix`), in flatten order."""
    for path, node, children in walk(tree, prefix):
        if children is None:
            yield path, node


# Building bottom-up ----------------------------------------------------------------------------


class Built(NamedTuple):
    """What `build`'s `expand` returns for an item whose value it knows."""

    value: Any


Expanded = Built | tuple[Any, list[tuple[KeyEntry, Any]]]
"""`Built(value)`, or `(node, [(key, child item), ...])`: `node` with each of those children
replaced by its item's value."""


def build(root: Any, expand: Callable[[Any], Expanded]) -> Any:
    """The value of the item `root`, built bottom-up without recursion.

    `expand(item)` returns `Built(value)` for an item whose value it knows, or `(node, [(key,
    child_item), ...])`: the item's value is then `node` with the child under each key replaced by
    the value of its child item (see `replace_children`), `node` itself for no child items. Items
    are expanded in the order given, depth first, so the first error raised is the first in tree
    order.
    """
    stack: list[tuple[Any, list[tuple[KeyEntry, Any]], dict[KeyEntry, Any]]] = []
    result = expand(root)
    while True:
        if not isinstance(result, Built):
            node, items = result
            if items:
                pending = items[::-1]
                stack.append((node, pending, {}))
                result = expand(pending[-1][1])
                continue
            result = Built(node)
        value = result.value
        while stack:
            node, pending, done = stack[-1]
            done[pending.pop()[0]] = value
            if pending:
                break
            stack.pop()
            value = replace_children(node, done)
        if not stack:
            return value
        result = expand(stack[-1][1][-1][1])


def map_with_path(function: Callable[[KeyPath, Any], Any], tree: Any, prefix: KeyPath = ()) -> Any:
    """`tree` with each leaf replaced by `function(path, leaf)`, rebuilt through the registry.

    >>> map_with_path(lambda path, leaf: leaf * 10, {"a": [1, 2]})
    {'a': [10, 20]}
    """

    def expand(item: tuple[KeyPath, Any]) -> Expanded:
        path, node = item
        children = children_with_keys(node)
        if children is None:
            return Built(function(path, node))
        return node, [(key, ((*path, key), child)) for key, child in children]

    return build((prefix, tree), expand)


def rebuild(tree: Any, edits: Iterable[tuple[KeyPath, Any]]) -> Any:
    """`tree` with the node at each path replaced by its value: only the ancestors of the edited
    nodes (the spine) are new, every other subtree is the same object. No path may lie inside
    another's node."""
    spine: dict[KeyEntry, Any] = {}  # key -> the spine below it (a dict), or a Built replacement
    for path, value in edits:
        if not path:
            return value
        level = spine
        for key in path[:-1]:
            level = level.setdefault(key, {})
        level[path[-1]] = Built(value)
    if not spine:
        return tree

    def expand(item: tuple[Any, Any]) -> Expanded:
        node, level = item
        if isinstance(level, Built):
            return level
        return node, [(key, (child_at(node, key), below)) for key, below in level.items()]

    return build((tree, spine), expand)


def replace_children(node: Any, replacements: Mapping[KeyEntry, Any]) -> Any:
    """A copy of `node` with the children under some keys replaced, rebuilt as JAX's registry
    rebuilds it (dicts, lists, tuples and NamedTuples directly)."""
    kind = type(node)
    if kind in DICT_TYPES:
        new_dict = copy.copy(node)
        for key, child in replacements.items():
            new_dict[key.key] = child
        return new_dict
    if kind is tuple or kind is list:
        items = list(node)
        for key, child in replacements.items():
            items[key.idx] = child
        return kind(items)
    if is_namedtuple_type(kind):
        return node._replace(**{key.name: child for key, child in replacements.items()})
    children = [replacements.get(key, child) for key, child in children_with_keys(node) or ()]
    one_level: Any = jax.tree_util.tree_structure(node, is_leaf=lambda candidate: candidate is not node)
    return one_level.unflatten(children)


# Zip by name -----------------------------------------------------------------------------------


class Matched(NamedTuple):
    """Two nodes that stand for each other, their paths and children (None for a leaf), and
    whether the zip went on to match their children."""

    a: Any
    b: Any
    path_a: KeyPath
    path_b: KeyPath
    children_a: Children | None
    children_b: Children | None
    entered: bool


class OneSided(NamedTuple):
    """A subtree only one side has: `side` is "a" or "b", `path` its path there."""

    side: Literal["a", "b"]
    node: Any
    path: KeyPath


def both_nodes(a: Any, b: Any, children_a: Children | None, children_b: Children | None) -> bool:
    """`zip_by_name`'s default: match the children of two nodes, never of a leaf."""
    return children_a is not None and children_b is not None


def zip_by_name(
    a: Any,
    b: Any,
    *,
    enter: Callable[[Any, Any, Children | None, Children | None], bool] = both_nodes,
    spelled: Literal["either", "b"] = "either",
    variables: bool = True,
    paths: tuple[KeyPath, KeyPath] = ((), ()),
) -> Iterator[Matched | OneSided]:
    """The nodes of `a` and `b` that stand for each other, matched from the roots down, with what
    only one side has, in `a`'s flatten order: each `Matched` pair before what is below it, a
    subtree only `a` has where it stands in `a`, those only `b` has after their siblings.

    Children match by name (see `match_children`, where `spelled` is said). Below a pair, the
    children are matched where `enter(a, b, children_a, children_b)` is true (`both_nodes` by
    default; a leaf's children are none there); `Matched.entered` tells. With `variables`, an nnx
    Variable (typed, or restored as `{"value": leaf}`) stands for its value where the other side is
    no Variable and has no children (a leaf, `None`, an empty container), and a typed and a
    restored one for their values. `paths` are the paths of `a` and `b` themselves.
    """
    stack: list[tuple[Any, Any, KeyPath, KeyPath] | OneSided] = [(a, b, *paths)]
    while stack:
        item = stack.pop()
        if isinstance(item, OneSided):
            yield item
            continue
        node_a, node_b, path_a, path_b = item
        if variables:
            node_a, node_b, path_a, path_b = _variable_values(node_a, node_b, path_a, path_b)
        children_a, children_b = children_with_keys(node_a), children_with_keys(node_b)
        entered = enter(node_a, node_b, children_a, children_b)
        yield Matched(node_a, node_b, path_a, path_b, children_a, children_b, entered)
        if not entered:
            continue
        matched, only_b = match_children(children_a or [], children_b or [], spelled=spelled)
        stack.extend(OneSided("b", child, (*path_b, key)) for key, child in reversed(only_b))
        for key, child, found in reversed(matched):
            if found is None:
                stack.append(OneSided("a", child, (*path_a, key)))
            else:
                stack.append((child, found[1], (*path_a, key), (*path_b, found[0])))


def _variable_values(a: Any, b: Any, path_a: KeyPath, path_b: KeyPath) -> tuple[Any, Any, KeyPath, KeyPath]:
    """An nnx Variable, typed or restored (`{"value": leaf}`), as its value: against no Variable
    and no children on the other side, or a typed one against a restored one."""
    held_a, held_b = _held(a), _held(b)
    if held_a is None and held_b is None:
        return a, b, path_a, path_b
    if held_a is not None and held_b is not None:
        if is_variable(a) == is_variable(b):
            return a, b, path_a, path_b  # their `value` children match by name
    elif children_with_keys(b if held_a is not None else a):
        return a, b, path_a, path_b  # a Variable against a subtree: a structure difference
    if held_a is not None:
        a, path_a = held_a[1], (*path_a, held_a[0])
    if held_b is not None:
        b, path_b = held_b[1], (*path_b, held_b[0])
    return a, b, path_a, path_b


def _held(node: Any) -> tuple[KeyEntry, Any] | None:
    """The key and value of the one child of an nnx Variable, typed or restored, else None (also
    for a Variable that is a leaf to JAX, before flax 0.11)."""
    if not is_any_variable(node):
        return None
    inner = children_with_keys(node) or []
    return inner[0] if len(inner) == 1 else None


def name_of(key: KeyEntry) -> Any:
    """What a key names, whatever its kind: a field by its name, a dict item by its key, a
    sequence item by its position (so a field matches the `str` key that spells it, and a
    position the int key)."""
    if isinstance(key, GetAttrKey):
        name: Any = key.name
    elif isinstance(key, DictKey | FlattenedIndexKey):
        name = key.key
    elif isinstance(key, SequenceKey):
        name = key.idx
    else:
        return str(key)
    try:
        hash(name)
    except TypeError:  # an unhashable key: it names only itself
        return _Unhashable(key)
    return name


class _Unhashable:
    __slots__ = ("key",)

    def __init__(self, key: KeyEntry) -> None:
        self.key = key


def match_children(
    children_a: Children, children_b: Children, *, spelled: Literal["either", "b"] = "either"
) -> tuple[list[tuple[KeyEntry, Any, tuple[KeyEntry, Any] | None]], Children]:
    """Each child of `a` with the child of `b` it matches (None if none), in `a`'s order, and the
    children only `b` has, in `b`'s order.

    Children match by name (`name_of`). Then a key that is no `str` (`0`) left without a match
    matches the one `str` key that spells it (`'0'`) left without one on the other side, where its
    own side has no such `str` key, as orbax restores `{0: x}` as `{'0': x}`: with `spelled="b"`
    only a `str` key of `b` spells a key of `a`, with "either" one of either side does.

    >>> from jax.tree_util import DictKey
    >>> matched, only_b = match_children([(DictKey(0), 1)], [(DictKey("0"), 2), (DictKey("x"), 3)])
    >>> [(key.key, found[0].key) for key, _, found in matched], [key.key for key, _ in only_b]
    ([(0, '0')], ['x'])
    """
    names_a = [name_of(key) for key, _ in children_a]
    names_b = [name_of(key) for key, _ in children_b]
    index_b: dict[Any, int] = {}
    for position, name in enumerate(names_b):
        index_b.setdefault(name, position)
    found_at: list[int | None] = [index_b.get(name) for name in names_a]
    taken = {position for position in found_at if position is not None}
    if len(taken) < len(children_b):
        _match_spelled(names_a, names_b, found_at, taken, spelled)
    matched = [
        (key, child, None if position is None else children_b[position])
        for (key, child), position in zip(children_a, found_at, strict=True)
    ]
    only_b = [pair for position, pair in enumerate(children_b) if position not in taken]
    return matched, only_b


def _match_spelled(
    names_a: list[Any],
    names_b: list[Any],
    found_at: list[int | None],
    taken: set[int],
    spelled: Literal["either", "b"],
) -> None:
    """Pair the names left without a match whose texts agree, one a `str` and one not, each the only
    one of its text on its side; `found_at` and `taken` are updated in place."""
    left_a = [p for p, position in enumerate(found_at) if position is None]
    left_b = [p for p in range(len(names_b)) if p not in taken]
    if not left_a:
        return
    all_a, all_b = set(names_a), set(names_b)
    by_text: dict[str, tuple[list[int], list[int]]] = {}
    for p in left_a:
        by_text.setdefault(_text(names_a[p]), ([], []))[0].append(p)
    for p in left_b:
        if _text(names_b[p]) in by_text:
            by_text[_text(names_b[p])][1].append(p)
    for text, (ps_a, ps_b) in by_text.items():
        if len(ps_a) != 1 or len(ps_b) != 1:
            continue
        name_a, name_b = names_a[ps_a[0]], names_b[ps_b[0]]
        if isinstance(name_a, str) == isinstance(name_b, str):
            continue
        if isinstance(name_a, str) and spelled == "b":
            continue  # only b's str keys spell a's keys
        if text in (all_b if isinstance(name_a, str) else all_a):
            continue  # the side of the key that is no str holds that str key too
        found_at[ps_a[0]] = ps_b[0]
        taken.add(ps_b[0])


def _text(name: Any) -> str:
    return name if isinstance(name, str) else str(name)
