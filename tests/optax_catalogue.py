"""How to build every public GradientTransformation factory of optax, for the coverage tests.

`FACTORIES` maps each factory's public name to a builder of a `Case`. `public_factories()` enumerates
the installed optax at run time, so a new factory that is neither here nor in `EXCLUDED` fails
`test_every_public_factory_is_covered`.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import optax
import optax.contrib as oc
import optax.transforms

P = {"dense": {"kernel": jnp.full((8, 4), 0.5), "bias": jnp.full((4,), 0.25)}, "head": jnp.full((4, 2), 0.5)}
MASK = jax.tree.map(lambda x: x.ndim == 2, P)
LABELS = jax.tree.map(lambda x: "a" if x.ndim == 2 else "b", P)


def loss(params: Any) -> jax.Array:
    return sum(jnp.sum(x**2) for x in jax.tree.leaves(params))  # type: ignore[return-value]


@dataclass
class Case:
    """An optimizer with the params, gradients and extra `update` arguments it needs."""

    tx: optax.GradientTransformation
    params: Any = field(default_factory=lambda: P)
    grads: Any = None
    extra: tuple[str, ...] = ()
    """Extra `update` arguments: any of "value", "grad", "value_fn", "obj_fn"."""
    settles_after_first_update: bool = False
    """The state structure changes at the first update (`monitor`)."""

    def gradients(self) -> Any:
        return jax.tree.map(jnp.ones_like, self.params) if self.grads is None else self.grads

    def extra_args(self, params: Any) -> dict[str, Any]:
        values = {
            "value": lambda: loss(params),
            "grad": lambda: jax.grad(loss)(params),
            "value_fn": lambda: loss,
            "obj_fn": lambda: loss,
        }
        return {name: values[name]() for name in self.extra}


def _line_search(tx: optax.GradientTransformation) -> Case:
    return Case(tx, grads=jax.grad(loss)(P), extra=("value", "grad", "value_fn"))


def _batched(tx: optax.GradientTransformation) -> Case:
    return Case(tx, grads=jax.tree.map(lambda x: jnp.ones((2, *x.shape)), P))


def _deprecated_inject() -> Case:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return Case(optax.inject_stateful_hyperparams(optax.adam)(learning_rate=1e-3))


def _lookahead() -> Case:
    tx = optax.lookahead(optax.adam(1e-3), 2, 0.5)
    return Case(tx, params=optax.LookaheadParams.init_synced(P), grads=jax.tree.map(jnp.ones_like, P))


SCHEDULE = optax.linear_schedule(1e-3, 0.0, 100)


def installed(name: str) -> bool:
    """Whether the installed optax has the factory `name` (`contrib.x` for optax.contrib.x)."""
    module, _, attribute = name.rpartition(".")
    modules = [oc] if module == "contrib" else [optax, optax.transforms]
    return any(hasattr(candidate, attribute) for candidate in modules)


ALL_FACTORIES: dict[str, Callable[[], Case]] = {
    # A. aliases
    "adabelief": lambda: Case(optax.adabelief(1e-3)),
    "adadelta": lambda: Case(optax.adadelta()),
    "adafactor": lambda: Case(optax.adafactor()),
    "adagrad": lambda: Case(optax.adagrad(1e-3)),
    "adam": lambda: Case(optax.adam(1e-3)),
    "adamax": lambda: Case(optax.adamax(1e-3)),
    "adamaxw": lambda: Case(optax.adamaxw(1e-3)),
    "adamw": lambda: Case(optax.adamw(1e-3)),
    "adan": lambda: Case(optax.adan(1e-3)),
    "amsgrad": lambda: Case(optax.amsgrad(1e-3)),
    "fromage": lambda: Case(optax.fromage(1e-3)),
    "lamb": lambda: Case(optax.lamb(1e-3)),
    "lars": lambda: Case(optax.lars(1e-3)),
    "lbfgs": lambda: _line_search(optax.lbfgs()),
    "lion": lambda: Case(optax.lion(1e-3)),
    "nadam": lambda: Case(optax.nadam(1e-3)),
    "nadamw": lambda: Case(optax.nadamw(1e-3)),
    "noisy_sgd": lambda: Case(optax.noisy_sgd(1e-3, key=0)),
    "novograd": lambda: Case(optax.novograd(1e-3)),
    "optimistic_adam": lambda: Case(optax.optimistic_adam(1e-3)),
    "optimistic_adam_v2": lambda: Case(optax.optimistic_adam_v2(1e-3)),
    "optimistic_gradient_descent": lambda: Case(optax.optimistic_gradient_descent(1e-3)),
    "polyak_sgd": lambda: Case(optax.polyak_sgd(), extra=("value",)),
    "radam": lambda: Case(optax.radam(1e-3)),
    "rmsprop": lambda: Case(optax.rmsprop(1e-3)),
    "rprop": lambda: Case(optax.rprop(1e-3)),
    "sgd": lambda: Case(optax.sgd(1e-3, momentum=0.9)),
    "sign_sgd": lambda: Case(optax.sign_sgd(1e-3)),
    "signum": lambda: Case(optax.signum(1e-3)),
    "sm3": lambda: Case(optax.sm3(1e-3)),
    "yogi": lambda: Case(optax.yogi(1e-3)),
    # B. scale_by_* and simple transforms
    "scale_by_adadelta": lambda: Case(optax.scale_by_adadelta()),
    "scale_by_adam": lambda: Case(optax.scale_by_adam()),
    "scale_by_adamax": lambda: Case(optax.scale_by_adamax()),
    "scale_by_adan": lambda: Case(optax.scale_by_adan()),
    "scale_by_amsgrad": lambda: Case(optax.scale_by_amsgrad()),
    "scale_by_belief": lambda: Case(optax.scale_by_belief()),
    "scale_by_distance_over_gradients": lambda: Case(optax.scale_by_distance_over_gradients()),
    "scale_by_factored_rms": lambda: Case(optax.scale_by_factored_rms()),
    "scale_by_lbfgs": lambda: Case(optax.scale_by_lbfgs()),
    "scale_by_learning_rate": lambda: Case(optax.scale_by_learning_rate(1e-3)),
    "scale_by_lion": lambda: Case(optax.scale_by_lion()),
    "scale_by_novograd": lambda: Case(optax.scale_by_novograd()),
    "scale_by_optimistic_gradient": lambda: Case(optax.scale_by_optimistic_gradient()),
    "scale_by_param_block_norm": lambda: Case(optax.scale_by_param_block_norm()),
    "scale_by_param_block_rms": lambda: Case(optax.scale_by_param_block_rms()),
    "scale_by_radam": lambda: Case(optax.scale_by_radam()),
    "scale_by_rms": lambda: Case(optax.scale_by_rms()),
    "scale_by_rss": lambda: Case(optax.scale_by_rss()),
    "scale_by_sign": lambda: Case(optax.scale_by_sign()),
    "scale_by_sm3": lambda: Case(optax.scale_by_sm3()),
    "scale_by_stddev": lambda: Case(optax.scale_by_stddev()),
    "scale_by_trust_ratio": lambda: Case(optax.scale_by_trust_ratio()),
    "scale_by_yogi": lambda: Case(optax.scale_by_yogi()),
    "add_decayed_weights": lambda: Case(optax.add_decayed_weights(1e-4)),
    "apply_every": lambda: Case(optax.apply_every(2)),
    "centralize": lambda: Case(optax.centralize()),
    "identity": lambda: Case(optax.identity()),
    "keep_params_nonnegative": lambda: Case(optax.keep_params_nonnegative()),
    "normalize_by_update_norm": lambda: Case(optax.normalize_by_update_norm()),
    "set_to_zero": lambda: Case(optax.set_to_zero()),
    "zero_nans": lambda: Case(optax.zero_nans()),
    "scale_by_rprop": lambda: Case(optax.scale_by_rprop(1e-3)),
    "scale_by_polyak": lambda: Case(optax.scale_by_polyak(), extra=("value",)),
    "scale_by_backtracking_linesearch": lambda: _line_search(
        optax.scale_by_backtracking_linesearch(max_backtracking_steps=5)
    ),
    "scale_by_zoom_linesearch": lambda: _line_search(optax.scale_by_zoom_linesearch(max_linesearch_steps=5)),
    "scale": lambda: Case(optax.scale(0.5)),
    "scale_by_schedule": lambda: Case(optax.scale_by_schedule(SCHEDULE)),
    "stateless": lambda: Case(optax.stateless(lambda u, p: u)),
    "stateless_with_tree_map": lambda: Case(optax.stateless_with_tree_map(lambda u, p: -u)),
    # C. optax.transforms leaves
    "adaptive_grad_clip": lambda: Case(optax.adaptive_grad_clip(0.1)),
    "add_noise": lambda: Case(optax.add_noise(0.01, 0.55, key=0)),
    "clip": lambda: Case(optax.clip(1.0)),
    "clip_by_block_rms": lambda: Case(optax.clip_by_block_rms(1.0)),
    "clip_by_global_norm": lambda: Case(optax.clip_by_global_norm(1.0)),
    "ema": lambda: Case(optax.ema(0.9)),
    "trace": lambda: Case(optax.trace(0.9)),
    "freeze": lambda: Case(optax.transforms.freeze(MASK)),
    "monitor": lambda: Case(optax.monitor({"gnorm": optax.global_norm}), settles_after_first_update=True),
    "snapshot": lambda: Case(optax.snapshot("gnorm", optax.global_norm)),
    "measure_with_ema": lambda: Case(optax.measure_with_ema(optax.global_norm, 0.9)),
    # D. wrappers and combinators
    "chain": lambda: Case(optax.chain(optax.clip(1.0), optax.sgd(0.1))),
    "named_chain": lambda: Case(optax.named_chain(("clip", optax.clip(1.0)), ("opt", optax.sgd(0.1)))),
    "masked": lambda: Case(optax.masked(optax.sgd(0.1, momentum=0.9), MASK)),
    "multi_transform": lambda: Case(optax.partition({"a": optax.adam(1e-3), "b": optax.sgd(0.1)}, LABELS)),
    "apply_if_finite": lambda: Case(optax.apply_if_finite(optax.sgd(0.1), 3)),
    "conditionally_mask": lambda: Case(optax.conditionally_mask(optax.sgd(0.1), lambda step: step % 2 == 0)),
    "conditionally_transform": lambda: Case(
        optax.conditionally_transform(optax.sgd(0.1), lambda step: step % 2 == 0)
    ),
    "flatten": lambda: Case(optax.flatten(optax.adam(1e-3))),
    "selective_transform": lambda: Case(
        optax.transforms.selective_transform(optax.adam(1e-3), freeze_mask=MASK)
    ),
    "with_extra_args_support": lambda: Case(optax.with_extra_args_support(optax.sgd(0.1))),
    "lookahead": _lookahead,
    "MultiSteps": lambda: Case(optax.MultiSteps(optax.adam(1e-3), 2).gradient_transformation()),
    "inject_hyperparams": lambda: Case(optax.inject_hyperparams(optax.adam)(learning_rate=SCHEDULE)),
    "inject_stateful_hyperparams": _deprecated_inject,
    # E. contrib
    "contrib.acprop": lambda: Case(oc.acprop(1e-3)),
    "contrib.ademamix": lambda: Case(oc.ademamix(1e-3)),
    "contrib.adopt": lambda: Case(oc.adopt(1e-3)),
    "contrib.madgrad": lambda: Case(oc.madgrad(1e-3)),
    "contrib.simplified_ademamix": lambda: Case(oc.simplified_ademamix(1e-3)),
    "contrib.galore": lambda: Case(oc.galore(1e-3)),
    "contrib.muon": lambda: Case(oc.muon(1e-3)),
    "contrib.cocob": lambda: Case(oc.cocob()),
    "contrib.dadapt_adamw": lambda: Case(oc.dadapt_adamw()),
    "contrib.prodigy": lambda: Case(oc.prodigy()),
    "contrib.schedule_free_adamw": lambda: Case(oc.schedule_free_adamw()),
    "contrib.schedule_free_sgd": lambda: Case(oc.schedule_free_sgd()),
    "contrib.normalize": lambda: Case(oc.normalize()),
    "contrib.scale_by_acprop": lambda: Case(oc.scale_by_acprop()),
    "contrib.scale_by_ademamix": lambda: Case(oc.scale_by_ademamix()),
    "contrib.scale_by_adopt": lambda: Case(oc.scale_by_adopt()),
    "contrib.scale_by_cocob": lambda: Case(oc.scale_by_cocob()),
    "contrib.scale_by_galore": lambda: Case(oc.scale_by_galore()),
    # Standalone scale_by_muon fails on dict params (a None prefix); it runs on one 2-D array.
    "contrib.scale_by_muon": lambda: Case(oc.scale_by_muon(), params=jnp.full((8, 4), 0.5)),
    "contrib.scale_by_simplified_ademamix": lambda: Case(oc.scale_by_simplified_ademamix()),
    "contrib.dog": lambda: Case(oc.dog()),
    "contrib.dowg": lambda: Case(oc.dowg()),
    "contrib.scale_by_madgrad": lambda: Case(oc.scale_by_madgrad(1e-3)),
    "contrib.momo": lambda: Case(oc.momo(), extra=("value",)),
    "contrib.momo_adam": lambda: Case(oc.momo_adam(), extra=("value",)),
    "contrib.reduce_on_plateau": lambda: Case(oc.reduce_on_plateau(), extra=("value",)),
    "contrib.sophia": lambda: Case(oc.sophia(1e-3), extra=("obj_fn",)),
    "contrib.hutchinson_estimator_diag_hessian": lambda: Case(
        oc.hutchinson_estimator_diag_hessian(), extra=("obj_fn",)
    ),
    "contrib.mechanize": lambda: Case(oc.mechanize(optax.adam(1e-3))),
    "contrib.schedule_free": lambda: Case(oc.schedule_free(optax.adam(1e-3, b1=0.0), 1e-3)),
    "contrib.sam": lambda: Case(oc.sam(optax.sgd(0.1), optax.chain(oc.normalize(), optax.sgd(0.05)))),
    "contrib.split_real_and_imaginary": lambda: Case(oc.split_real_and_imaginary(optax.sgd(0.1))),
    "contrib.differentially_private_aggregate": lambda: _batched(
        oc.differentially_private_aggregate(1.0, 0.1, key=0)
    ),
    "contrib.dpsgd": lambda: _batched(oc.dpsgd(1e-3, 1.0, 0.1, seed=0)),
}

FACTORIES = {name: case for name, case in ALL_FACTORIES.items() if installed(name)}
"""The factories of the catalogue that the installed optax has (older ones lack some)."""

EXCLUDED: dict[str, str] = {}
"""Factories that are public but cannot be built here, each with its reason (none today)."""


def _injected(
    entries: list[tuple[str, tuple[str, ...]]],
) -> dict[str, tuple[Callable[..., Any], tuple[str, ...]]]:
    found = {}
    for name, static in entries:
        if installed(name):
            module, _, attribute = name.rpartition(".")
            found[name] = (getattr(oc if module == "contrib" else optax, attribute), static)
    return found


INJECTED: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = _injected(
    [
        ("adabelief", ()),
        ("adadelta", ()),
        ("adafactor", ("min_dim_size_to_factor",)),
        ("adagrad", ()),
        ("adam", ()),
        ("adamax", ()),
        ("adamaxw", ()),
        ("adamw", ()),
        ("adan", ()),
        ("amsgrad", ()),
        ("fromage", ()),
        ("lamb", ()),
        ("lars", ()),
        ("lion", ()),
        ("nadam", ()),
        ("nadamw", ()),
        ("noisy_sgd", ("key",)),
        ("novograd", ()),
        ("optimistic_adam", ()),
        ("optimistic_gradient_descent", ()),
        ("radam", ()),
        ("rmsprop", ()),
        ("rprop", ()),
        ("sgd", ()),
        ("sign_sgd", ()),
        ("signum", ()),
        ("sm3", ()),
        ("yogi", ()),
        ("contrib.acprop", ()),
        ("contrib.ademamix", ()),
        ("contrib.adopt", ("clip_value_fn",)),
        ("contrib.madgrad", ()),
        ("contrib.simplified_ademamix", ()),
        ("contrib.muon", ()),
        ("contrib.prodigy", ()),
        ("contrib.schedule_free_adamw", ()),
        ("contrib.schedule_free_sgd", ()),
    ]
)
"""Factories with a `learning_rate` that `inject_hyperparams` takes, and the static_args they need."""


def injected_case(name: str, scheduled: bool) -> Case:
    factory, static = INJECTED[name]
    learning_rate = SCHEDULE if scheduled else 1e-3
    extra = {"key": 0} if "key" in static else {}
    return Case(optax.inject_hyperparams(factory, static_args=static)(learning_rate=learning_rate, **extra))


_UNANNOTATED = {
    "monitor",
    "scale_by_factored_rms",
    "dog",
    "dowg",
    "hutchinson_estimator_diag_hessian",
    "MultiSteps",
}


def public_factories() -> dict[str, Any]:
    """Every public factory of the installed optax, optax.contrib and optax.transforms, by identity."""
    found: dict[int, str] = {}
    for module, prefix in ((optax, ""), (optax.contrib, "contrib."), (optax.transforms, "")):
        for name in sorted(dir(module)):
            if name.startswith("_"):
                continue
            try:
                value = getattr(module, name)
            except (AttributeError, ImportError):
                continue
            if not callable(value) or (isinstance(value, type) and name != "MultiSteps"):
                continue
            try:
                annotation = str(inspect.signature(value).return_annotation)
            except (TypeError, ValueError):
                annotation = ""
            if "GradientTransformation" in annotation or name in _UNANNOTATED:
                found.setdefault(id(value), prefix + name)
    return {name: None for name in found.values()}
