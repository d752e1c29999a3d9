"""Runs of sibling subtrees of one structure, for the structure index to record in bulk.

Params-shaped trees repeat themselves: thousands of layers of `{"w", "b"}`, each moment of the
params' structure. A Python step per node costs about a microsecond, many times what JAX's C++
flatten spends on it. So a run of siblings whose subtrees share one structure is described once,
as a `Template` of one member's records, and the index copies it with list and NumPy operations.

The records of a node (key, text, type, arity, signature) follow from its type and its keys, so
a column of nodes with one type and one list of keys gives every member the same records. For
JAX's own containers (`dict`s with `str` keys, `list`s, `tuple`s, `None`) and leaves the checks
on a column run in C (`map`, `set`, `jax.tree_util.all_leaves`); other registered nodes (Modules,
dataclasses, nnx States and Variables) are flattened once a member through JAX's registry. A
state (by the registered `StateRules`), a dict that could be a restored one, or keys that differ
make `template_of` answer None, and the index walks those nodes one by one.

>>> template_of([{"w": 1, "b": 2}, {"w": 3, "b": 4}], DATA, False, {}, StateRules()).texts
['', 'b', 'w']
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jax
from jax.tree_util import DictKey, SequenceKey

from ._errors import TreeError
from ._keys import KeyEntry, edge_text
from ._registry import REGISTRY, cacheable_node, flatten_one_level, is_namedtuple_type, keys_follow_structure
from ._state_rules import DATA, StateRules

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
    """Positions of masked holes (nodes of a hole type, `None`s in a restored state's data
    field)."""
    cacheable: bool = True
    """Whether every node's keys and aux data let the index be cached (`_registry.cacheable_node`)."""
    roots: tuple[int, ...] = (0,)
    """Where each member's siblings start: one member is one subtree, or, for siblings that
    alternate between structures (`interleaved`), one subtree of each."""

    @property
    def size(self) -> int:
        return len(self.types)

    @property
    def leaf_count(self) -> int:
        return sum(self.leaf_counts[root] for root in self.roots)


def interleaved(templates: list[Template]) -> Template:
    """One template for siblings that repeat the structures of `templates` in turn (A, B, A, B,
    ...): a member is one subtree of each, side by side, without a root of its own."""
    joined = Template([], [], [], [], [], [], [], [], [], [], [], all(t.cacheable for t in templates), ())
    roots = []
    for template in templates:
        offset = joined.size
        roots.append(offset)
        joined.types.extend(template.types)
        joined.keys.extend(template.keys)
        joined.texts.extend(template.texts)
        joined.parents.extend(-1 if parent < 0 else offset + parent for parent in template.parents)
        joined.is_leaf.extend(template.is_leaf)
        joined.leaf_counts.extend(template.leaf_counts)
        joined.sizes.extend(template.sizes)
        joined.arities.extend(template.arities)
        joined.depths.extend(template.depths)
        joined.signatures.extend(template.signatures)
        joined.holes.extend(offset + hole for hole in template.holes)
    return dataclasses.replace(joined, roots=tuple(roots))


def signature(interned: Signatures, structure: tuple[Any, ...]) -> int:
    return interned.setdefault(structure, len(interned))


MAX_DEPTH = 64
"""Members nested deeper than this are left to the walk, whose stack is not Python's."""


def template_of(
    column: list[Any], place: int, in_data: bool, interned: Signatures, rules: StateRules, depth: int = 0
) -> Template | None:
    """One template for every node of `column`, or None where their structures differ or are not
    JAX's plain containers. `place` and `in_data` say where the nodes are, as the index's walk does.
    Outside a data field (`place` is not `DATA`) a dict with the keys of a state (`rules`) may be
    a restored state and is refused; no other node there depends on `place`."""
    if jax.tree_util.all_leaves(column):
        return _single(LEAF_TYPE, True, interned)
    kinds = set(map(type, column))
    if len(kinds) != 1 or depth > MAX_DEPTH:
        return None
    [kind] = kinds
    keys: list[KeyEntry]
    if kind is type(None):
        return _single(kind, False, interned, hole=in_data)
    if rules.is_hole_type(kind):
        return _single(kind, False, interned, hole=True)
    cacheable = True
    if kind is dict:
        names = list(column[0])
        key_types = set(map(type, itertools.chain.from_iterable(column)))  # every member's keys
        if set(map(len, column)) != {len(names)} or not key_types <= {str}:
            return None
        if place != DATA and rules.may_be_restored(frozenset(names)):
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
        found = _registered_columns(kind, column, rules)
        if found is None:
            return None
        keys, columns, cacheable = found
    children = []
    for child_column in columns:
        child = template_of(child_column, place, in_data, interned, rules, depth + 1)
        if child is None:
            return None
        children.append(child)
    return _joined(kind, keys, children, interned, cacheable)


def _registered_columns(
    kind: type, column: list[Any], rules: StateRules
) -> tuple[list[KeyEntry], list[list[Any]], bool] | None:
    """The keys, the columns of children and the cacheability of nodes of a registered type other
    than JAX's containers (a Module, a dataclass, a NamedTuple, an nnx State or Variable), or None
    where the members' keys differ. Each member is flattened once through JAX's registry, as
    `jax.tree.flatten` does; its keys are read too unless they follow from its type and aux data
    (`_registry.keys_follow_structure`: the rule that lets an index be cached under a treedef)
    and its aux data is made of the first member's objects. A state is left to the walk, which
    reads its fields."""
    if rules.state_name(kind) is not None:
        return None
    try:
        first = flatten_one_level(column[0])
    except TreeError:
        return None  # the walk raises it where it meets the node
    if first is None:
        return None
    pairs, aux = first
    keys = [key for key, _ in pairs]
    if any(isinstance(key, DictKey) and type(key.key) is not str for key in keys):
        return None  # equal keys of other types (`0`, `False`) would not be the same records
    if is_namedtuple_type(kind):  # JAX flattens a NamedTuple as a tuple of its fields
        return keys, [list(map(operator.itemgetter(i), column)) for i in range(len(keys))], True
    cacheable = cacheable_node(kind, keys, aux)
    follows = keys_follow_structure(kind, keys, aux)
    columns: list[list[Any]] = [[child] for _, child in pairs]
    appends = [found.append for found in columns]
    for member in itertools.islice(column, 1, None):  # one at a time: nothing piles up for the GC
        try:
            flat = REGISTRY.flatten_one_level(member)
            if flat is None:
                return None
            children: Iterable[Any] = flat[0]
            if not (follows and _same_objects(flat[1], aux)):
                # the keys are not those of the first member's treedef node: read them
                keyed = REGISTRY.flatten_one_level_with_keys(member)
                if keyed is None or list(map(_first, keyed[0])) != keys:
                    return None
                cacheable = cacheable and cacheable_node(kind, keys, keyed[1])
                children = map(_second, keyed[0])
            for append, child in zip(appends, children, strict=True):
                append(child)
        except (ValueError, TypeError):  # not flattenable, or another number of children
            return None
    return keys, columns, cacheable


_first, _second = operator.itemgetter(0), operator.itemgetter(1)


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


def _same_objects(a: Any, b: Any) -> bool:
    """Whether `a` and `b` are one object, or tuples (of tuples) of the same objects: aux data
    that a flatten builds afresh from a Module's static fields or a Variable's metadata. Then
    whatever holds for one holds for the other."""
    if a is b:
        return True
    if type(a) is not tuple or type(b) is not tuple or len(a) != len(b):
        return False
    return all(map(operator.is_, a, b)) or all(map(_same_items, a, b))


def _same_items(a: Any, b: Any) -> bool:
    return a is b or (
        type(a) is tuple and type(b) is tuple and len(a) == len(b) and all(map(operator.is_, a, b))
    )


def _joined(
    kind: type, keys: list[KeyEntry], children: list[Template], interned: Signatures, cacheable: bool
) -> Template:
    """The template of a node of type `kind` whose children, under `keys`, have the templates
    `children`."""
    cacheable = cacheable and all(child.cacheable for child in children)
    joined = Template([kind], [None], [""], [-1], [False], [0], [1], [len(children)], [0], [0], [], cacheable)
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
