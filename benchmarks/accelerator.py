"""The statistics and `diff` of large leaves on the default device, side by side with the floor (one
`jnp.max` per leaf) and a peer (`eqx.tree_equal`), with the bytes read per second and the device's
peak memory. Meant for an accelerator (a GPU); it runs on a CPU too.

    python benchmarks/accelerator.py            # 8 leaves of 64M float32 (2 GiB)
    python benchmarks/accelerator.py --size 24  # 8 leaves of 16M
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import optree_inspect as oi


def median_ms(function: Callable[[], Any], runs: int = 15) -> float:
    """The median wall time of `function()` after one warm-up call, its results waited for."""
    jax.block_until_ready(function())
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(function())
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def peak_bytes(device: Any) -> int | None:
    stats = device.memory_stats()
    return None if stats is None else int(stats.get("peak_bytes_in_use", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=26, help="log2 of the elements of each leaf")
    size = 1 << parser.parse_args().size
    device = jax.devices()[0]
    print(f"jax {jax.__version__}, {device.platform}: {device.device_kind}")
    rng = np.random.default_rng(0)
    rows: list[tuple[str, str]] = []
    maximum = jax.jit(jnp.max)
    for dtype in (jnp.float32, jnp.bfloat16):
        leaves = {
            f"layer{i}": jax.device_put(rng.standard_normal(size, np.float32)).astype(dtype) for i in range(8)
        }
        nbytes = sum(x.nbytes for x in leaves.values())
        name = jnp.dtype(dtype).name
        floor = median_ms(lambda leaves=leaves: [maximum(x) for x in leaves.values()])
        before = peak_bytes(device)
        ours = median_ms(lambda leaves=leaves: oi.stats(leaves))
        after = peak_bytes(device)
        check = median_ms(lambda leaves=leaves: oi.check(leaves))
        gbs = nbytes / 1e6
        rows += [
            (
                f"floor jnp.max of each of 8 leaves of {size:,} {name}",
                f"{floor:.2f} ms ({gbs / floor:.0f} GB/s)",
            ),
            (f"ours stats ({name})", f"{ours:.2f} ms ({gbs / ours:.0f} GB/s), {ours / floor:.2f}x the floor"),
            (
                f"ours check ({name})",
                f"{check:.2f} ms ({gbs / check:.0f} GB/s), {check / floor:.2f}x the floor",
            ),
        ]
        if before is not None and after is not None:
            rows.append(
                (f"device peak memory over the state ({name})", f"{(after - before) / 2**20:.1f} MiB")
            )
        got = oi.stats({"x": leaves["layer0"]})["x"]
        expected = np.asarray(leaves["layer0"], np.float64)
        error = max(
            abs(float(got["mean"]) - expected.mean()) / np.abs(expected).max(),
            abs(float(got["rms"]) / np.sqrt((expected * expected).mean()) - 1),
        )
        rows.append((f"largest relative error of mean and rms ({name})", f"{error:.1e}"))
        if dtype == jnp.float32:
            other = {key: x + 0 for key, x in leaves.items()}  # equal values, other arrays
            diff = median_ms(lambda leaves=leaves, other=other: oi.diff(leaves, other))
            rows.append(("ours diff of two equal copies", f"{diff:.2f} ms ({diff / floor:.2f}x the floor)"))
            try:
                import equinox as eqx
            except ImportError:
                pass
            else:
                peer = median_ms(lambda leaves=leaves, other=other: eqx.tree_equal(leaves, other))
                rows.append(
                    (
                        "eqx.tree_equal of the same pair",
                        f"{peer:.2f} ms, ratio ours / peer {diff / peer:.2f}x",
                    )
                )
        del leaves
    print("\n| large leaves on the device | time |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
