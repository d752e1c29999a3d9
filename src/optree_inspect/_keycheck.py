"""The key check: on a later tree of an indexed structure, whether every mapping key is a `str`.

A treedef compares dict keys (and aux data) with `==`, under which a `str` equals its subclasses
(a `(str, Enum)` member, `np.str_`): a tree of a cached index's treedef may hold such keys where
the indexed tree had `str`s. `key_check` plans, once per index, how to reach every mapping node in
C passes (`jax.tree.structure` and `flatten_up_to` over regions between mappings); `keys_are_str`
runs the plan on each later tree.
"""

from __future__ import annotations

import itertools
import operator
from typing import Any, NamedTuple, Protocol

import jax
from jax.tree_util import DictKey

from ._keys import KeyEntry
from ._registry import DICT_TYPES, REGISTRY


class Nodes(Protocol):
    """What the key check reads of a structure index (`_index.StructureIndex`)."""

    keys: list[KeyEntry | None]
    types: list[type]
    parents: list[int]
    sizes: list[int]
    arities: list[int]


class Region(NamedTuple):
    """Part of a tree between a mapping (or the root) and the mappings below it: `treedef` is its
    structure with each mapping below it, and each subtree holding none, cut to a leaf."""

    treedef: Any
    parent: int
    """The region whose cut leaves hold this one's root, or -1 for the tree's root."""
    position: int
    """Which of the parent's cut leaves is this region's root."""
    dicts: tuple[int, ...] | None
    """The cut leaves that are dicts (None: every one)."""
    customs: tuple[int, ...]
    """The cut leaves that are custom mapping nodes (their keys are in their aux data)."""
    values_only: bool = False
    """The region is one `dict` of dicts, none holding a mapping below it: its `values()` are its
    cut leaves (in another order, which nothing reads), without a pass that sorts its keys."""


class KeyCheck(NamedTuple):
    """Every mapping of a tree structure, reached by regions (`Region`) in C passes."""

    root: str | None
    """"dict" or "custom" when the root itself is a mapping."""
    regions: tuple[Region, ...]


UNCHECKABLE: Any = KeyCheck(None, ())
PENDING: Any = KeyCheck(None, ())
"""Not planned yet: `keys_are_str` plans it from the first later tree (of an equal treedef)."""
_STR = frozenset({str})


def key_check(index: Nodes, tree: Any) -> KeyCheck | None:
    """How to reach every mapping node (a dict, or a custom node keyed by `DictKey`s from its aux
    data) of trees of `tree`'s structure; None when there are none, `UNCHECKABLE` when JAX did
    not visit the nodes as the index has them.

    A treedef compares dict keys (and aux data) with `==`, under which a `str` equals its
    subclasses (a `(str, Enum)` member, `np.str_`): a later tree of equal treedef may hold such
    keys where the indexed tree had `str`s, and its own index must be built."""
    count = len(index.keys)
    with_dict_key = map(operator.is_, map(type, index.keys), itertools.repeat(DictKey))
    mapping = [False] * count
    for parent in set(itertools.compress(index.parents, with_dict_key)):
        mapping[parent] = True
    if not any(mapping):
        return None
    holds = [False] * count  # whether a node's subtree holds a mapping, itself included
    below = [False] * count  # whether it holds one strictly below it
    for node in itertools.compress(range(count), mapping):
        holds[node] = True
        parent = index.parents[node]
        while parent >= 0 and not below[parent]:
            below[parent] = holds[parent] = True
            parent = index.parents[parent]
    root_kind = None if not mapping[0] else "dict" if index.types[0] in DICT_TYPES else "custom"
    regions: list[Region] = []
    pending: list[tuple[int, Any, int, int]] = [(0, tree, -1, 0)]
    while pending:
        root, node, parent, position = pending.pop()
        cuts: list[int] = []
        cursor = [root]

        def cut(_: Any, root: int = root, cuts: list[int] = cuts, cursor: list[int] = cursor) -> bool:
            number = cursor[0]
            if number != root and (mapping[number] or not holds[number]):
                cuts.append(number)
                cursor[0] = number + index.sizes[number]
                return True
            cursor[0] = number + 1
            return False

        treedef: Any = jax.tree.structure(node, is_leaf=cut)
        if cursor[0] != root + index.sizes[root] or treedef.num_leaves != len(cuts):
            return UNCHECKABLE
        number = len(regions)
        nested = any(map(below.__getitem__, cuts))
        found = treedef.flatten_up_to(node) if nested else []
        dicts = [i for i, n in enumerate(cuts) if mapping[n] and index.types[n] in DICT_TYPES]
        customs = tuple(i for i, n in enumerate(cuts) if mapping[n] and index.types[n] not in DICT_TYPES)
        every = len(dicts) == len(cuts)
        values_only = (
            every
            and index.types[root] is dict
            and len(cuts) == index.arities[root]
            and not nested
            and all(index.parents[cut] == root for cut in cuts)  # its children, not deeper nodes
        )
        region = Region(treedef, parent, position, None if every else tuple(dicts), customs, values_only)
        regions.append(region)
        pending.extend((n, found[i], number, i) for i, n in enumerate(cuts) if below[n])
    return KeyCheck(root_kind, tuple(regions))


def _aux_keys(node: Any) -> Any:
    """The keys a custom mapping node keeps in its aux data (`_registry.keys_follow_structure`)."""
    flat = REGISTRY.flatten_one_level(node)
    return () if flat is None else flat[1]


def keys_are_str(tree: Any, index: Any) -> bool:
    """Whether every mapping key of `tree`, a tree of `index`'s structure (an equal treedef), is a
    `str`; False where the check cannot be planned (`UNCHECKABLE`), so that the caller builds."""
    check = index.key_check
    if check is PENDING:
        check = index.key_check = key_check(index, tree)
    if check is None:
        return True
    if check is UNCHECKABLE:
        return False
    try:
        if check.root == "dict" and not set(map(type, tree)) <= _STR:
            return False
        if check.root == "custom" and not set(map(type, _aux_keys(tree))) <= _STR:
            return False
        found_in: list[list[Any]] = []
        for region in check.regions:
            node = tree if region.parent < 0 else found_in[region.parent][region.position]
            found = list(node.values()) if region.values_only else region.treedef.flatten_up_to(node)
            found_in.append(found)
            dicts = found if region.dicts is None else map(found.__getitem__, region.dicts)
            if not set(map(type, itertools.chain.from_iterable(dicts))) <= _STR:
                return False
            for position in region.customs:
                if not set(map(type, _aux_keys(found[position]))) <= _STR:
                    return False
    except Exception:  # a custom flatten that fails now: no answer from this index
        return False
    return True
