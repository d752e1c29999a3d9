"""Runs of sibling subtrees of one structure, for the structure index to record in bulk.

Params-shaped trees repeat themselves: thousands of layers of `{"w", "b"}`, each moment of the
params' structure. A Python step per node costs about a microsecond, many times what JAX's C++
flatten spends on it. So a run of siblings whose subtrees share one structure is described once,
as a `Template` of one member's records, and the index copies it with list and NumPy operations.

Only JAX's own containers take part: `dict`s with `str` keys, `list`s, `tuple`s, `None` and
leaves. For these the records of a node (key, text, type, arity, signature) follow from its type
and its keys or length, so a column of nodes with one type and one set of keys gives every member
the same records. The checks on a column run in C (`map`, `set`, `jax.tree_util.all_leaves`);
anything else (a NamedTuple, a Module, a dict of other keys, a possible restored optax state) makes
`template_of` answer None, and the index walks those nodes one by one.

>>> template_of([{"w": 1, "b": 2}, {"w": 3, "b": 4}], NOWHERE, False, {}).texts
['', 'b', 'w']
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import jax
from jax.tree_util import DictKey, SequenceKey

from ._keys import KeyEntry, edge_text
from ._optax.fields import NOWHERE, state_field_sets

LEAF_TYPE = object
"""The type a template records for a leaf: the index reads each leaf's own type from the leaves."""
Signatures = dict[tuple[Any, ...], int]
"""Interned subtree structures, numbered in the order first seen: a node's type, its children's
keys and their signatures (`()` for a leaf or a masked hole)."""


@dataclass(frozen=True)
class Template:
    """The records of one member's subtree in pre-order, relative to the member's root (whose key
    is each member's own, so `keys[0]` is None)."""

    types: list[type]
    keys: list[KeyEntry | None]
    texts: list[str]
    parents: list[int]
    """The parent of each node as a position in the template; -1 for the root."""
    is_leaf: list[bool]
    leaf_counts: list[int]
    sizes: list[int]
    arities: list[int]
    depths: list[int]
    signatures: list[int]
    holes: list[int]
    """Positions of masked holes (`None`s in the params-shaped field of a restored state)."""

    @property
    def size(self) -> int:
        return len(self.types)


def signature(interned: Signatures, structure: tuple[Any, ...]) -> int:
    return interned.setdefault(structure, len(interned))


def template_of(column: list[Any], where: int, in_data: bool, interned: Signatures) -> Template | None:
    """One template for every node of `column`, or None where their structures differ or are not
    JAX's plain containers. `where` and `in_data` say where the nodes are, as the index's walk does.
    Outside a params-shaped field (`where` is not `NOWHERE`) a dict with the fields of an optax
    state may be a restored state and is refused; no other node there depends on `where`."""
    if jax.tree_util.all_leaves(column):
        return _single(LEAF_TYPE, True, interned)
    kinds = set(map(type, column))
    if len(kinds) != 1:
        return None
    [kind] = kinds
    keys: list[KeyEntry]
    if kind is type(None):
        return _single(kind, False, interned, hole=in_data)
    if kind is dict:
        names = list(column[0])
        if set(map(len, column)) != {len(names)} or not all(type(name) is str for name in names):
            return None
        if where != NOWHERE and frozenset(names) in state_field_sets():
            return None
        names.sort()
        try:  # one length and every key of the first: one set of keys
            columns = [list(map(operator.itemgetter(name), column)) for name in names]
        except KeyError:
            return None
        keys = [DictKey(name) for name in names]
    elif kind is list or kind is tuple:
        lengths = set(map(len, column))
        if len(lengths) != 1:
            return None
        [length] = lengths
        keys = [SequenceKey(i) for i in range(length)]
        columns = [list(map(operator.itemgetter(i), column)) for i in range(length)]
    else:
        return None
    children = []
    for child_column in columns:
        child = template_of(child_column, where, in_data, interned)
        if child is None:
            return None
        children.append(child)
    return _joined(kind, keys, children, interned)


def _single(kind: type, is_leaf: bool, interned: Signatures, hole: bool = False) -> Template:
    structure = () if is_leaf or hole else (kind, (), ())
    return Template(
        types=[kind],
        keys=[None],
        texts=[""],
        parents=[-1],
        is_leaf=[is_leaf],
        leaf_counts=[int(is_leaf)],
        sizes=[1],
        arities=[0],
        depths=[0],
        signatures=[signature(interned, structure)],
        holes=[0] if hole else [],
    )


def _joined(kind: type, keys: list[KeyEntry], children: list[Template], interned: Signatures) -> Template:
    """The template of a node of type `kind` whose children, under `keys`, have the templates
    `children`."""
    joined = Template([kind], [None], [""], [-1], [False], [0], [1], [len(children)], [0], [0], [])
    for key, child in zip(keys, children, strict=True):
        offset = joined.size
        joined.types.extend(child.types)
        joined.keys.extend([key, *child.keys[1:]])
        joined.texts.extend([edge_text(key), *child.texts[1:]])
        joined.parents.extend([0, *(offset + parent for parent in child.parents[1:])])
        joined.is_leaf.extend(child.is_leaf)
        joined.leaf_counts.extend(child.leaf_counts)
        joined.sizes.extend(child.sizes)
        joined.arities.extend(child.arities)
        joined.depths.extend(depth + 1 for depth in child.depths)
        joined.signatures.extend(child.signatures)
        joined.holes.extend(offset + hole for hole in child.holes)
    joined.leaf_counts[0] = sum(child.leaf_counts[0] for child in children)
    joined.sizes[0] = joined.size
    structure = (kind, tuple(keys), tuple(child.signatures[0] for child in children))
    joined.signatures[0] = signature(interned, structure)
    return joined
