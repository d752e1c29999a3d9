"""`memory`: bytes on each device by role and by region, the placements worth fixing, and the same
figures from live arrays, abstract ones with shardings, and a checkpoint's metadata."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optree_inspect as oi

PARAMS = {"w1": jnp.ones((64, 32)), "b1": jnp.zeros(32), "w2": jnp.ones((32, 8), jnp.bfloat16)}
PARAM_BYTES = 64 * 32 * 4 + 32 * 4 + 32 * 8 * 2


def _roles(report: oi.Memory) -> dict[str, int]:
    return {name: usage.total_bytes for name, usage in report.roles.items()}


def test_roles_of_adam_with_params_given() -> None:
    state = optax.adam(1e-3).init(PARAMS)
    report = oi.memory(state, params=PARAMS)
    assert _roles(report) == {
        "params": PARAM_BYTES,
        "mu": PARAM_BYTES,
        "nu": PARAM_BYTES,
        "hyperparameters and counters": 4,
    }
    usage = report.roles["mu"]
    assert (usage.fullest_device_bytes, usage.logical_bytes, usage.replication) == (
        PARAM_BYTES,
        PARAM_BYTES,
        1.0,
    )
    assert usage.devices == (0,) and usage.unplaced_bytes == 0
    assert report.findings == () and not oi.check(state, params=PARAMS)
    assert report.fullest_device == 0 and report.by_device[0]["mu"] == PARAM_BYTES
    assert pytest.approx(sum(report.shares().values())) == 1.0


@pytest.mark.parametrize(
    ("tx", "roles"),
    [
        (optax.sgd(0.1, momentum=0.9), ["trace"]),
        (
            optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3),
            ["mu", "nu", "hyperparameters and counters"],
        ),
        (optax.MultiSteps(optax.adam(1e-3), 4), ["mu", "nu", "acc_grads", "hyperparameters and counters"]),
        (
            optax.chain(optax.clip_by_global_norm(1.0), optax.ema(0.9)),
            ["ema", "hyperparameters and counters"],
        ),
        (
            optax.named_chain(("clip", optax.clip(1.0)), ("adam", optax.scale_by_adam())),
            ["mu", "nu", "hyperparameters and counters"],
        ),
    ],
)
def test_each_moment_field_is_a_role(tx: Any, roles: list[str]) -> None:
    state = tx.init(PARAMS)
    report = oi.memory(state)
    assert sorted(report.roles) == sorted(roles)
    for role in roles:
        if role != "hyperparameters and counters":
            fields = [m.value for m in oi.find(state, f"*.{role}")]
            assert report.roles[role].total_bytes == sum(x.nbytes for x in jax.tree.leaves(fields)), role
    total = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    assert sum(usage.total_bytes for usage in report.roles.values()) == total


def test_injected_hyperparameters_are_not_a_moment() -> None:
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3, b1=0.9)
    report = oi.memory(tx.init(PARAMS))
    assert (
        report.roles["hyperparameters and counters"].total_bytes == 2 * 4 + 5 * 4
    )  # two counts, five floats


def test_a_train_state_counts_its_own_params_once() -> None:
    from flax.training import train_state

    tx = optax.adam(1e-3)
    ts = train_state.TrainState.create(apply_fn=lambda *a: None, params=PARAMS, tx=tx)
    alone = oi.memory(ts)
    assert alone.roles["params"].total_bytes == PARAM_BYTES
    assert _roles(oi.memory(ts, params=ts.params)) == _roles(alone)  # the same leaves: not twice
    other = jax.tree.map(jnp.copy, PARAMS)
    assert oi.memory(ts, params=other).roles["params"].total_bytes == 2 * PARAM_BYTES
    assert "params=" in oi.memory(ts, params=other).regions


def test_an_init_that_shares_one_array_between_fields_counts_each_field() -> None:
    """lbfgs's `init` gives its memories one zeros array; the first update makes them apart: the
    figures are the state's in training, as `jax.eval_shape`'s are."""
    params = {"w": jnp.ones((64, 64))}
    live = oi.memory(optax.lbfgs().init(params))
    abstract = oi.memory(jax.eval_shape(optax.lbfgs().init, params))
    assert live.roles["diff_updates_memory"].total_bytes == 10 * 64 * 64 * 4
    for role, usage in live.roles.items():
        assert usage.logical_bytes == abstract.roles[role].logical_bytes, role


@pytest.mark.parametrize("held", ["namedtuple", "dict", "tuple"])
def test_moments_of_scalar_parameters_are_moments_however_held(held: str) -> None:
    """Adam's moments of two scalar parameters: `mu` and `nu` roles, and their RMS keys, whether
    the parameters are a NamedTuple of the user's, a dict or a tuple (lbfgs's `info`, a
    NamedTuple of optax's, stays with the counters)."""

    class Line(NamedTuple):
        slope: Any
        intercept: Any

    values = (jnp.array(2.0), jnp.array(-1.0))
    params = {"namedtuple": Line(*values), "dict": dict(zip("ab", values, strict=True)), "tuple": values}[
        held
    ]
    tx = optax.adam(0.1)
    _, state = tx.update(params, tx.init(params), params)
    assert {"mu", "nu"} <= set(oi.memory(state).roles)
    assert {"all/mu_rms", "all/nu_rms"} <= set(oi.metrics(state))
    lbfgs = optax.lbfgs().init({"w": jnp.ones(3)})
    assert "info" not in oi.memory(lbfgs).roles


def test_nnx_optimizer_and_its_state() -> None:
    nnx = pytest.importorskip("flax.nnx")
    if not hasattr(nnx, "Optimizer") or not hasattr(nnx, "Param"):
        pytest.skip("flax without nnx.Optimizer")
    model = nnx.Linear(16, 8, rngs=nnx.Rngs(0))
    try:
        optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    except TypeError:  # flax before 0.11: no wrt
        pytest.skip("flax before 0.11")
    expected = (16 * 8 + 8) * 4
    params = nnx.state(model, nnx.Param)
    live = [optimizer] if jax.tree.leaves(optimizer) != [optimizer] else []  # a pytree from flax 0.11
    for tree in (nnx.state(optimizer), *live):
        report = oi.memory(tree, params=params)
        assert report.roles["params"].total_bytes == expected
        assert report.roles["mu"].total_bytes == report.roles["nu"].total_bytes == expected
        assert report.roles["hyperparameters and counters"].total_bytes == 4 + 4  # count and step
        assert "other" not in report.roles


def test_regions_are_the_rows_stats_keys() -> None:
    state = optax.adam(1e-3).init(PARAMS)
    report = oi.memory(state)
    assert set(report.regions) == set(oi.stats(state))
    assert sum(u.total_bytes for u in report.regions.values()) == sum(
        x.nbytes for x in jax.tree.leaves(state)
    )
    assert [row.kind for row in report] == ["role"] * len(report.roles) + ["region"] * len(report.regions)


def test_leaves_on_no_device_are_counted_apart() -> None:
    abstract = jax.eval_shape(optax.adam(1e-3).init, PARAMS)  # no shardings: no device known
    usage = oi.memory(abstract).roles["mu"]
    assert (usage.total_bytes, usage.unplaced_bytes, usage.replication, usage.devices) == (
        0,
        PARAM_BYTES,
        None,
        (),
    )
    host = {"w": np.zeros((4, 4), np.float32), "n": 3}
    usage = oi.memory(host).roles["other"]
    assert (usage.total_bytes, usage.unplaced_bytes, usage.logical_bytes) == (0, 64, 64)

    def step(state: Any) -> Any:
        seen.append(oi.memory(state).roles["mu"].unplaced_bytes)
        return state

    seen: list[int] = []
    jax.jit(step)(optax.adam(1e-3).init(PARAMS))
    assert seen == [PARAM_BYTES]


def test_a_deleted_array_takes_no_memory() -> None:
    state = optax.sgd(0.1, momentum=0.9).init({"w": jnp.ones(8)})
    jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)(state)
    if not state[0].trace["w"].is_deleted():
        pytest.skip("this backend does not donate")
    usage = oi.memory(state).roles["trace"]
    assert (usage.total_bytes, usage.unplaced_bytes) == (0, 32)


def test_to_dict_and_text() -> None:
    state = optax.adam(1e-3).init(PARAMS)
    document = oi.memory(state, params=PARAMS).to_dict()
    assert json.loads(json.dumps(document)) == document
    assert set(document) == {"devices", "fullest_device", "roles", "regions", "by_device", "findings"}
    assert set(document["roles"]["mu"]) == {
        "fullest_device_bytes",
        "total_bytes",
        "logical_bytes",
        "replication",
        "devices",
        "unplaced_bytes",
    }
    assert document["fullest_device"]["device"] == 0
    text = repr(oi.memory(state, params=PARAMS))
    assert text.splitlines()[0] == "Memory(1 device, fullest: device 0 with 25.9 KB; 0 findings)"
    assert "mu" in text and "largest regions" in text


def test_the_table_fits_a_screen_however_large_the_tree() -> None:
    params = {f"layer{i}": {"w": jnp.ones((4, 4)), "b": jnp.ones(4)} for i in range(300)}
    text = repr(oi.memory(optax.adam(1e-3).init(params), params=params))
    assert len(text.splitlines()) <= 30 and max(map(len, text.splitlines())) <= 200


def test_html_is_a_bar_a_device_without_script() -> None:
    page = oi.memory(optax.adam(1e-3).init(PARAMS), params=PARAMS)._repr_html_()
    assert page.count(">device 0<") == 1 and "<script" not in page.lower()
    assert "mu" in page and "nu" in page


def test_the_input_is_not_modified() -> None:
    state = optax.adam(1e-3).init(PARAMS)
    before = jax.tree.structure(state), [id(x) for x in jax.tree.leaves(state)]
    oi.memory(state, params=PARAMS)
    assert (jax.tree.structure(state), [id(x) for x in jax.tree.leaves(state)]) == before


SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np, optax, orbax.checkpoint as ocp
    from jax.sharding import NamedSharding, PartitionSpec as P
    import optree_inspect as oi

    directory = sys.argv[1]
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))

    def put(x, *spec):
        return jax.device_put(x, NamedSharding(mesh, P(*spec)))

    params = {
        "w1": put(jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32), "data", "model"),
        "b1": put(jnp.ones(32), "model"),
        "w2": put(jnp.ones((32, 8), jnp.bfloat16), "model", None),
    }
    tx = optax.adam(1e-3)
    zero1 = {"w1": ("data", "model"), "b1": ("data", "model"), "w2": ("data", "model")}

    def zero1_state():
        state = tx.init(params)
        moments = lambda tree: {k: put(v, zero1[k]) for k, v in tree.items()}
        return (state[0]._replace(mu=moments(state[0].mu), nu=moments(state[0].nu)), state[1])

    cases = {
        "a": tx.init(params),
        "b": jax.device_put(tx.init(params), NamedSharding(mesh, P())),
        "c": jax.jit(tx.init)(params),
        "d": zero1_state(),
    }

    def shards(tree):
        found = {}
        for leaf in jax.tree.leaves(tree):
            for shard in leaf.addressable_shards:
                found[str(shard.device.id)] = found.get(str(shard.device.id), 0) + shard.data.nbytes
        return found

    def abstract(tree):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)

    out = {}
    checkpointer = ocp.StandardCheckpointer()
    out["cannot_save"] = None

    def save(path, tree):
        # some orbax releases cannot save sharded arrays with an older jax (jax.sharding.set_mesh)
        if out["cannot_save"] is None:
            try:
                checkpointer.save(path, tree)
                checkpointer.wait_until_finished()
            except Exception as error:
                out["cannot_save"] = f"{type(error).__name__}: {error}"[-300:]
        return out["cannot_save"] is None

    for name, state in cases.items():
        report = oi.memory(state, params=params)
        document = report.to_dict()
        by_device = {k: sum(v.values()) for k, v in document["by_device"].items()}
        entry = {
            "by_device": by_device,
            "shards": shards((state, params)),
            "kinds": sorted({f.kind for f in report.findings}),
            "check_kinds": sorted({f.kind for f in oi.check(state, params=params)}),
            "abstract_same": oi.memory(abstract(state), params=abstract(params)).to_dict() == document,
            "lines": len(repr(report).splitlines()),
            "text": repr(report),
            "messages": [f.message for f in report.findings],
            "roles": document["roles"],
        }
        if save(f"{directory}/{name}", {"opt": state, "params": params}):
            entry["saved"] = oi.memory(oi.load(f"{directory}/{name}", scalars=False)).to_dict()["by_device"]
        entry["live"] = oi.memory({"opt": state, "params": params}).to_dict()["by_device"]
        if report.findings:
            fixed = state
            for finding in report.findings:
                fix = finding.message[finding.message.index("state = ") :].split(" (`jax.jit", 1)[0]
                namespace = {"oi": oi, "jax": jax, "state": fixed, "params": params}
                exec(fix, namespace)
                fixed = namespace["state"]
            after = oi.memory(fixed, params=params)
            entry["fixed_kinds"] = sorted({f.kind for f in after.findings})
            entry["fixed_moments"] = {r: after.to_dict()["roles"][r] for r in ("mu", "nu")}
            entry["fixed_values"] = all(
                np.array_equal(np.asarray(x), np.asarray(y))
                for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(fixed))
            )
            entry["fixed_check"] = [f.kind for f in oi.check(fixed, params=params)]
        out[name] = entry
    big = put(jax.random.normal(jax.random.key(0), (4096, 4096)), "data", "model")  # 64 MB
    save(f"{directory}/big", {"w": big})
    donated = jax.device_put(jnp.ones((8, 8)), jax.devices()[2])
    donated.delete()
    single = {
        "w": jax.device_put(jnp.ones((64, 64)), jax.devices()[3]),
        "v": params["w1"],
        "empty": jax.device_put(jnp.ones((0, 4)), jax.devices()[1]),
        "donated": donated,
    }
    report = oi.memory(single)
    out["single"] = [(f.kind, f.query) for f in report.findings]
    out["single_text"] = repr(report)
    # pipeline stages: two meshes of 4 devices each; saved, then read in a process with one device
    stage = lambda devices: jax.sharding.Mesh(np.array(devices).reshape(2, 2), ("x", "y"))
    stages = {
        "first": jax.device_put(jnp.ones((8, 8)), NamedSharding(stage(jax.devices()[:4]), P("x", "y"))),
        "second": jax.device_put(jnp.ones((8, 8)), NamedSharding(stage(jax.devices()[4:]), P("x", "y"))),
        "alone": jax.device_put(jnp.ones((3, 3)), jax.devices()[5]),
    }
    save(f"{directory}/stages", stages)
    out["stages"] = oi.memory(stages).to_dict()["by_device"]
    # nnx Variables restored as {'value': x} beside plain params: matched by name
    adam = cases["b"][0]
    restored = {"mu": {k: {"value": v} for k, v in adam.mu.items()}, "count": {"value": adam.count}}
    state = {"opt_state": [restored], "model": params}
    out["restored"] = sorted(f.query for f in oi.check(state) if f.kind == "replicated_moment")
    # a TrainState holds its params: the fix reads them from the state, and runs as printed
    from flax.training import train_state

    ts = train_state.TrainState.create(apply_fn=None, params=params, tx=tx).replace(opt_state=cases["c"])
    fixed = ts
    for finding in oi.memory(ts).findings:
        namespace = {"oi": oi, "jax": jax, "state": fixed}
        exec(finding.message[finding.message.index("state = ") :].split(" (`jax.jit", 1)[0], namespace)
        fixed = namespace["state"]
    out["train_state"] = [len(oi.memory(ts).findings), [f.kind for f in oi.memory(fixed).findings]]
    out["offloaded"] = None
    try:
        pinned = NamedSharding(mesh, P()).with_memory_kind("pinned_host")
        offloaded = (cases["b"][0]._replace(mu=jax.device_put(cases["b"][0].mu, pinned)), cases["b"][1])
        usage = oi.memory(offloaded, params=params).roles["mu"]
        kinds = sorted({f.query for f in oi.memory(offloaded, params=params).findings})
        out["offloaded"] = [usage.total_bytes, usage.unplaced_bytes, kinds]
    except ValueError:  # no pinned_host memory on this backend
        pass
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], pathlib.Path]:
    directory = tmp_path_factory.mktemp("memory")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(directory)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1]), directory


@pytest.mark.parametrize("case", ["a", "b", "c", "d"])
def test_per_device_bytes_are_the_shards_bytes(eight_devices: Any, case: str) -> None:
    out = eight_devices[0][case]
    assert out["by_device"] == out["shards"]
    assert out["abstract_same"]  # ShapeDtypeStructs with the same shardings: the same figures
    assert out["lines"] <= 30


def _saved(eight_devices: Any) -> tuple[dict[str, Any], pathlib.Path]:
    """The 8-device run's results where it could save its checkpoints; a skip where this orbax
    cannot save sharded arrays with this jax."""
    out, directory = eight_devices
    if out["cannot_save"] is not None:
        pytest.skip(f"orbax cannot save sharded arrays here: {out['cannot_save']}")
    return out, directory


@pytest.mark.parametrize("case", ["a", "b", "c", "d"])
def test_a_checkpoint_of_each_gives_the_same_figures(eight_devices: Any, case: str) -> None:
    out = _saved(eight_devices)[0][case]
    assert out["saved"] == out["live"]


def test_replicated_and_device_zero_moments_are_findings(eight_devices: Any) -> None:
    out = eight_devices[0]
    assert out["a"]["kinds"] == out["d"]["kinds"] == []  # sharded alike, or more (ZeRO-1)
    assert out["b"]["kinds"] == out["c"]["kinds"] == ["replicated_moment"]
    assert out["b"]["check_kinds"] == out["c"]["check_kinds"] == ["replicated_moment"]
    assert out["b"]["roles"]["mu"]["replication"] == 8.0
    assert out["c"]["roles"]["mu"]["devices"] == [0]
    assert all("(on device 0 only)" in message for message in out["c"]["messages"])
    assert all("(replicated over 8 devices)" in message for message in out["b"]["messages"])
    assert "replicated_moment x6 (mu.b1, mu.w1, mu.w2, ...)" in out["c"]["text"]
    assert "placement='value')" in out["c"]["text"]
    assert out["single"] == [["single_device", "w"]]  # not the empty or the donated array
    assert "single_device x1 (w): 16 KB on device 3 (94% of its bytes)" in out["single_text"]


def test_a_checkpoint_keeps_its_device_ids(eight_devices: Any) -> None:
    """Two pipeline stages on devices 0-3 and 4-7 and an array on device 5, read here on one
    device: each byte on the device it was saved from."""
    out, directory = _saved(eight_devices)
    assert oi.memory(oi.load(directory / "stages", scalars=False)).to_dict()["by_device"] == out["stages"]
    assert out["stages"]["5"] == {"other": 64 // 4 * 4 + 9 * 4}
    text = str(oi.describe(oi.load(directory / "stages")))
    assert "alone: f32[3,3] @ device 5" in text


def test_the_fix_runs_on_a_train_state(eight_devices: Any) -> None:
    assert eight_devices[0]["train_state"] == [6, []]


def test_restored_variables_match_plain_params_by_name(eight_devices: Any) -> None:
    assert eight_devices[0]["restored"] == ["mu.b1", "mu.w1", "mu.w2"]


def test_offloaded_moments_take_no_device_memory(eight_devices: Any) -> None:
    offloaded = eight_devices[0]["offloaded"]
    if offloaded is None:
        pytest.skip("no pinned_host memory on this backend")
    total, unplaced, queries = offloaded
    assert total == 0 and unplaced == 64 * 32 * 4 + 32 * 4 + 32 * 8 * 2
    assert not any(query.startswith("mu.") for query in queries)


@pytest.mark.parametrize("case", ["b", "c"])
def test_following_the_advice_fixes_the_placement(eight_devices: Any, case: str) -> None:
    out = eight_devices[0]
    assert out[case]["fixed_kinds"] == [] and out[case]["fixed_check"] == []
    assert out[case]["fixed_values"]
    assert out[case]["fixed_moments"] == {r: out["a"]["roles"][r] for r in ("mu", "nu")}


def _read_bytes() -> int | None:
    try:
        fields = dict(line.split(": ") for line in pathlib.Path("/proc/self/io").read_text().splitlines())
    except OSError:
        return None
    return int(fields["rchar"])


def test_a_checkpoint_is_read_from_its_metadata_alone(eight_devices: Any) -> None:
    """A 64 MB sharded array saved on 8 devices, read here, on one: its placement from the mesh's
    shape and spec, and (where Linux counts what a process reads) no array data read."""
    directory = _saved(eight_devices)[1] / "big"
    before = _read_bytes()
    report = oi.memory(oi.load(directory, scalars=False))
    after = _read_bytes()
    assert report.roles["other"].total_bytes == 4096 * 4096 * 4
    assert report.roles["other"].fullest_device_bytes == 4096 * 4096 * 4 // 8
    assert report.roles["other"].devices == tuple(range(8))
    if before is not None and after is not None:
        assert after - before < 4 * 2**20


def test_the_command_line_agrees(eight_devices: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """`optree-inspect memory --json` in this one-device process: the saved mesh's figures, and
    the moments `jax.jit(tx.init)` left on device 0 found beside the saved params."""
    from optree_inspect._cli import main

    out, directory = _saved(eight_devices)
    for case, kinds in (("a", []), ("c", ["replicated_moment"])):
        capsys.readouterr()
        assert main(["memory", str(directory / case), "--json"]) == 0
        document = json.loads(capsys.readouterr().out)
        assert document["by_device"] == out[case]["saved"]
        assert sorted({f["kind"] for f in document["findings"]}) == kinds


def test_load_without_scalars_reads_nothing(tmp_path: pathlib.Path) -> None:
    ocp = pytest.importorskip("orbax.checkpoint")
    state = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3).init(PARAMS)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "c", state)
    checkpointer.wait_until_finished()
    structs = oi.load(tmp_path / "c", scalars=False)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(structs))
    assert [x.shape for x in jax.tree.leaves(structs)] == [x.shape for x in jax.tree.leaves(state)]
    live, saved = oi.memory(state).to_dict(), oi.memory(structs).to_dict()
    assert saved["roles"] == live["roles"] and saved["by_device"] == live["by_device"]
    with_scalars = oi.memory(oi.load(tmp_path / "c")).roles["hyperparameters and counters"]
    assert with_scalars.total_bytes == 0 and with_scalars.unplaced_bytes > 0  # read to the host
    with pytest.raises(oi.InvalidArgumentError, match="scalars=False"):
        oi.load(tmp_path / "c", arrays=True, scalars=False)


def test_params_given_that_are_leaves_of_the_tree_count_once() -> None:
    state = optax.adam(1e-3).init(PARAMS)
    together = oi.memory((PARAMS, state), params=PARAMS)
    assert together.roles["params"].total_bytes == PARAM_BYTES and "other" not in together.roles
    assert "params=" not in together.regions
    alone = oi.memory(PARAMS, params=PARAMS)
    assert _roles(alone) == {"params": PARAM_BYTES}


def test_a_root_with_params_and_model_takes_params() -> None:
    tree = {"params": PARAMS, "model": {"w": jnp.ones(3)}, "opt": optax.sgd(0.1).init(PARAMS)}
    assert oi.memory(tree).roles["params"].total_bytes == PARAM_BYTES


@pytest.mark.parametrize(
    "tx",
    [
        optax.apply_if_finite(optax.adam(1e-3), 3),
        optax.lbfgs(),
        optax.contrib.schedule_free_adamw(1e-3),
        optax.chain(*[optax.scale_by_adam(), optax.ema(0.9), optax.trace(0.9), optax.scale_by_lion()] * 6),
    ],
    ids=["apply_if_finite", "lbfgs", "schedule_free", "long_chain"],
)
def test_scalar_fields_count_with_the_hyperparameters(tx: Any) -> None:
    state = tx.init(PARAMS)
    report = oi.memory(state)
    scalars = {"last_finite", "notfinite_count", "total_notfinite", "value", "learning_rate", "b1"}
    assert not scalars & set(report.roles), report.roles.keys()
    assert not {"weight_sum", "max_lr", "decrease_error"} & set(report.roles)
    total = sum(x.nbytes for x in jax.tree.leaves(state))
    assert sum(usage.total_bytes for usage in report.roles.values()) == total
    assert "params" not in report.roles  # lbfgs's own `params` field is a state's
    assert len(repr(report).splitlines()) <= 30
    assert report._repr_html_().count(">device 0<") == 1


def test_unreadable_placements_are_no_placement() -> None:
    from jax.sharding import AbstractMesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = AbstractMesh((2,), ("data",))
    tree = {"plain": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=NamedSharding(mesh, P("data")))}
    try:  # JAX from 0.12 makes abstract meshes Explicit, where an unconstrained spec is refused
        unconstrained = NamedSharding(mesh, P(P.UNCONSTRAINED))
    except ValueError:
        unconstrained = None
    if unconstrained is not None:
        tree["spec"] = jax.ShapeDtypeStruct((4, 4), jnp.float32, sharding=unconstrained)
    usage = oi.memory(tree).roles["other"]
    unplaced = 64 if unconstrained is not None else 0
    assert (usage.total_bytes, usage.unplaced_bytes, usage.devices) == (16, unplaced, (0, 1))
    text = str(oi.describe(tree))
    assert "plain: f32[4] @ P('data',)" in text
    assert unconstrained is None or "spec: f32[4,4]" in text


def test_finding_lines_are_bounded_whatever_the_keys() -> None:
    state = optax.adam(1e-3).init({"k" * 5000: jnp.ones(2), "k" * 4000: jnp.ones(2)})
    report = oi.check(oi.set(state, "mu.*", jnp.array([1.0, jnp.nan]), every=True))
    assert [f.kind for f in report] == ["nonfinite_origin", "nonfinite", "nonfinite"]
    assert max(len(line) for line in str(report).splitlines()) < 1000


def test_moments_of_scalar_parameters_stay_moments() -> None:
    params = {"temperature": jnp.float32(1.0), "w": jnp.ones(3)}
    roles = oi.memory(optax.adam(1e-3).init(params), params=params).roles
    assert list(roles) == ["params", "mu", "nu", "hyperparameters and counters"]
    only = {"temperature": jnp.float32(1.0)}
    assert "mu" in oi.memory(optax.adam(1e-3).init(only)).roles


def test_shardings_given_as_specs_under_a_mesh() -> None:
    """A ShapeDtypeStruct's bare PartitionSpec is read under its mesh; each read makes a new
    sharding, and every leaf still counts its own bytes."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    use_mesh = getattr(jax, "set_mesh", None) or getattr(jax.sharding, "use_mesh", None)
    if use_mesh is None:
        pytest.skip("this JAX has no mesh context for bare specs")
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    try:
        tree = [jax.ShapeDtypeStruct((n + 1,), jnp.float32, sharding=P("data")) for n in range(400)]
    except ValueError:
        pytest.skip("this JAX takes no bare spec in a ShapeDtypeStruct")
    with use_mesh(mesh):
        try:
            report = oi.memory(tree)
        except TypeError:
            pytest.skip("this JAX takes no bare spec in a ShapeDtypeStruct")
    expected = sum((n + 1) * 4 for n in range(400))
    assert report.roles["other"].total_bytes in (expected, 0)  # placed where JAX can read it
    assert report.roles["other"].total_bytes + report.roles["other"].unplaced_bytes == expected
