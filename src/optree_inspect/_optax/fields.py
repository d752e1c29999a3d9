"""Optax states by their fields, typed or restored without their types.

A checkpoint restored without a target (orbax's `restore(path)`) gives an optax state back as
plain containers: each NamedTuple state is a dict of its fields, each tuple a list, `EmptyState`
and `MaskedNode` are `None`. `state_name` recognises such a dict by its keys, so that every rule
about optax states (injected hyperparameters, schedules, counters, what `describe` folds) holds
for the restored form as for the live one.

A restored dict is read as a state only where a state can be: outside every state, or inside a
state's field that holds inner states (`STATE_FIELDS`); never inside a moment such as `mu`, whose
keys are the user's parameter names (see `restored_state_name` for the rest of the rule).

`OPTAX_RULES` says all this to the core (`_state_rules.StateRules`); `_optax/__init__.py` registers
it, so that the structure index knows optax's states.

>>> state_name({"count": 0, "mu": {}, "nu": {}}, OUTSIDE)
'ScaleByAdamState'
"""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Mapping
from typing import Any

import jax
from jax.tree_util import DictKey, GetAttrKey, SequenceKey

from .._keys import KeyEntry, field_name
from .._leaf import value_of
from .._state_rules import DATA, NESTED, TOP, StateRules, child_places, fields_of
from .names import COUNTER_NAMES, INJECT_STATE_NAMES, SCHEDULE_BOOKKEEPING, is_optax_state_type

STATE_FIELDS = frozenset(
    {
        "inner_state",
        "inner_states",
        "inner_opt_state",
        "fast_state",
        "base_optimizer_state",
        "opt_state",
        "adv_state",
        "hessian_fn_state",
        "measure_states",
        SCHEDULE_BOOKKEEPING,
    }
)
"""Fields of optax's wrapper states that hold inner optax states (checked against optax's wrappers
by `tests/test_restored.py`)."""


MAY_BE_LEFT_OUT = STATE_FIELDS | {"skip_state"}
"""Fields that may hold an empty state, which `nnx.state` leaves out (`MultiStepsState.skip_state`,
an `inner_state` of stateless transformations, `hyperparams_states` without schedules): a restored
state may lack them."""


def is_state_type(kind: type) -> bool:
    """Whether nodes of type `kind` are optimizer state, never params-shaped: optax's state types,
    but not `MaskedNode`, which stands in params-shaped trees for a parameter that is masked out."""
    return typed_state_name(kind) is not None


_TYPE_NAMES: dict[type, str | None] = {}


def typed_state_name(kind: type) -> str | None:
    """The name of `kind` if it is an optax state type (not `MaskedNode`), else None. Cheap, as
    the structure index asks for every node: only optax's own (module-level) types are memoised."""
    if not kind.__module__.startswith("optax"):
        return None
    try:
        return _TYPE_NAMES[kind]
    except KeyError:
        name = kind.__name__ if is_optax_state_type(kind) and kind.__name__ != "MaskedNode" else None
        _TYPE_NAMES[kind] = name
        return name


def is_masked_node_type(kind: type) -> bool:
    """optax's `MaskedNode`: a masked-out parameter in a params-shaped tree."""
    return kind.__name__ == "MaskedNode" and is_optax_state_type(kind)


@functools.cache
def state_field_sets() -> dict[frozenset[str], tuple[str, ...]]:
    """The field names of each optax state type (a `...State` NamedTuple with fields), mapped to
    the names of the types with those fields, in name order (`ScaleByAdamState` and
    `ScaleByBeliefState` share theirs); also each such set without fields of `MAY_BE_LEFT_OUT`,
    where two or more remain and no state type has exactly those."""
    import optax
    import optax.contrib  # noqa: F401

    found: dict[frozenset[str], set[str]] = {}
    for module_name, module in sorted(sys.modules.items()):
        if module_name.split(".")[0] != "optax" or module is None:
            continue
        for value in vars(module).values():
            fields_of = getattr(value, "_fields", None) if isinstance(value, type) else None
            if fields_of and is_state_type(value):
                fields, name = frozenset(fields_of), value.__name__
                if name.endswith("State"):
                    found.setdefault(fields, set()).add(name)
    exact = {fields: tuple(sorted(names)) for fields, names in found.items()}
    # the same states without fields that `nnx.state` may leave out, where at least two remain
    reduced: dict[frozenset[str], set[str]] = {}
    for fields, names in exact.items():
        optional = sorted(fields & MAY_BE_LEFT_OUT)
        for size in range(1, len(optional) + 1):
            for left_out in itertools.combinations(optional, size):
                kept = fields - set(left_out)
                if len(kept) >= 2 and kept not in exact:
                    reduced.setdefault(kept, set()).update(names)
    return {**exact, **{fields: tuple(sorted(names)) for fields, names in reduced.items()}}


def _is_leaf(value: Any) -> bool:
    """A leaf, or an nnx Variable holding one (`nnx.state` wraps every array of a state in one),
    typed or as orbax restores it without a target (`{"value": leaf}`)."""
    return jax.tree_util.all_leaves([value_of(value)])


NOWHERE, OUTSIDE, INSIDE = DATA, TOP, NESTED
"""Where a node is, for recognising restored states: inside a state's field that holds no state
(`mu`), outside every state, or inside a state's field that holds inner states (`inner_state`)."""


def restored_state_name(node: Any, where: int) -> str | None:
    """The optax state type a plain dict stands for, by its keys, or None; the first by name
    where several types have those fields (`restored_names_at` gives them all).

    The keys must be exactly one state type's fields, and a counter among them a leaf. Outside
    every state, a type of one field (`{"count": ...}` of `ScaleByScheduleState`) is too weak a
    sign, and a dict is read as one only beside a state of several fields or `None` (a restored
    chain). Only the structure decides (never a dtype or a value), so that an index cached under
    the treedef and leaf types holds for every tree of that structure.
    """
    names = restored_names_at(node, where)
    return None if names is None else names[0]


def restored_names_at(node: dict[str, Any], place: int) -> tuple[str, ...] | None:
    """Every optax state type the plain dict `node` stands for, at `place` (`where`), first by name; None
    where it stands for none (`restored_state_name`)."""
    if place == NOWHERE or type(node) is not dict or not node or not all(type(k) is str for k in node):
        return None
    names = state_field_sets().get(frozenset(node))
    if names is None:
        return None
    if place == OUTSIDE and len(node) < 2 and not _wraps_state(node):
        return None
    if any(key in COUNTER_NAMES and not _is_leaf(value) for key, value in node.items()):
        return None
    return names


def state_name(node: Any, where: int) -> str | None:
    """The optax state type that `node` is, or stands for when restored; None for anything else.

    `where` says where the node is (`NOWHERE`, `OUTSIDE`, `INSIDE`; see the module docstring).
    """
    typed = typed_state_name(type(node))
    if typed is not None or type(node) in (list, tuple):
        return typed
    fields = fields_of(node)
    return None if not fields else restored_state_name(fields, where)


def children_where(name: str | None, where: int, pairs: list[tuple[Any, Any]]) -> list[int]:
    """Where each child of a node (the state `name`, or not a state) is, given the node's `where`."""
    return child_places(OPTAX_RULES, name, where, pairs)


def child_where(node: Any, name: str | None, where: int, key: Any) -> int:
    """Where the child of `node` under `key` is: `children_where` for one child, looking at the
    siblings only outside every state."""
    if name is not None:
        return INSIDE if field_name(key) in STATE_FIELDS else NOWHERE
    if where != OUTSIDE:
        return where
    flat = jax.tree_util.default_registry.flatten_one_level(node)
    return INSIDE if flat is not None and any(_beside_state(child) for child in flat[0]) else OUTSIDE


def _wraps_state(node: dict[str, Any], depth: int = 0) -> bool:
    """A one-field dict whose field holds inner states and holds one (`{"inner_state": ...}` of
    `MaskedState`): as good a sign as several fields."""
    [(key, value)] = node.items()
    if key not in STATE_FIELDS or depth > 4:
        return False
    if _beside_state(value):
        return True
    children = value.values() if type(value) is dict else value if type(value) in (list, tuple) else ()
    return any(
        _beside_state(child) or (type(child) is dict and len(child) == 1 and _wraps_state(child, depth + 1))
        for child in children
    )


def _beside_state(child: Any) -> bool:
    """A child that makes its container a chain of states: a state of several fields, or `None`."""
    return child is None or is_state_type(type(child)) or restored_names_at(child, OUTSIDE) is not None


def position_of(key: Any) -> int | None:
    """The chain position a dict key stands for: an int, or a str that spells one (as orbax
    restores it); None for any other key.

    >>> position_of(1), position_of("1"), position_of("mu")
    (1, 1, None)
    """
    if type(key) is int:
        return key
    return int(key) if type(key) is str and key.isdecimal() else None


def _is_position(key: KeyEntry) -> bool:
    """A chain position: a sequence index, or a dict key that is an int or spells one."""
    return isinstance(key, SequenceKey) or (isinstance(key, DictKey) and position_of(key.key) is not None)


def field_key(node: Any, name: str) -> DictKey | GetAttrKey:
    """The key of the field `name` of a state: an attribute of a NamedTuple, a key of a mapping
    (a dict, or a library's dict-like node such as `nnx.State`)."""
    return DictKey(name) if isinstance(node, Mapping) else GetAttrKey(name)


def field_of(node: Any, name: str, default: Any = None) -> Any:
    """The field `name` of a state, typed or restored."""
    if isinstance(node, Mapping):
        return node.get(name, default)
    return getattr(node, name, default)


def is_inject_state_name(name: str | None) -> bool:
    return name in INJECT_STATE_NAMES


class OptaxRules(StateRules):
    """optax's states, as the core asks about them (`_state_rules.StateRules`)."""

    hidden_fields = frozenset({SCHEDULE_BOOKKEEPING})
    wrapper_fields = STATE_FIELDS
    # the functions themselves, not methods that call them: the index asks for every node it visits
    state_name = staticmethod(typed_state_name)
    is_hole_type = staticmethod(is_masked_node_type)
    restored_names = staticmethod(restored_names_at)

    def may_be_restored(self, keys: frozenset[str]) -> bool:
        return keys in state_field_sets()

    def is_chain(self, pairs: list[tuple[KeyEntry, Any]]) -> bool:
        if any(_beside_state(child) for _, child in pairs):
            return True
        # `nnx.state` makes a chain's tuple a dict of positions without its empty states (a list
        # of orbax's keeps them, as None)
        return (
            bool(pairs)
            and all(isinstance(key, DictKey) and _is_position(key) for key, _ in pairs)
            and any(type(child) is dict and restored_names_at(child, NESTED) for _, child in pairs)
        )

    def hides(self, name: str, key: KeyEntry) -> bool:
        return is_inject_state_name(name) and field_name(key) == SCHEDULE_BOOKKEEPING


OPTAX_RULES = OptaxRules()
