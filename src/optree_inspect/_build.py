"""Building the structure index: one pre-order walk of a tree through JAX's registry.

Siblings whose subtrees have one structure are recorded in bulk from one member's records
(`_runs.template_of`); states, and nodes whose children differ, are visited alone. What is a state,
a hole or a hidden region comes from the registered rules (`_state_rules.active`), read once a build.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
from jax.tree_util import DictKey

from ._index import StructureIndex
from ._keycheck import PENDING
from ._keys import KeyEntry, edge_text
from ._registry import cacheable_node, flatten_one_level
from ._runs import LEAF_TYPE, Signatures, Template, interleaved, signature, template_of
from ._state_rules import DATA, TOP, StateRules, active, child_places, fields_of


def build_index(tree: Any, leaves: list[Any]) -> StructureIndex:
    """The structure index of `tree` (`leaves` are its `jax.tree.leaves`), under the rules
    registered now."""
    walk = _Walk(StructureIndex(), active())
    walk.run(tree)
    index = walk.index
    if walk.leaves_from_runs:  # a template records leaves as `LEAF_TYPE`: read their own types
        collections.deque(map(index.types.__setitem__, index.leaf_nodes, map(type, leaves)), maxlen=0)
    if index.cacheable:
        index.key_check = PENDING  # planned on the index's first reuse: a first call never needs it
    return index


_GROUPED = 4
"""Siblings of differing structures are split into runs of one structure from this many on."""
_MAX_PERIOD = 8
"""Siblings that alternate between at most this many structures (a Sequential's Linear, ReLU,
Linear, ReLU; a dict's `block0_attn`, `block0_mlp`, `block1_attn`) make one run."""
_BULK = 4
"""Fewer nodes than this in a run are visited one by one: recording them in bulk costs more."""


def _stretches(children: list[Any], places: list[int]) -> list[tuple[int, int, int]]:
    """The `(start, stop, period)` of each stretch of consecutive children that repeat `period`
    shapes in turn (a shape: a type, and keys or a length for JAX's containers, and a place), the
    longest first, for `template_of` to try on each of the `period` columns."""
    numbers: dict[Any, int] = {}
    shapes = [
        numbers.setdefault(
            (
                place,
                kind,
                frozenset(child) if kind is dict else len(child) if kind in (list, tuple) else None,
            ),
            len(numbers),
        )
        for child, place, kind in zip(children, places, map(type, children), strict=True)
    ]
    stretches, start, count = [], 0, len(shapes)
    while start < count:
        best_stop, best_period = start + 1, 1
        for period in range(1, min(_MAX_PERIOD, (count - start) // 2) + 1):
            if shapes[start + period] != shapes[start]:
                continue
            first, stop = shapes[start : start + period], start + period
            while stop + period <= count and shapes[stop : stop + period] == first:
                stop += period
            if stop - start >= 2 * period and stop > best_stop:
                best_stop, best_period = stop, period
        stretches.append((start, best_stop, best_period))
        start = best_stop
    return stretches


_Node = tuple[Any, KeyEntry | None, int, int, bool, int, bool]
"""A node to visit: the node, its key, parent and depth, whether it is in a hidden region, its
place (`_state_rules.TOP` ...) and whether it is in a data field of a restored state."""


class _Walk:
    """The state of one `build_index` walk: the index so far and what it has not recorded yet."""

    def __init__(self, index: StructureIndex, rules: StateRules) -> None:
        self.index = index
        self.rules = rules
        # bound once a build: the walk asks them for every node it visits alone
        self.state_name = rules.state_name
        self.is_hole_type = rules.is_hole_type
        self.restored_names = rules.restored_names
        self.hidden_fields = rules.hidden_fields
        self.interned: Signatures = {}
        self.leaf_signature = signature(self.interned, ())
        self.leaves_seen = 0
        self.leaves_from_runs = False
        self.dict_keys: dict[tuple[str, ...], list[KeyEntry]] = {}
        self.one_run: dict[int, int] = {}
        """The nodes whose children are one run, with its template's size."""

    def run(self, tree: Any) -> None:
        stack: list[tuple[str, Any]] = [("node", (tree, None, -1, 0, False, TOP, False))]
        while stack:
            what, frame = stack.pop()
            if what == "node":
                self.visit(frame, stack)
            elif what == "run":
                self.record_run(*frame)
            else:
                self.close(*frame)

    def visit(self, frame: _Node, stack: list[tuple[str, Any]]) -> None:
        node, key, parent, depth, hidden, place, in_data = frame
        index = self.index
        number = len(index.keys)
        kind = type(node)
        name = self.state_name(kind)
        restored = None
        if name is None and place != DATA and kind is not list and kind is not tuple:
            fields = fields_of(node)
            restored = self.restored_names(fields, place) if fields else None
            if restored is not None:
                name = restored[0]
        plain = kind is dict and set(map(type, node)) <= {str}
        keys, texts, children, aux = self.children(node, plain)
        is_leaf = children is None
        hole = (node is None and in_data) or self.is_hole_type(kind)
        index.keys.append(key)
        index.texts.append(edge_text(key))
        index.types.append(kind)
        index.parents.append(parent)
        index.is_leaf.append(is_leaf)
        index.leaf_counts.append(1)
        index.sizes.append(1)
        index.arities.append(0 if children is None else len(children))
        index.depths.append(depth)
        index.signatures.append(self.leaf_signature)
        index.hidden.append(hidden)
        index.state_names.append(name)
        if hole:
            index.holes.append(number)
        if children is None:
            self.leaves_seen += 1
            return
        stack.append(("close", (number, self.leaves_seen, hole)))
        if index.cacheable and not plain:  # a dict of str keys always is
            index.cacheable = cacheable_node(kind, keys, aux)
        if name is None:
            rules = self.rules
            template = None
            if len(children) > 1:
                template = template_of(children, place, in_data, self.interned, rules)
            if template is not None:
                stack.append(("run", (template, keys, texts, number, depth + 1, hidden)))
                self.one_run[number] = template.size
                return
            places = [place] * len(children)
            if place == TOP:
                places = child_places(rules, None, place, list(zip(keys, children, strict=True)))
            whole = [(0, len(children), 1)]
            stretches = _stretches(children, places) if len(children) >= _GROUPED else whole
            for start, stop, period in reversed(stretches):
                template = None
                if stop - start > period and stretches != whole:
                    template = self.stretch_template(children, places, in_data, start, stop, period)
                if template is not None:
                    run = (template, keys[start:stop], texts[start:stop], number, depth + 1, hidden)
                    stack.append(("run", run))
                    continue
                for position in reversed(range(start, stop)):
                    child = (children[position], keys[position], number, depth + 1, hidden)
                    stack.append(("node", (*child, places[position], in_data)))
            return
        if restored is not None:
            index.restored_names[number] = restored
        for alias in restored or (name,):
            index.by_state_name.setdefault(alias, []).append(number)
        places = child_places(self.rules, name, place, list(zip(keys, children, strict=True)))
        hidden_fields, hides = self.hidden_fields, self.rules.hides
        for position in reversed(range(len(children))):
            child_key, child_place = keys[position], places[position]
            # a field's name is its edge text: only a field of `hidden_fields` can start a region
            child_hidden = hidden or (texts[position] in hidden_fields and hides(name, child_key))
            child_in_data = restored is not None and child_place == DATA
            child = (children[position], child_key, number, depth + 1, child_hidden)
            stack.append(("node", (*child, child_place, child_in_data)))

    def stretch_template(
        self, children: list[Any], places: list[int], in_data: bool, start: int, stop: int, period: int
    ) -> Template | None:
        """The template of the siblings `children[start:stop]`, which repeat `period` shapes in
        turn, or None where their structures differ or they are too few to gain from a run."""
        templates = []
        for first in range(start, start + period):
            column = children[first:stop:period]
            template = template_of(column, places[first], in_data, self.interned, self.rules)
            if template is None:
                return None
            templates.append(template)
        template = templates[0] if period == 1 else interleaved(templates)
        return template if template.size * (stop - start) // period >= _BULK else None

    def children(self, node: Any, plain: bool) -> tuple[list[KeyEntry], list[str], list[Any] | None, Any]:
        """The keys, texts and children of `node` in flatten order (children None for a leaf), and
        its aux data; for a `plain` node (a dict of str keys) without a Python step for each child."""
        if plain:
            names = sorted(node)
            keys = self.dict_keys.get(tuple(names))
            if keys is None:
                keys = self.dict_keys[tuple(names)] = list(map(DictKey, names))
            return keys, names, list(map(node.__getitem__, names)), names
        flat = flatten_one_level(node)
        if flat is None:
            return [], [], None, None
        keys = [key for key, _ in flat[0]]
        return keys, list(map(edge_text, keys)), [child for _, child in flat[0]], flat[1]

    def record_run(
        self,
        template: Template,
        keys: list[KeyEntry],
        texts: list[str],
        parent: int,
        depth: int,
        hidden: bool,
    ) -> None:
        """Record siblings whose subtrees all have `template`'s records, with list and NumPy
        operations (no Python step for each node)."""
        index, size, roots = self.index, template.size, template.roots
        count, start = len(keys) // len(roots), len(index.keys)
        index.keys.extend(template.keys * count)
        index.texts.extend(template.texts * count)
        for position, root in enumerate(roots):  # each member's own keys, at its roots
            index.keys[start + root :: size] = keys[position :: len(roots)]
            index.texts[start + root :: size] = texts[position :: len(roots)]
        index.types.extend(template.types * count)
        offsets = np.arange(start, start + count * size, size)[:, None]
        parents = offsets + np.asarray(template.parents)[None, :]
        parents[:, list(roots)] = parent
        index.parents.extend(parents.ravel().tolist())
        index.is_leaf.extend(template.is_leaf * count)
        index.leaf_counts.extend(template.leaf_counts * count)
        index.sizes.extend(template.sizes * count)
        index.arities.extend(template.arities * count)
        index.depths.extend([depth + d for d in template.depths] * count)
        index.signatures.extend(template.signatures * count)
        index.hidden.extend([hidden] * (count * size))
        index.state_names.extend([None] * (count * size))
        if template.holes:
            index.holes.extend((offsets + np.asarray(template.holes)[None, :]).ravel().tolist())
        self.leaves_seen += template.leaf_count * count
        index.cacheable = index.cacheable and template.cacheable
        self.leaves_from_runs = self.leaves_from_runs or LEAF_TYPE in template.types

    def close(self, number: int, leaves_before: int, hole: bool) -> None:
        """Sizes, leaf count and signature of `number`, now that its subtree is recorded."""
        index = self.index
        index.sizes[number] = len(index.keys) - number
        index.leaf_counts[number] = self.leaves_seen - leaves_before
        structure: tuple[Any, ...] = ()
        if not hole:
            step = self.one_run.pop(number, 0)
            if step:  # the children are one run: every `step`-th node
                keys = tuple(index.keys[number + 1 :: step])
                signatures = tuple(index.signatures[number + 1 :: step])
            else:
                children = list(index.children(number))
                keys = tuple(index.keys[c] for c in children)
                signatures = tuple(index.signatures[c] for c in children)
            structure = (index.types[number], keys, signatures)
        index.signatures[number] = signature(self.interned, structure)
