"""Where the memory goes: `memory` (bytes on each device, by role and by region, with the
placements worth fixing). Read from shardings and shapes alone (docs/memory.md).

>>> import jax.numpy as jnp, optax, optree_inspect as oi
>>> state = optax.adam(1e-3).init({"w": jnp.zeros((4, 4))})
>>> oi.memory(state, params={"w": jnp.zeros((4, 4))}).to_dict()["roles"]["mu"]["total_bytes"]
64
"""

from __future__ import annotations

import html
import re
from typing import Any, NamedTuple

import numpy as np
from jax.tree_util import keystr
from jaxtyping import PyTree

from ._cache import index_and_leaves
from ._check import Finding, params_of, placement_findings
from ._errors import bounded, raised_here
from ._index import StructureIndex
from ._layout import layout_of, line_entries
from ._leaf import bytes_text, unwrap_all
from ._listing import Listing
from ._naming import shortest_query
from ._placement import devices_text, placements, widest
from ._roles import NAMED, OTHER, PARAMS, SCALARS, leaf_roles

_REGIONS_SHOWN = 8
_ROLES_SHOWN = 10
_FIX = re.compile(r"state = oi\.set\(.*?placement='value'\)")
_GIVEN_PARAMS = "params="
"""The one region that stands for the parameters given as `params=`."""


class Usage(NamedTuple):
    """Bytes of a role or a region: on its fullest device, in total over devices, once (the
    arrays' own size), their ratio (`replication`: 1 for sharded arrays, the device count for
    replicated ones; None where nothing is placed), the devices they live on, and the bytes of
    leaves on no device (host arrays, abstract leaves without a sharding, tracers, deleted arrays)."""

    fullest_device_bytes: int
    total_bytes: int
    logical_bytes: int
    replication: float | None
    devices: tuple[int, ...]
    unplaced_bytes: int

    def _plain(self) -> dict[str, Any]:
        return {**self._asdict(), "devices": list(self.devices)}


class MemoryRow(NamedTuple):
    """One row of the table: a role (`params`, a moment field such as `mu`, `hyperparameters and
    counters`, `other`) or a region (keyed by the query `stats` uses for it), with its usage."""

    kind: str
    name: str
    usage: Usage


class Memory(Listing[MemoryRow]):
    """What `memory` found: rows by role, then by region (iterate them), `findings`, the bytes
    each device holds by role (`by_device`), `to_dict()`, a table when printed and a bar a device
    in a notebook."""

    def __init__(
        self,
        roles: dict[str, Usage],
        regions: dict[str, Usage],
        by_device: dict[int, dict[str, int]],
        findings: list[Finding],
        held: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(
            [MemoryRow("role", name, usage) for name, usage in roles.items()]
            + [MemoryRow("region", name, usage) for name, usage in regions.items()]
        )
        self.roles = roles
        self.regions = regions
        self.by_device = by_device
        self.findings = tuple(findings)
        self._held = held or {}
        """For each kind of finding: the device where its leaves hold the most, and those bytes."""

    @property
    def fullest_device(self) -> int | None:
        """The device holding the most bytes (the lowest id among equals), or None."""
        totals = {device: sum(roles.values()) for device, roles in self.by_device.items()}
        return max(totals, key=lambda device: (totals[device], -device)) if totals else None

    def shares(self) -> dict[str, float]:
        """The share of the fullest device's bytes each role takes, largest first."""
        device = self.fullest_device
        if device is None:
            return {}
        held = self.by_device[device]
        total = sum(held.values()) or 1
        return dict(sorted(((role, n / total) for role, n in held.items() if n), key=lambda item: -item[1]))

    def to_dict(self) -> dict[str, Any]:
        """Plain data: `devices`, `fullest_device` (its id, bytes and each role's share), `roles`
        and `regions` (each a `Usage` as a dict), `by_device` and `findings`."""
        device = self.fullest_device
        return {
            "devices": sorted(self.by_device),
            "fullest_device": None
            if device is None
            else {"device": device, "bytes": sum(self.by_device[device].values()), "shares": self.shares()},
            "roles": {name: usage._plain() for name, usage in self.roles.items()},
            "regions": {name: usage._plain() for name, usage in self.regions.items()},
            "by_device": {str(device): dict(roles) for device, roles in sorted(self.by_device.items())},
            "findings": [
                {"kind": f.kind, "path": keystr(f.path), "query": f.query, "message": f.message}
                for f in self.findings
            ],
        }

    def _header(self) -> str:
        count, device = len(self.by_device), self.fullest_device
        found = len(self.findings)
        findings = f"{found} finding{'s' * (found != 1)}"
        if device is None:
            return f"Memory(no array on a device; {findings})"
        held = bytes_text(sum(self.by_device[device].values()))
        return f"Memory({count} device{'s' * (count != 1)}, fullest: device {device} with {held}; {findings})"

    def __str__(self) -> str:
        lines = [self._header(), _table_line("role", "fullest device", "total", "replication", "devices")]
        roles = list(self.roles.items())
        lines += [_usage_line(name, usage) for name, usage in roles[:_ROLES_SHOWN]]
        if len(roles) > _ROLES_SHOWN:
            lines.append(f"... {len(roles) - _ROLES_SHOWN:,} more roles (memory.roles)")
        shares = self.shares()
        if shares:
            parts = ", ".join(
                f"{role} {share:.0%}" if share >= 0.005 else f"{role} <1%"
                for role, share in list(shares.items())[:6]
            )
            lines.append(f"device {self.fullest_device} holds: {bounded(parts, 200)}")
        regions = sorted(self.regions.items(), key=lambda item: (-item[1].fullest_device_bytes, item[0]))
        if regions:
            lines.append(_table_line(f"largest regions (of {len(regions):,})", "", "", "", ""))
            lines += [
                _usage_line("  " + bounded(name or "(root)", 40), usage)
                for name, usage in regions[:_REGIONS_SHOWN]
            ]
        lines += self._finding_lines()
        return "\n".join(lines)

    def _finding_lines(self) -> list[str]:
        if not self.findings:
            return []
        lines = [f"findings ({len(self.findings):,}; each with its fix in memory.findings):"]
        for summary, fix in self._finding_groups():
            lines.append(f"  {summary}")
            if fix:
                lines.append(f"    {fix}")
        return lines

    def _finding_groups(self) -> list[tuple[str, str]]:
        """The findings by kind: a line with the leaves, their bytes on the device where they hold
        the most (and that device's share), and the first one's fix (`""` where it has none)."""
        groups = []
        for kind in dict.fromkeys(f.kind for f in self.findings):
            mine = [f for f in self.findings if f.kind == kind]
            names = ", ".join(bounded(f.query, 40) for f in mine[:3]) + (", ..." if len(mine) > 3 else "")
            where = ""
            if kind in self._held:
                device, held = self._held[kind]
                total = sum(self.by_device[device].values())
                where = f": {bytes_text(held)} on device {device} ({held / total:.0%} of its bytes)"
            fix = _FIX.search(mine[0].message)
            groups.append(
                (f"{kind} x{len(mine)} ({names}){where}", bounded(fix.group(0), 200) if fix else "")
            )
        return groups

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return _html(self)


def _table_line(name: str, fullest: str, total: str, replication: str, devices: str) -> str:
    return f"{name:<30} {fullest:>14} {total:>10} {replication:>11}  {devices}".rstrip()


def _usage_line(name: str, usage: Usage) -> str:
    replication = "" if usage.replication is None else f"{usage.replication:.3g}x"
    devices = devices_text(usage.devices) if usage.devices else "none"
    if usage.unplaced_bytes:
        devices += f"; {bytes_text(usage.unplaced_bytes)} on no device"
    return _table_line(
        bounded(name, 30),
        bytes_text(usage.fullest_device_bytes),
        bytes_text(usage.total_bytes),
        replication,
        devices,
    )


@raised_here
def memory(tree: PyTree, /, *, params: PyTree | None = None) -> Memory:
    """The bytes `tree` takes on each device, by role and by region, and the placements worth
    fixing.

    Roles: `params` (the tree's own `params` or `model` field, or the tree given as `params=`),
    each moment field of an optax state by its name (`mu`, `nu`, `trace`, `acc_grads`, `ema`, ...),
    `hyperparameters and counters`, and `other`. Regions: the rows `describe` shows, keyed as
    `stats` keys them (with `params=`, one more region, `params=`). Each has its bytes on its
    fullest device, its total over devices, its replication and its devices (`Usage`). Figures
    come from shardings and shapes only, so a live state (exact to the byte: they equal the sum
    over each array's `addressable_shards`), a `jax.eval_shape` state whose `ShapeDtypeStruct`s
    carry shardings, and `oi.load(path, scalars=False)` of a checkpoint (from its saved
    shardings and device ids, devices this process lacks included) give the same figures, and no
    array data is read. Findings (`check`'s kinds): `replicated_moment` and `single_device`.

    ```python
    >>> import jax.numpy as jnp, optax, optree_inspect as oi
    >>> params = {"w": jnp.zeros((256, 256))}
    >>> report = oi.memory(optax.adam(1e-3).init(params), params=params)
    >>> [row.name for row in report if row.kind == "role"]
    ['params', 'mu', 'nu', 'hyperparameters and counters']
    >>> report.roles["nu"].fullest_device_bytes
    262144

    ```
    """
    index, leaves = index_and_leaves(tree)
    values = unwrap_all(leaves)
    roles = leaf_roles(index, values)
    entries = _regions(index)
    given = params_of(index, values, params)
    extra_values: list[Any] = []
    if params is not None and given is not None:
        # a given parameter that is also a leaf of the tree (the same array) counts once, as params
        by_id = {id(v): v for v in given.values}
        shared = {i for i in by_id.keys() & set(map(id, values)) if hasattr(by_id[i], "shape")}
        if shared:
            roles = [PARAMS if id(v) in shared else r for v, r in zip(values, roles, strict=True)]
        extra_values = [v for v in given.values if id(v) not in shared]
    table = placements(values + extra_values)
    devices = sorted({device for found in table.device_bytes if found for device, _ in found})
    unique = _matrix(table.device_bytes, {device: position for position, device in enumerate(devices)})
    matrix = unique[table.rows]
    sizes = np.array(table.logical_bytes, dtype=np.int64)[table.rows]
    placed = np.array([found is not None for found in table.device_bytes], dtype=bool)[table.rows]
    role_names = [*roles, *([PARAMS] * len(extra_values))]
    order = _role_order(role_names, matrix)
    number_of = {name: number for number, name in enumerate(order)}
    role_ids = np.array([number_of[name] for name in role_names], dtype=np.intp)
    by_role = np.zeros((len(order), len(devices)), dtype=np.int64)
    np.add.at(by_role, role_ids, matrix)
    placed_sizes = np.where(placed, sizes, 0)
    role_usage = {}
    for number, name in enumerate(order):
        mask = role_ids == number
        role_usage[name] = _usage(
            by_role[number], int(sizes[mask].sum()), int(placed_sizes[mask].sum()), devices
        )
    # regions are runs of leaves in tree order: each a difference of running sums
    running = np.concatenate([np.zeros((1, len(devices)), np.int64), np.cumsum(matrix, axis=0)])
    running_sizes = np.concatenate([[0], np.cumsum(sizes)])
    running_placed = np.concatenate([[0], np.cumsum(placed_sizes)])
    region_spans = [(name, span.start, span.stop) for name, span in entries]
    if extra_values:
        region_spans.append((_GIVEN_PARAMS, len(values), len(matrix)))
    region_usage = {
        name: _usage(
            running[stop] - running[start],
            int(running_sizes[stop] - running_sizes[start]),
            int(running_placed[stop] - running_placed[start]),
            devices,
        )
        for name, start, stop in region_spans
    }
    by_device = {
        device: {name: int(by_role[number, column]) for number, name in enumerate(order)}
        for column, device in enumerate(devices)
    }
    spread = widest(values + extra_values)
    findings = placement_findings(index, values, given, spread)
    held: dict[str, tuple[int, int]] = {}
    for kind in dict.fromkeys(finding.kind for _, finding in findings):
        rows = np.zeros(len(matrix), dtype=bool)
        rows[[position for position, finding in findings if finding.kind == kind]] = True
        per_device = matrix[rows].sum(axis=0)
        if per_device.any():
            column = int(np.argmax(per_device))
            held[kind] = devices[column], int(per_device[column])
    return Memory(role_usage, region_usage, by_device, [finding for _, finding in findings], held)


def _matrix(found: list[tuple[tuple[int, int], ...] | None], column: dict[int, int]) -> np.ndarray:
    """Bytes of each distinct placement (a row) on each device (a column)."""
    matrix = np.zeros((len(found), len(column)), dtype=np.int64)
    for row, placement in enumerate(found):
        for device, count in placement or ():
            matrix[row, column[device]] += count
    return matrix


def _usage(per_device: np.ndarray, logical: int, logical_placed: int, devices: list[int]) -> Usage:
    """The usage of leaves with `per_device` bytes on each of `devices`, `logical` bytes of their
    own, `logical_placed` of them on a device."""
    total = int(per_device.sum())
    return Usage(
        fullest_device_bytes=int(per_device.max()) if len(per_device) else 0,
        total_bytes=total,
        logical_bytes=logical,
        replication=total / logical_placed if logical_placed else None,
        devices=tuple(d for d, n in zip(devices, per_device.tolist(), strict=True) if n),
        unplaced_bytes=logical - logical_placed,
    )


def _role_order(role_names: list[str], matrix: np.ndarray) -> list[str]:
    """`params` first, then the moments by their bytes (largest first), then hyperparameters and
    counters, then other."""
    names = list(dict.fromkeys(role_names))
    moments = [n for n in names if n not in (PARAMS, SCALARS, OTHER)]
    totals = matrix.sum(axis=1) if matrix.size else np.zeros(len(role_names), dtype=np.int64)
    weight = dict.fromkeys(moments, 0)
    for name, total in zip(role_names, totals.tolist(), strict=True):
        if name in weight:
            weight[name] += total
    moments.sort(key=lambda n: -weight[n])
    return [n for n in (PARAMS, *moments, SCALARS, OTHER) if n in names]


_REGION_ENTRIES = ("memory", "regions")


def _regions(index: StructureIndex) -> list[tuple[str, slice]]:
    """The regions `describe`'s rows make, keyed as `stats` keys them (memoised on the index)."""
    cached = index.memo.results.get(_REGION_ENTRIES)
    if cached is not None:
        return cached
    lines = layout_of(index)
    entries = [
        (shortest_query(index, node) if node else "", span)
        for number in range(len(lines))
        for node, span in line_entries(index, lines, number)
    ]
    index.memo.results[_REGION_ENTRIES] = entries
    return entries


# The notebook view ------------------------------------------------------------------------------

_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#edc948", "#76b7b2", "#ff9da7", "#9c755f")
"""params first, then one a moment (repeating past eight)."""
_SCALARS_COLOUR, _OTHER_COLOUR = "#8c8c8c", "#bab0ac"


def _colours(roles: list[str]) -> dict[str, str]:
    moments = [role for role in roles if role not in NAMED]
    colours = {role: _COLOURS[(number + 1) % len(_COLOURS)] for number, role in enumerate(moments)}
    return {**colours, PARAMS: _COLOURS[0], SCALARS: _SCALARS_COLOUR, OTHER: _OTHER_COLOUR}


def _html(report: Memory) -> str:
    """A bar a device, stacked by role, with a legend and the findings; HTML and CSS only."""
    roles = list(report.roles)
    colours = _colours(roles)
    totals = {device: sum(held.values()) for device, held in report.by_device.items()}
    widest = max(totals.values(), default=0) or 1
    escape = html.escape
    legend = "".join(
        f'<span style="margin-right:1em;white-space:nowrap"><span style="display:inline-block;width:0.8em;'
        f'height:0.8em;background:{colours[r]};margin-right:0.3em;vertical-align:middle"></span>'
        f"{escape(r)} ({escape(bytes_text(report.roles[r].fullest_device_bytes))} at most a device)</span>"
        for r in roles
    )
    bars = []
    for device in sorted(report.by_device):
        held = report.by_device[device]
        segments = "".join(
            f'<div title="{escape(r)}: {escape(bytes_text(n))}" style="width:{100 * n / widest:.3f}%;'
            f'background:{colours[r]};height:100%"></div>'
            for r in roles
            if (n := held.get(r, 0))
        )
        bars.append(
            '<div style="display:flex;align-items:center;margin:2px 0">'
            f'<div style="width:7em;flex:none">device {device}</div>'
            '<div style="flex:1;height:1.1em;display:flex;background:rgba(127,127,127,0.15);'
            f'border-radius:2px;overflow:hidden">{segments}</div>'
            f'<div style="width:6em;flex:none;text-align:right">{escape(bytes_text(totals[device]))}</div>'
            "</div>"
        )
    findings = "".join(
        f"<li>{escape(summary)}" + (f"<br><code>{escape(fix)}</code>" if fix else "") + "</li>"
        for summary, fix in report._finding_groups()
    )
    table = str(report).split("\n", 1)[1]
    return (
        '<div class="optree-inspect-memory" style="font-family:sans-serif;font-size:13px;color:inherit">'
        f"<div style='font-weight:bold;margin-bottom:4px'>{escape(report._header())}</div>"
        f"<div style='margin-bottom:6px'>{legend}</div>{''.join(bars)}"
        f"{'<ul style=margin-top:6px>' + findings + '</ul>' if findings else ''}"
        f"<details><summary>table</summary><pre>{escape(table)}</pre></details></div>"
    )
