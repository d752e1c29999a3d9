"""One process of test_two_processes_joined_by_jax_distributed: argv is its id and the port.

The parent sets XLA_FLAGS to two host devices, so the global mesh has four, two per process.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import optree_inspect as oi


def main(process_id: int, port: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    tx = optax.inject_hyperparams(optax.adamw)(learning_rate=optax.linear_schedule(1e-3, 0.0, 100))
    params = {"w": jnp.ones((8, 4))}
    shardings = jax.tree.map(lambda x: rows if x.ndim else replicated, jax.eval_shape(tx.init, params))
    state = jax.jit(tx.init, out_shardings=shardings)(params)
    assert not state.inner_state[0].mu["w"].is_fully_addressable

    new = oi.set(state, "weight_decay", 0.5)
    new = oi.set(new, "mu.w", 0.25)
    assert jax.tree.map(lambda x: x.sharding, new) == jax.tree.map(lambda x: x.sharding, state)
    text = str(oi.describe(new))
    assert "weight_decay: f32[] = 0.5 @ replicated(4)" in text, text
    assert "w: f32[8,4] @ P('data',)" in text, text
    assert float(new.inner_state[0].mu["w"].addressable_shards[0].data[0, 0]) == 0.25
    print("OK", jax.process_index())


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
