"""Key entries: JAX's edges (`DictKey`, `SequenceKey`, `GetAttrKey`, `FlattenedIndexKey`) and the
steps of a query that name them (`.name`, `[literal]`, `[<flat index N>]`, a pattern name).

The rules that read a key entry by its type are here: its text for a pattern, its label on a line,
the field it names, which literal or step names it. Code that takes a key entry apart to rebuild a
node (a dict's key, a sequence's index, an attribute) still tests its type where it does so.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, TypeAlias

from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey, keystr

from ._errors import bounded

KeyEntry: TypeAlias = DictKey | SequenceKey | GetAttrKey | FlattenedIndexKey
KeyPath: TypeAlias = tuple[KeyEntry, ...]
KEY_TYPES = (DictKey, SequenceKey, GetAttrKey, FlattenedIndexKey)


@dataclass(frozen=True)
class Attr:
    """`.name` in a keystr: a `GetAttrKey`."""

    name: str


@dataclass(frozen=True)
class Item:
    """`[literal]` in a keystr or pattern: a `DictKey` with that key or, for an int, a `SequenceKey`."""

    key: Any


@dataclass(frozen=True)
class FlatIndex:
    """`[<flat index N>]`: the `FlattenedIndexKey` of an unkeyed custom node."""

    index: int


Step: TypeAlias = Attr | Item | FlatIndex


@dataclass(frozen=True)
class Name:
    """A pattern component that is a name or an fnmatch glob (`*`, `?`)."""

    text: str
    is_glob: bool


Component: TypeAlias = Name | Item


def edge_text(key: KeyEntry | None) -> str:
    """How a pattern name sees an edge: a dict key as text, a field name, an index in decimal.

    >>> edge_text(DictKey("mu")), edge_text(SequenceKey(1)), edge_text(GetAttrKey("count"))
    ('mu', '1', 'count')
    """
    if isinstance(key, DictKey):
        return str(key.key)
    if isinstance(key, SequenceKey):
        return str(key.idx)
    if isinstance(key, GetAttrKey):
        return key.name
    if isinstance(key, FlattenedIndexKey):
        return str(key.key)
    return ""


def field_name(key: KeyEntry | None) -> str | None:
    """The field a key names: an attribute, or a `str` key of a dict (a state restored as a dict).

    >>> field_name(GetAttrKey("count")), field_name(DictKey("mu")), field_name(SequenceKey(0))
    ('count', 'mu', None)
    """
    if isinstance(key, GetAttrKey):
        return key.name
    if isinstance(key, DictKey) and type(key.key) is str:
        return key.key
    return None


def edge_label(key: KeyEntry | None) -> str:
    """The edge as a reader wants it on a line: `count`, `learning_rate`, `[0]`, `['enc.1']`."""
    if isinstance(key, GetAttrKey):
        return key.name
    if isinstance(key, DictKey) and isinstance(key.key, str) and key.key.isidentifier():
        return key.key
    return "" if key is None else str(key)


def path_text(path: KeyPath, limit: int = 100) -> str:
    """The keystr of `path` for a message, `<root>` for the root, cut to `limit` characters."""
    return bounded(keystr(path), limit) or "<root>"


def key_kind(key: Any) -> object:
    """What must agree, besides `==`, for a bracketed literal to name a key: `[0]` is not `[False]`
    nor `[0.0]`, but it is an `np.int64(0)` key; `['a']` is a `str` subclass key `'a'` too."""
    if isinstance(key, bool):
        return bool
    if isinstance(key, str):
        return str
    if isinstance(key, numbers.Integral):
        return numbers.Integral
    if isinstance(key, numbers.Real):
        return numbers.Real
    if isinstance(key, numbers.Complex):
        return numbers.Complex
    return type(key)


def item_matches(item: Item, key: KeyEntry | None) -> bool:
    """Whether the bracketed literal `item` names the edge `key`."""
    if isinstance(key, DictKey):
        try:
            return key_kind(key.key) == key_kind(item.key) and bool(key.key == item.key)
        except Exception:  # a key whose == raises or returns an array
            return False
    return isinstance(key, SequenceKey) and key_kind(item.key) is numbers.Integral and key.idx == item.key


def step_matches(step: Step | KeyEntry, key: KeyEntry) -> bool:
    """Whether one step of an exact path names the edge `key`."""
    if isinstance(step, KEY_TYPES):
        return step == key
    if isinstance(step, Attr):
        return isinstance(key, GetAttrKey) and key.name == step.name
    if isinstance(step, FlatIndex):
        return isinstance(key, FlattenedIndexKey) and key.key == step.index
    return item_matches(step, key)


def step_text(step: Step | KeyEntry) -> str:
    """One step as a query writes it, cut for a message."""
    if isinstance(step, Attr):
        return bounded(f".{step.name}")
    if isinstance(step, Item):
        return f"[{bounded(_repr(step.key))}]"
    if isinstance(step, FlatIndex):
        return f"[<flat index {step.index}>]"
    return bounded(str(step))


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # a key whose repr raises
        return f"<{type(value).__name__}>"


def candidate_keys(step: Step | KeyEntry) -> list[KeyEntry]:
    """The keys a step can name where the node's layout allows an O(1) look-up."""
    if isinstance(step, KEY_TYPES):
        return [step]
    if isinstance(step, Attr):
        return [GetAttrKey(step.name)]
    if isinstance(step, Item):
        keys: list[KeyEntry] = [DictKey(step.key)]
        if key_kind(step.key) is numbers.Integral:
            keys.append(SequenceKey(int(step.key)))
        return keys
    return []
