"""The plan of a description: which nodes `describe` shows, which it folds into one line, which
are `like` an earlier one, which siblings make a run, and the line budget.

The plan depends on the structure only, so it is memoised on the structure index; what each line
says of its leaves is `_rows`' job, how it looks `_render`'s.

>>> import jax.numpy as jnp, optree_inspect as oi
>>> from optree_inspect._cache import structure_index
>>> [line.kind for line in layout_of(structure_index({"mu": {"w": jnp.zeros(2), "b": jnp.zeros(2)},
...                                                    "nu": {"w": jnp.zeros(2), "b": jnp.zeros(2)}}))]
['node', 'node', 'node', 'node', 'like']
"""

from __future__ import annotations

import collections
from typing import Literal, NamedTuple

from jax.tree_util import GetAttrKey

from ._index import StructureIndex
from ._optax.states import protected_nodes

FOLD_LEAVES = 16
"""A params-shaped subtree with more leaves than this is one line."""
MAX_CHILDREN = 24
"""A node shows at most this many children; the rest are counted on one line."""
RUN_MIN = 4
"""This many consecutive siblings of one structure or more show the first, then one line for the rest."""
MAX_LINES = 120
"""A description has at most this many lines (and a line for what the optimizer could not match):
below the deepest level that fits, subtrees are folded."""

LineKind = Literal["node", "fold", "like", "run", "more"]


class Line(NamedTuple):
    """One line of the plan: a shown `node`, a `fold`ed subtree, a subtree `like` the node `other`,
    a `run` of siblings from `node` to `other` (like the sibling before `node`), or `more`: the
    `other` children of `node` left out."""

    node: int
    depth: int
    kind: LineKind
    other: int


def layout_of(index: StructureIndex) -> list[Line]:
    """The lines `describe` shows for this structure (memoised on the index)."""
    if index.memo.layout is None:
        index.memo.layout = _layout(index)
    return index.memo.layout


def line_entries(index: StructureIndex, lines: list[Line], number: int) -> list[tuple[int, slice]]:
    """The nodes whose values layout line `number` stands for, each with its leaves: a leaf's or
    an nnx Variable's row its node, a folded or `like` row its subtree, a run row each member, the
    "... N more children" row each child it leaves out, an expanded node's row none (its children's
    rows stand for its leaves). So every leaf is in exactly one line's entries."""
    line = lines[number]
    if line.kind == "run":
        nodes = run_members(index, line)
    elif line.kind == "more":
        previous = next(
            other for other in reversed(lines[:number]) if other.depth == line.depth and other.kind != "more"
        )
        last = previous.other if previous.kind == "run" else previous.node
        siblings = list(index.children(index.parents[last]))
        nodes = siblings[siblings.index(last) + 1 :]
    elif line.kind == "node" and has_children(index, line.node):
        nodes = []
    else:
        nodes = [line.node]
    return [
        (node, slice(index.leaf_starts[node], index.leaf_starts[node] + index.leaf_counts[node]))
        for node in nodes
        if index.leaf_counts[node]
    ]


def run_members(index: StructureIndex, line: Line) -> list[int]:
    """The siblings a run line stands for, `line.node` to `line.other`."""
    siblings = list(index.children(index.parents[line.node]))
    return siblings[siblings.index(line.node) : siblings.index(line.other) + 1]


def run_reference(index: StructureIndex, line: Line) -> int:
    """The sibling shown before a run, whose structure each member has."""
    siblings = list(index.children(index.parents[line.node]))
    return siblings[siblings.index(line.node) - 1]


def has_children(index: StructureIndex, node: int) -> bool:
    """Whether `node`'s line has lines under it when expanded (an nnx Variable is one line)."""
    return index.sizes[node] > 1 and not index.variables[node]


def _layout(index: StructureIndex) -> list[Line]:
    """Which nodes are shown and how, in pre-order; then cut to `MAX_LINES` by depth."""
    protected = protected_nodes(index)
    signatures = index.signatures
    holds_state = index.holds_state
    seen: dict[int, int] = {}
    lines: list[Line] = []
    stack: list[tuple[Line, bool]] = [(Line(0, 0, "node", 0), False)]
    while stack:
        line, in_region = stack.pop()
        node, depth = line.node, line.depth
        if line.kind in ("more", "run"):
            lines.append(line)
            continue
        # Only the root of a params-shaped region (a mu, nu, trace, params) folds or is "like".
        foldable = not in_region and node > 0 and node not in protected and not holds_state[node]
        if foldable and index.leaf_counts[node] > 1:
            signature = signatures[node]
            if signature in seen:
                lines.append(Line(node, depth, "like", seen[signature]))
                continue
            seen[signature] = node
        if foldable and index.leaf_counts[node] > FOLD_LEAVES:
            lines.append(Line(node, depth, "fold", 0))
            continue
        lines.append(line)
        if index.variables[node]:
            continue  # a Variable is one node: its value is shown on its line
        region = in_region or foldable
        entries = _sibling_runs(index, signatures, protected, _shown_children(index, node), depth + 1)
        if len(entries) > MAX_CHILDREN:
            hidden = sum(1 if e.kind == "node" else e.other - e.node + 1 for e in entries[MAX_CHILDREN:])
            entries = [*entries[:MAX_CHILDREN], Line(node, depth + 1, "more", hidden)]
        stack.extend((entry, region) for entry in reversed(entries))
    return _cut_to_budget(index, lines)


def _shown_children(index: StructureIndex, node: int) -> list[int]:
    """The children a description shows: all but private fields that hold no array (flax's
    `_pytree__state` bookkeeping in an nnx Object, say)."""
    return [
        child
        for child in index.children(node)
        if not (
            isinstance(index.keys[child], GetAttrKey)
            and index.texts[child].startswith("_")
            and index.leaf_counts[child] == 0
        )
    ]


def _sibling_runs(
    index: StructureIndex, signatures: list[int], protected: set[int], children: list[int], depth: int
) -> list[Line]:
    """The children as lines: the first of `RUN_MIN` or more consecutive siblings of one structure
    is shown, the others are one "run" line (from its `node` to `other`, like the first)."""
    entries: list[Line] = []
    start = 0
    # Leaves never join a run (their shapes differ); empty nodes (MaskedNode, EmptyState) run apart.
    kinds = [(signatures[c], index.is_leaf[c], index.leaf_counts[c] == 0) for c in children]
    while start < len(children):
        end = start + 1
        while end < len(children) and kinds[end] == kinds[start]:
            end += 1
        entries.append(Line(children[start], depth, "node", 0))
        first = children[start]
        if (
            end - start >= RUN_MIN
            and not index.is_leaf[first]
            and first not in protected
            and not index.variables[first]
        ):
            entries.append(Line(children[start + 1], depth, "run", children[end - 1]))
        else:
            entries.extend(Line(child, depth, "node", 0) for child in children[start + 1 : end])
        start = end
    return entries


def _cut_to_budget(index: StructureIndex, lines: list[Line]) -> list[Line]:
    """At most `MAX_LINES` lines: below the deepest level that fits, nodes are folded."""
    if len(lines) <= MAX_LINES:
        return lines
    per_depth = collections.Counter(line.depth for line in lines)
    shown, cut = 0, 0
    for depth in range(max(per_depth) + 1):
        if shown + per_depth[depth] > MAX_LINES and depth > 1:
            break
        shown += per_depth[depth]
        cut = depth
    return [
        line._replace(kind="fold")
        if line.depth == cut and line.kind == "node" and index.sizes[line.node] > 1
        else line
        for line in lines
        if line.depth <= cut
    ]
