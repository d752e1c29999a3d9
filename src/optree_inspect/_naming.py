"""Naming a node: the shortest pattern that selects it alone, for rows, hyperparameter keys and
the candidates an ambiguous query lists."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from jax.tree_util import DictKey, keystr

from ._keys import Component, Item, Name
from ._match import match
from ._optax.names import SCHEDULE_BOOKKEEPING
from ._query import Attached, PatternQuery
from ._tree import CONTAINER_TYPE_NAMES, StructureIndex

_MAX_COMPONENTS = 4


def _name_component(text: str) -> bool:
    return bool(text) and text.strip() == text and not any(c in text for c in ".[]*?")


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
    for size in range(_MAX_COMPONENTS):
        found = []
        for last_text, last in _options(index, node):
            for prefix in itertools.combinations(ancestor_options, size):
                parts = [*(t for t, _ in prefix), last_text]
                if parts[0].startswith("["):
                    continue
                components = [*(c for _, c in prefix), last]
                enters = SCHEDULE_BOOKKEEPING in parts
                if index.in_bookkeeping[node] and not enters:
                    continue
                if match(index, components, enters) == [node]:
                    found.append(_join(parts))
        if found:
            return min(found, key=lambda q: (sum(p.isdigit() for p in q.split(".")), len(q), q))
    return None


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
