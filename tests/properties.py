"""The properties of find/get/set/describe, as checks that both the hypothesis tests and the explicit
per-factory cases run on an optimizer state."""

from __future__ import annotations

import ast
import fnmatch
import itertools
import re
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.tree_util import DictKey, GetAttrKey, SequenceKey, keystr

import optree_inspect as oi

INJECT_TYPES = ("InjectStatefulHyperparamsState", "InjectHyperparamsState")
CONTAINERS = {"dict", "list", "tuple", "OrderedDict", "defaultdict", "NoneType", "State", "MaskedNode"}


def chains(tree: Any, chain: tuple[tuple[Any, Any], ...] = ()) -> Iterator[tuple[tuple[Any, Any], ...]]:
    """Every node in pre-order as its chain of `(edge key, node)` from the root (key `None`), found
    with `tree_flatten_with_path` alone: a reference walker independent of the library's."""
    chain = chain or ((None, tree),)
    yield chain
    children, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is not tree)
    if len(children) == 1 and children[0][0] == () and children[0][1] is tree:
        return  # a leaf
    for (key,), child in children:
        yield from chains(child, (*chain, (key, child)))


def nodes(tree: Any) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every `(path, node)` of `tree` in pre-order, by the reference walker."""
    for chain in chains(tree):
        yield tuple(key for key, _ in chain[1:]), chain[-1][1]


def leaf_paths_round_trip(state: Any) -> None:
    """Property 1: every leaf path and its keystr select that very leaf."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        assert oi.get(state, path) is leaf, keystr(path)
        assert oi.get(state, keystr(path)) is leaf, keystr(path)


def _value(node: Any) -> Any:
    """The array of an nnx Variable (on every flax version), or the node itself."""
    from optree_inspect._compat import is_nnx_variable_type, variable_value

    return variable_value(node) if is_nnx_variable_type(type(node)) else node


# Property 2: a slow reference matcher, straight from docs/queries.md ----------------------------------------


def _edge_text(key: Any) -> str:
    """docs/queries.md's "a dict key as text, a field name, a sequence index in decimal", derived from
    JAX's own keystr of the key rather than from the key types the package branches on."""
    text = keystr((key,))
    if text.startswith("."):
        return text[1:]
    inner = text[1:-1]
    flat = re.fullmatch(r"<flat index (\d+)>", inner)
    return flat.group(1) if flat else str(ast.literal_eval(inner))


def _component_matches(component: tuple[str, Any], key: Any, node: Any) -> bool:
    kind, value = component
    type_name = type(node).__name__
    if kind == "item":
        # docs/queries.md: "[0] is the key 0 (or np.int64(0)), never False or 0.0"; "['a']" is a str key.
        if isinstance(key, DictKey):
            same_kind = (isinstance(key.key, bool), isinstance(key.key, str), isinstance(key.key, float)) == (
                isinstance(value, bool),
                isinstance(value, str),
                isinstance(value, float),
            )
            return same_kind and key.key == value
        return (
            isinstance(key, SequenceKey)
            and isinstance(value, int)
            and not isinstance(value, bool)
            and key.idx == value
        )
    text = _edge_text(key) if key is not None else None
    names = [type_name] if text is None else [text, type_name]
    return any(fnmatch.fnmatchcase(name, value) for name in names)


def reference_find(state: Any, components: list[tuple[str, Any]]) -> list[tuple[Any, ...]]:
    """The paths a pattern selects, by brute force over every subsequence of every path."""
    enters = ("name", "hyperparams_states") in components
    found = []
    for chain in chains(state):
        bookkeeping = any(
            type(parent).__name__ in INJECT_TYPES and key == GetAttrKey("hyperparams_states")
            for (_, parent), (key, _) in itertools.pairwise(chain)
        )
        if bookkeeping and not enters:
            continue
        if _component_matches(components[-1], *chain[-1]) and _subsequence(components[:-1], list(chain[:-1])):
            found.append(tuple(key for key, _ in chain[1:]))
    return found


def _subsequence(components: list[tuple[str, Any]], chain: list[tuple[Any, Any]]) -> bool:
    if not components:
        return True
    for position, (key, node) in enumerate(chain):
        if _component_matches(components[0], key, node) and _subsequence(
            components[1:], chain[position + 1 :]
        ):
            return True
    return False


def pattern_text(components: list[tuple[str, Any]]) -> str:
    parts = []
    for kind, value in components:
        parts.append(f"[{value!r}]" if kind == "item" else value)
    return "".join(p if i == 0 or p.startswith("[") else "." + p for i, p in enumerate(parts))


def vocabulary(state: Any) -> list[tuple[str, Any]]:
    """Pattern components drawn from the state's own edges and types."""
    words: dict[tuple[str, Any], None] = {}
    for path, node in nodes(state):
        words[("name", type(node).__name__)] = None
        if path:
            key = path[-1]
            text = _edge_text(key)
            plain = text and text.strip() == text and not any(c in text for c in ".[]*?")
            if plain:
                words[("name", text)] = None
                words[("name", text[:2] + "*")] = None
            elif isinstance(key, DictKey) and isinstance(key.key, str | int):
                words[("item", key.key)] = None
    return list(words)


# Properties 3 and 4: set on injected hyperparameters ------------------------------------------


def injected(state: Any) -> list[tuple[tuple[Any, ...], bool]]:
    """`(path, scheduled)` of every injected hyperparameter, found by the reference walker."""
    found = []
    for path, node in nodes(state):
        if type(node).__name__ in INJECT_TYPES:
            schedules = getattr(node, "hyperparams_states", {}) or {}
            for name in node.hyperparams:
                found.append(((*path, GetAttrKey("hyperparams"), DictKey(name)), name in schedules))
    return found


def new_value(old: Any) -> Any:
    value = _value(old)
    if jnp.issubdtype(value.dtype, jnp.integer):
        return value + 1
    return value * 0.5 + 0.125


def other_targets(state: Any) -> list[tuple[tuple[Any, ...], bool]]:
    """Where a state holds no injected hyperparameter: its optax counters and its first float array,
    found by the reference walker, so that properties 3 and 4 check every state."""
    found: list[tuple[tuple[Any, ...], bool]] = []
    for path, node in nodes(state):
        key = path[-1] if path else None
        parent = oi.get(state, path[:-1]) if path else None
        if (
            isinstance(key, GetAttrKey)
            and type(parent).__module__.startswith("optax")
            and isinstance(node, jax.Array)
            and node.ndim == 0
            and jnp.issubdtype(node.dtype, jnp.integer)
        ):
            found.append((path, False))
    arrays = [
        (path, leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.ndim > 0
    ]
    if arrays and all(arrays[0][0] != path for path, _ in found):
        found.append((tuple(arrays[0][0]), False))
    return found


def set_hyperparameters(state: Any, step: Callable[[Any], Any], traces: list[int]) -> None:
    """Properties 3 and 4, for every injected hyperparameter of `state` (or, where it holds none,
    its counters and its first float array)."""
    treedef = jax.tree.structure(state)
    avals = [jax.typeof(x) for x in jax.tree.leaves(state)]
    leaves_before = jax.tree_util.tree_flatten_with_path(state)[0]
    step(state)  # some optimizers change dtypes at their first update: warm the step on these avals
    traced = len(traces)
    targets = injected(state)
    kept_after_update = bool(targets)
    targets = targets or other_targets(state)
    for path, scheduled in targets:
        if scheduled:
            try:
                oi.set(state, path, lambda x: x)
            except oi.ScheduledHyperparameterError as error:
                assert "schedule" in str(error)
            else:
                raise AssertionError(f"set on scheduled {keystr(path)} did not raise")
            continue
        old = oi.get(state, path)
        value = new_value(old)
        new = oi.set(state, path, value)
        stored = oi.get(new, path)
        stored_value = _value(stored)
        old_value = _value(old)
        expected = np.asarray(value).astype(old_value.dtype)
        assert np.array_equal(np.asarray(stored_value), expected), keystr(path)
        assert jax.tree.structure(new) == treedef
        assert [jax.typeof(x) for x in jax.tree.leaves(new)] == avals
        for (leaf_path, leaf), (_, new_leaf) in zip(
            leaves_before, jax.tree_util.tree_flatten_with_path(new)[0], strict=True
        ):
            if leaf_path[: len(path)] != path:
                assert new_leaf is leaf, keystr(leaf_path)
        after = step(new)
        if kept_after_update:  # a hyperparameter survives the update; a counter or a moment moves on
            kept = _value(oi.get(after, path))
            assert np.allclose(np.asarray(kept, np.float64), np.asarray(expected, np.float64)), keystr(path)
    assert all(
        new_leaf is leaf
        for (_, leaf), (_, new_leaf) in zip(
            leaves_before, jax.tree_util.tree_flatten_with_path(state)[0], strict=True
        )
    )
    assert len(traces) == traced, "a set made the next jitted update retrace"


# Property 5: describe ----------------------------------------------------------------------------


def describe_round_trips(state: Any) -> None:
    description = oi.describe(state)
    text = str(description)
    leaves = len(jax.tree.leaves(state))
    first = text.splitlines()[0]
    assert first.startswith(f"{type(state).__name__}: {leaves:,} lea"), first  # the root: its type, leaves
    assert len(text.splitlines()) <= oi._layout.MAX_LINES + 8  # and the optimizer's lines
    for row in description:
        assert oi.get(state, row.query) is oi.get(state, row.path), row
    for row in description:
        node = oi.get(state, row.path)
        if row.type in CONTAINERS and not row.folded and row.path:
            leaves = jax.tree.leaves(node, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
            inside_type = any(
                type(n).__name__ not in CONTAINERS and not jax.tree_util.all_leaves([n])
                for _, n in nodes(node)
            )
            assert inside_type or len(leaves) <= 16 or _inside_protected(row.path, state), row


def _inside_protected(path: tuple[Any, ...], state: Any) -> bool:
    return any(isinstance(k, GetAttrKey) and k.name in ("hyperparams", "hyperparams_states") for k in path)


# Property 6: jit agrees with eager ---------------------------------------------------------------


def jit_agrees(state: Any, queries: list[Any]) -> None:
    eager = [[m.path for m in oi.find(state, q)] for q in queries]
    seen: list[list[Any]] = []

    @jax.jit
    def inside(state: Any) -> Any:
        seen.extend([m.path for m in oi.find(state, q)] for q in queries)
        return [[m.value for m in oi.find(state, q)] for q in queries]

    values = inside(state)
    assert seen == eager
    for query, found in zip(queries, values, strict=True):
        for value, match in zip(found, oi.find(state, query), strict=True):
            assert jax.tree.structure(value) == jax.tree.structure(match.value)
