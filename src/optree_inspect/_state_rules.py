"""What a library says about its state nodes: the one way library knowledge reaches the core.

The core (paths, the structure index and its cache, matching, naming) knows no optimizer library.
A library's states (optax's `ScaleByAdamState`, a flax or equinox optimizer's) become states to it
by a `StateRules` registered once, on import of the library's layer (`_optax/__init__.py`
registers optax's, `_optax.fields.OPTAX_RULES`). For each node the index then records the state
type it is, or stands for when a checkpoint was restored without its types; patterns match those
names as they match a type's, a region a state hides (optax's schedule bookkeeping) is entered
only by a pattern that names it, and a masked placeholder is a hole.

A library whose states are NamedTuples of one module needs one method (`tests/test_state_rules.py`
adds a restored form and a hidden field):

>>> class MyRules(StateRules):
...     def state_name(self, kind: type) -> str | None:
...         return kind.__name__ if kind.__module__ == "my_optimizers" else None
>>> rules = MyRules()
>>> register(rules)
>>> unregister(rules)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._keys import KeyEntry, field_name
from ._registry import is_namedtuple_type

DATA, TOP, NESTED = 0, 1, 2
"""Where a node is, for recognising states restored without their types (as plain dicts): in a
state's field that holds data (a moment, keyed by the user's parameter names, where no state is),
outside every state (the root), or in a state's field that holds inner states (`wrapper_fields`)."""

Pairs = list[tuple[KeyEntry, Any]]


class StateRules:
    """What a library says about its state nodes. Every rule defaults to "not a state": override
    those the library needs. Rules see types, keys and plain containers only (never a leaf's value),
    so that an index cached under a structure holds for every tree of that structure."""

    hidden_fields: frozenset[str] = frozenset()
    """Fields that start a region a pattern enters only when one of its names is the field's
    (optax: `hyperparams_states`, its schedules' own states); `hides` says which state's field."""
    wrapper_fields: frozenset[str] = frozenset()
    """Fields that hold inner states (optax: `inner_state`): a restored state may be found there,
    and naming prefers a state's type name to them."""

    def state_name(self, kind: type) -> str | None:
        """The state type name of nodes of type `kind`, or None when they are not states. Asked for
        every node the index visits alone: make it cheap (memoise by type)."""
        return None

    def is_hole_type(self, kind: type) -> bool:
        """Whether nodes of type `kind` stand for a masked-out parameter (optax's `MaskedNode`)."""
        return False

    def restored_names(self, node: dict[str, Any], place: int) -> tuple[str, ...] | None:
        """The state types a plain `dict` stands for (a state restored without its type), the one
        to name it by first; None when it is not one. `place` is `TOP` or `NESTED` (never `DATA`).
        Decide by the structure only (keys, and which children are leaves)."""
        return None

    def may_be_restored(self, keys: frozenset[str]) -> bool:
        """Whether some dict with exactly these keys may be a restored state (`restored_names`):
        such dicts are never recorded in bulk."""
        return False

    def is_chain(self, pairs: Pairs) -> bool:
        """Whether the children of a node outside every state, not a state itself, are inside one:
        a restored chain (optax: a list holding a restored state or a `None`, an empty state)."""
        return False

    def hides(self, name: str, key: KeyEntry) -> bool:
        """Whether the child under `key` of the state `name` starts a hidden region; asked only
        where the key's field is one of `hidden_fields`."""
        return False


class _Combined(StateRules):
    """The rules of several libraries: a node is a state if one of them says so."""

    def __init__(self, all_rules: tuple[StateRules, ...]) -> None:
        self.all_rules = all_rules
        self.hidden_fields = frozenset().union(*(r.hidden_fields for r in all_rules))
        self.wrapper_fields = frozenset().union(*(r.wrapper_fields for r in all_rules))

    def state_name(self, kind: type) -> str | None:
        return next((n for r in self.all_rules if (n := r.state_name(kind)) is not None), None)

    def is_hole_type(self, kind: type) -> bool:
        return any(r.is_hole_type(kind) for r in self.all_rules)

    def restored_names(self, node: dict[str, Any], place: int) -> tuple[str, ...] | None:
        return next((n for r in self.all_rules if (n := r.restored_names(node, place))), None)

    def may_be_restored(self, keys: frozenset[str]) -> bool:
        return any(r.may_be_restored(keys) for r in self.all_rules)

    def is_chain(self, pairs: Pairs) -> bool:
        return any(r.is_chain(pairs) for r in self.all_rules)

    def hides(self, name: str, key: KeyEntry) -> bool:
        return any(r.hides(name, key) for r in self.all_rules)


_REGISTERED: list[StateRules] = []
_LISTENERS: list[Callable[[], None]] = []
_active = StateRules()


def register(rules: StateRules) -> None:
    """Make `rules` part of what the core knows about states (again, a no-op). Cached indexes
    are forgotten, as they were built under the rules before."""
    if any(r is rules for r in _REGISTERED):
        return
    _REGISTERED.append(rules)
    _changed()


def unregister(rules: StateRules) -> None:
    """Forget `rules` (for tests); cached indexes are forgotten too."""
    _REGISTERED[:] = [r for r in _REGISTERED if r is not rules]
    _changed()


def _changed() -> None:
    global _active
    registered = tuple(_REGISTERED)
    _active = registered[0] if len(registered) == 1 else _Combined(registered)
    for listener in _LISTENERS:
        listener()


def on_change(listener: Callable[[], None]) -> None:
    """Call `listener` whenever the registered rules change (the index cache clears itself)."""
    _LISTENERS.append(listener)


def active() -> StateRules:
    """The registered rules as one: the library's own object when one is registered."""
    return _active


def child_places(rules: StateRules, name: str | None, place: int, pairs: Pairs) -> list[int]:
    """Where each child of a node (the state `name`, or None) at `place` is: in a state, a field of
    `wrapper_fields` is `NESTED` and any other `DATA`; a restored chain outside every state makes
    its children `NESTED`; elsewhere children are where their parent is."""
    if name is not None:
        wrappers = rules.wrapper_fields
        return [NESTED if field_name(key) in wrappers else DATA for key, _ in pairs]
    if place == TOP and rules.is_chain(pairs):
        return [NESTED] * len(pairs)
    return [place] * len(pairs)


def fields_of(node: Any) -> dict[str, Any] | None:
    """The fields of a node that may stand for a state whose type it does not have, as a dict (what
    `StateRules.restored_names` is asked about): a dict (a state restored without its type); a
    library's mapping node with str keys (praxis's `NestedMap`, flax's `FrozenDict`,
    `nnx.State`); a NamedTuple (a user's own copy of a state type). None for any other node.

    >>> from typing import NamedTuple
    >>> class ScaleByAdamState(NamedTuple):
    ...     count: int
    ...     mu: dict
    ...     nu: dict
    >>> fields_of(ScaleByAdamState(0, {}, {}))
    {'count': 0, 'mu': {}, 'nu': {}}
    """
    if type(node) is dict:
        return node
    if isinstance(node, Mapping):
        return dict(node) if all(type(key) is str for key in node) else None
    if is_namedtuple_type(type(node)):
        return dict(node._asdict())
    return None


def is_state_node(node: Any) -> bool:
    """Whether `node` is a state of a registered library, typed, or standing for one (as a node
    with fields inside a state's wrapper field would be read: `fields_of`)."""
    rules = active()
    if rules.state_name(type(node)) is not None:
        return True
    fields = fields_of(node)
    return fields is not None and bool(fields) and rules.restored_names(fields, NESTED) is not None
