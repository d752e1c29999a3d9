"""Matching a pattern against a structure index, in time near-linear in the pattern and the tree.

A pattern `c1.c2...ck` selects the nodes that match `ck` and have strict ancestors matching
`c1 ... c(k-1)` in order. In pre-order, the strict descendants of a node `n` are the numbers in
`(n, n + size[n])`, so the nodes matching a prefix form a set of disjoint ranges, and the nodes
matching one more component are found by bisecting the sorted candidates of that component into
those ranges: each component costs O((its candidates + the previous matches) log n), never the
number of candidates times the depth.
"""

from __future__ import annotations

import bisect
import fnmatch
from collections.abc import Sequence

from ._keys import Component, Item, item_matches
from ._tree import StructureIndex


def component_matches(component: Component, index: StructureIndex, node: int) -> bool:
    """Whether `component` matches the edge into `node` (its key, or its type's name)."""
    if isinstance(component, Item):
        return node > 0 and item_matches(component, index.keys[node])
    type_name = index.types[node].__name__
    if component.is_glob:
        text = index.texts[node]
        return (node > 0 and fnmatch.fnmatchcase(text, component.text)) or fnmatch.fnmatchcase(
            type_name, component.text
        )
    return (node > 0 and index.texts[node] == component.text) or type_name == component.text


def prefix_matches(index: StructureIndex, prefix: Sequence[Component], chain: Sequence[int]) -> bool:
    """Whether `prefix` matches a subsequence of the edges into `chain` (greedy is optimal)."""
    if not prefix:
        return True
    position = 0
    for ancestor in chain:
        if component_matches(prefix[position], index, ancestor):
            position += 1
            if position == len(prefix):
                return True
    return False


def _glob_min_length(pattern: str) -> int:
    """The fewest characters a text matching the fnmatch `pattern` has."""
    length, position = 0, 0
    while position < len(pattern):
        char = pattern[position]
        if char == "[":
            close = pattern.find("]", position + 2)
            if close > 0:
                position = close
        if char != "*":
            length += 1
        position += 1
    return length


def candidates(index: StructureIndex, component: Component) -> list[int]:
    """The nodes whose edge `component` matches, in pre-order (memoised on the index)."""
    memo_key = ("candidates", component)
    found = index.memo.results.get(memo_key)
    if found is None:
        found = _candidates(index, component)
        index.memo.results[memo_key] = found
    return found


def _candidates(index: StructureIndex, component: Component) -> list[int]:
    if isinstance(component, Item):
        return [
            n for n in index.by_text.get(str(component.key), []) if component_matches(component, index, n)
        ]
    if not component.is_glob:
        by_text = index.by_text.get(component.text, [])
        by_type = index.by_type_name.get(component.text, [])
        return sorted({*by_text, *by_type}) if by_type else list(by_text)
    if _glob_min_length(component.text) > index.longest_name:
        return []
    found: set[int] = set()
    for text, nodes in index.by_text.items():
        if text and fnmatch.fnmatchcase(text, component.text):
            found.update(nodes)
    for name, nodes in index.by_type_name.items():
        if fnmatch.fnmatchcase(name, component.text):
            found.update(nodes)
    return sorted(found)


def _strictly_below(index: StructureIndex, above: list[int], nodes: list[int]) -> list[int]:
    """The members of `nodes` (sorted) that are strict descendants of some member of `above`."""
    starts: list[int] = []
    ends: list[int] = []
    for node in above:
        if starts and node < ends[-1]:
            continue  # nested in the previous range
        starts.append(node + 1)
        ends.append(node + index.sizes[node])
    if len(starts) < len(nodes):
        found: list[int] = []
        for start, end in zip(starts, ends, strict=True):
            found.extend(nodes[bisect.bisect_left(nodes, start) : bisect.bisect_left(nodes, end)])
        return found
    result = []
    for node in nodes:
        number = bisect.bisect_right(starts, node) - 1
        if number >= 0 and node < ends[number]:
            result.append(node)
    return result


def match(index: StructureIndex, components: Sequence[Component], enters_bookkeeping: bool) -> list[int]:
    """The nodes that the pattern `components` selects, in pre-order.

    Outside schedule bookkeeping unless `enters_bookkeeping` (a component names it).
    """
    if len(components) > index.max_depth + 1:
        return []  # each component needs an edge of its own on the path
    selected = list(candidates(index, components[0]))
    for component in components[1:]:
        if not selected:
            return []
        selected = _strictly_below(index, selected, candidates(index, component))
    if enters_bookkeeping or not index.has_bookkeeping:
        return selected
    return [n for n in selected if not index.in_bookkeeping[n]]
