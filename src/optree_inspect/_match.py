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
import re
from collections.abc import Sequence

from ._index import StructureIndex
from ._keys import Component, Item, item_matches


def component_matches(component: Component, index: StructureIndex, node: int) -> bool:
    """Whether `component` matches the edge into `node` (its key, or its type's name; for a
    restored state, the name of a state type it stands for)."""
    if isinstance(component, Item):
        return node > 0 and item_matches(component, index.keys[node])
    type_names = (index.types[node].__name__, *index.restored_names.get(node, ()))
    if component.is_glob:
        text = index.texts[node]
        return (node > 0 and fnmatch.fnmatchcase(text, component.text)) or any(
            fnmatch.fnmatchcase(name, component.text) for name in type_names
        )
    return (node > 0 and index.texts[node] == component.text) or component.text in type_names


def prefix_matches(
    index: StructureIndex,
    prefix: Sequence[Component],
    chain: Sequence[int],
    direct: Sequence[bool] = (),
    ends_at_last: bool = False,
) -> bool:
    """Whether `prefix` matches a subsequence of the edges into `chain`, a component marked
    `direct` right after the previous one's edge, and the last one at `chain[-1]` if
    `ends_at_last`. O(len(chain) * len(prefix))."""
    if not prefix:
        return not ends_at_last
    direct = direct or (False,) * len(prefix)
    before = [True] + [False] * len(prefix)  # [k]: the first k components match above this node
    previous = [False] * (len(prefix) + 1)  # [k]: ... with the k-th at the previous node
    for position, node in enumerate(chain):
        here = [False] * (len(prefix) + 1)
        for k, component in enumerate(prefix, start=1):
            ready = previous[k - 1] if direct[k - 1] and k > 1 else before[k - 1]
            here[k] = ready and component_matches(component, index, node)
        if here[-1] and (not ends_at_last or position == len(chain) - 1):
            return True
        before = [a or b for a, b in zip(before, here, strict=True)]
        previous = here
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
        by_type = [*index.by_type_name.get(component.text, []), *index.by_state_name.get(component.text, [])]
        return sorted({*by_text, *by_type}) if by_type else list(by_text)
    if _glob_min_length(component.text) > index.longest_name:
        return []
    matches = re.compile(fnmatch.translate(component.text)).match  # fnmatchcase, run by `filter` in C
    found: set[int] = set()
    for by_name in (index.by_text, index.by_type_name):
        found.update(by_name.nodes_of([name for name in filter(matches, by_name) if name]))
    for name in filter(matches, index.by_state_name):
        found.update(index.by_state_name[name])
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


def match(
    index: StructureIndex,
    components: Sequence[Component],
    enters_hidden: bool,
    direct: Sequence[bool] = (),
) -> list[int]:
    """The nodes that the pattern `components` selects, in pre-order; a component marked `direct`
    matches only children of the previous component's nodes.

    Outside hidden regions (optax's schedule bookkeeping) unless `enters_hidden` (a component
    names a hidden field, `StateRules.hidden_fields`).
    """
    if len(components) > index.max_depth + 1:
        return []  # each component needs an edge of its own on the path
    direct = direct or (False,) * len(components)
    selected = list(candidates(index, components[0]))
    for component, child in zip(components[1:], direct[1:], strict=True):
        if not selected:
            return []
        if child:
            above = set(selected)
            selected = [n for n in candidates(index, component) if index.parents[n] in above]
        else:
            selected = _strictly_below(index, selected, candidates(index, component))
    if enters_hidden or not index.has_hidden:
        return selected
    return [n for n in selected if not index.hidden[n]]
