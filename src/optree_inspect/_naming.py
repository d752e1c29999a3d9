"""Naming a node: the shortest pattern that selects it alone, for rows, hyperparameter keys and
the candidates an ambiguous query lists."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from jax.tree_util import DictKey, keystr

from ._index import StructureIndex
from ._keys import Component, Item, Name
from ._match import match
from ._query import Attached, PatternQuery
from ._registry import CONTAINER_TYPE_NAMES
from ._state_rules import active

_MAX_COMPONENTS = 4


def _name_component(text: str) -> bool:
    return bool(text) and text.strip() == text and not any(c in text for c in ".[]*?>")


def _options(index: StructureIndex, node: int) -> list[tuple[str, Component]]:
    """The pattern components that match the edge into `node`: its key, then its type's name."""
    options: list[tuple[str, Component]] = []
    key = index.keys[node]
    text = index.texts[node]
    if node > 0 and _name_component(text):
        options.append((text, Name(text, False)))
    elif isinstance(key, DictKey):
        options.append((f"[{key.key!r}]", Item(key.key)))
    type_name = index.types[node].__name__
    if node in index.restored_names:
        type_name = index.restored_names[node][0]
    if type_name not in CONTAINER_TYPE_NAMES and not index.is_leaf[node] and type_name != text:
        options.append((type_name, Name(type_name, False)))
    return options


def _join(parts: Sequence[str]) -> str:
    return "".join(p if i == 0 or p.startswith("[") else "." + p for i, p in enumerate(parts))


def shortest_query(index: StructureIndex, node: int) -> str:
    """The shortest pattern that selects `node` alone (fewest components, then fewest indices and
    characters), or its keystr when no pattern of up to four components does."""
    cached = index.memo.short_queries.get(node)
    if cached is not None:
        return cached
    best = _search_shortest(index, node)
    if best is None:
        best = keystr(index.path(node))
    index.memo.short_queries[node] = best
    return best


def _search_shortest(index: StructureIndex, node: int) -> str | None:
    if node == 0:
        return None
    ancestor_options = [opt for a in index.ancestors(node) for opt in _options(index, a)]
    hidden_fields = active().hidden_fields
    for size in range(_MAX_COMPONENTS):
        found = []
        for last_text, last in _options(index, node):
            for prefix in itertools.combinations(ancestor_options, size):
                parts = [*(t for t, _ in prefix), last_text]
                if parts[0].startswith("["):
                    continue
                components = [*(c for _, c in prefix), last]
                enters = not hidden_fields.isdisjoint(parts)
                if index.hidden[node] and not enters:
                    continue
                if match(index, components, enters) == [node]:
                    found.append(_join(parts))
        if found:
            return min(found, key=lambda q: (sum(p.isdigit() for p in q.split(".")), len(q), q))
    return None


def stable_query(index: StructureIndex, node: int) -> str:
    """A pattern that selects `node` alone by names where it can, for keys that must survive
    wrapping the optimizer (`MultiSteps`, a `TrainState`, `partition`): fewest positional
    components (chain indices), then fewest components, fewest wrapper fields (`inner_state`:
    `ScaleByAdamState.count` rather than `inner_state.count`) and fewest characters. A component may follow
    `>` to match the very next edge: `InjectStatefulHyperparamsState>count` is the inject state's
    own counter, not its inner optimizer's. The keystr when no pattern of up to four components
    selects it alone.
    """
    memo_key = ("stable query", node)
    cached = index.memo.results.get(memo_key)
    if cached is None:
        cached = _search_stable(index, node) or keystr(index.path(node))
        index.memo.results[memo_key] = cached
    return cached


def _search_stable(index: StructureIndex, node: int) -> str | None:
    if node == 0:
        return None
    ancestor_options = [(a, *opt) for a in index.ancestors(node) for opt in _options(index, a)]
    enters_needed = index.hidden[node]
    rules = active()
    best: tuple[int, int, int, int, str] | None = None
    for size in range(_MAX_COMPONENTS):
        for last_text, last in _options(index, node):
            for prefix in itertools.combinations(ancestor_options, size):
                chosen = [*prefix, (node, last_text, last)]
                texts = [text for _, text, _ in chosen]
                enters = not rules.hidden_fields.isdisjoint(texts)
                if texts[0].startswith("[") or (enters_needed and not enters):
                    continue
                components = [component for _, _, component in chosen]
                adjacent = [
                    i > 0 and index.parents[chosen[i][0]] == chosen[i - 1][0] for i in range(len(chosen))
                ]
                for direct in itertools.product(*[(False, True) if a else (False,) for a in adjacent]):
                    if match(index, components, enters, direct) != [node]:
                        continue
                    text = "".join(
                        t if i == 0 or (t.startswith("[") and not d) else (">" if d else ".") + t
                        for i, (t, d) in enumerate(zip(texts, direct, strict=True))
                    )
                    wrapper_fields = sum(t in rules.wrapper_fields for t in texts)
                    rank = (sum(_positional(c) for c in components), size, wrapper_fields, len(text), text)
                    best = rank if best is None or rank < best else best
        if best is not None and best[0] == 0:
            break
    return None if best is None else best[-1]


def _positional(component: Component) -> bool:
    """A component that names a position (a chain index), which wrapping may shift."""
    if isinstance(component, Item):
        return isinstance(component.key, int)
    return component.text.isdigit()


def attached_query(tree: Any, index: StructureIndex, constant: Attached, attached: Sequence[Attached]) -> str:
    """The shortest pattern that selects an attached value (an optimizer-held hyperparameter) alone,
    among the nodes of the tree and the other attached values, or its keystr."""
    node = index.number_of(constant.node_path)
    if node is None:
        return keystr(constant.path)
    options = [opt for a in [*index.ancestors(node), node] for opt in _options(index, a)]
    for size in range(_MAX_COMPONENTS):
        found = []
        for prefix in itertools.combinations(options, size):
            parts = [*(t for t, _ in prefix), constant.name]
            if parts[0].startswith("["):
                continue
            pattern = PatternQuery((*(c for _, c in prefix), Name(constant.name, False)), _join(parts))
            selected = [other for other in attached if pattern.selects_attached(tree, other)]
            if not pattern.nodes(index) and len(selected) == 1 and selected[0] is constant:
                found.append(pattern.text)
        if found:
            return min(found, key=lambda q: (sum(p.isdigit() for p in q.split(".")), len(q), q))
    return keystr(constant.path)
