"""Gradient-masking and evaluation sanity checks (after Croce & Hein's AutoAttack flags and
Carlini et al. 2019, "On evaluating adversarial robustness", Sec. 5).

Each check is a pure measurement plus a warning rule; ``run_checks`` runs them on a few hundred
test points and returns ``(measurements, warnings)`` for the report. A warning does not prove
gradient masking, and no warning does not prove its absence: they point at evaluations to redo
with stronger or adaptive attacks.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advjax import attacks, losses
from advjax.attacks.base import MODEL_KEY, with_model_key
from advjax.eval.presets import ThreatSettings
from advjax.eval.suite import SuiteResult

EPS_FACTORS = (0.25, 0.5, 1.0, 2.0)
STEP_COUNTS = (10, 20, 40)


@functools.partial(jax.jit, static_argnums=0)
def input_gradient_stats(model_fn, variables: Any, x: jax.Array, y: jax.Array) -> dict:
    """Fractions of points whose cross-entropy input gradient is exactly zero or non-finite."""

    def loss(x_):
        return jnp.sum(losses.cross_entropy(model_fn(variables, x_), y))

    grad = jax.grad(loss)(x).reshape(x.shape[0], -1)
    finite = jnp.all(jnp.isfinite(grad), axis=1)
    zero = finite & jnp.all(grad == 0, axis=1)
    return {
        "zero_gradient_fraction": jnp.mean(zero),
        "nonfinite_gradient_fraction": jnp.mean(~finite),
    }


def output_randomness(model_fn, variables: Any, x: jax.Array, key: jax.Array) -> float:
    """Largest change of the logits between two forward passes of the same inputs.

    Models that read a PRNG key from ``variables[MODEL_KEY]`` get two different keys.
    """
    if isinstance(variables, dict) and MODEL_KEY in variables:
        k1, k2 = jax.random.split(key)
        a = model_fn(with_model_key(variables, k1), x)
        b = model_fn(with_model_key(variables, k2), x)
    else:
        a, b = model_fn(variables, x), model_fn(variables, x)
    return float(jnp.max(jnp.abs(a - b)))


def probability_output_fraction(logits: jax.Array, tol: float = 1e-3) -> float:
    """Fraction of rows that are non-negative and sum to one: softmax outputs, not logits."""
    nonneg = jnp.all(logits >= 0, axis=-1)
    unit = jnp.abs(jnp.sum(logits, axis=-1) - 1.0) < tol
    return float(jnp.mean(nonneg & unit))


def blackbox_only_breaks(result: SuiteResult) -> dict[str, int]:
    """Per black-box/transfer entry: points it breaks that no white-box entry breaks."""
    white = [e.name for e in result.entries if e.kind == "white-box"]
    if not white:
        return {}
    white_robust = np.logical_and.reduce([result.correct[n] for n in white])
    clean = result.correct["clean"]
    out = {}
    for e in result.entries:
        if e.kind in ("black-box", "hard-label", "transfer"):
            broken = clean & ~result.correct[e.name]
            out[e.name] = int(np.sum(broken & white_robust & result.evaluated))
    return out


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _pgd_accuracy_jit(model_fn, variables, x, y, key, norm: str, steps: int, eps: jax.Array):
    # Unit-budget PGD scaled by a traced eps: one compilation serves every eps.
    attack = attacks.pgd(1.0, 2.5 / steps, steps, norm=norm, unroll=1).scaled(eps)
    x_adv = attack(model_fn, variables, x, y, key)
    clean = jnp.argmax(model_fn(variables, x), -1) == y
    return jnp.mean(clean & (jnp.argmax(model_fn(variables, x_adv), -1) == y))


def _pgd_accuracy(model_fn, variables, x, y, key, norm, eps, steps) -> float:
    """Accuracy under PGD-``steps`` (step 2.5 eps / steps, random start)."""
    return float(_pgd_accuracy_jit(model_fn, variables, x, y, key, norm, steps, jnp.float32(eps)))


def unbounded_eps(norm: str, x: jax.Array) -> float:
    """A budget that contains the whole [0, 1] box."""
    d = int(np.prod(x.shape[1:]))
    return {"linf": 1.0, "l2": float(np.sqrt(d)), "l1": float(d)}[norm]


def run_checks(
    model_fn,
    variables: Any,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    settings: ThreatSettings,
    result: SuiteResult | None = None,
    tolerance: float = 0.01,
) -> tuple[dict[str, Any], list[str]]:
    """Runs every check on the points ``x, y``; returns measurements and warning messages.

    ``tolerance``: accuracy increase (fraction) still accepted as noise in the monotonicity checks.
    """
    warnings: list[str] = []
    k_rand, k_eps, k_steps, k_unb = jax.random.split(key, 4)
    m: dict[str, Any] = {"num_points": int(x.shape[0])}

    grads = {k: float(v) for k, v in input_gradient_stats(model_fn, variables, x, y).items()}
    m.update(grads)
    if grads["zero_gradient_fraction"] > 0:
        warnings.append(
            f"{100 * grads['zero_gradient_fraction']:.1f}% of points have an exactly zero input "
            "gradient (quantisation or saturation?): gradient attacks cannot move them"
        )
    if grads["nonfinite_gradient_fraction"] > 0:
        warnings.append(
            f"{100 * grads['nonfinite_gradient_fraction']:.1f}% of points have non-finite input "
            "gradients"
        )

    m["output_change_between_passes"] = output_randomness(model_fn, variables, x, k_rand)
    if m["output_change_between_passes"] > 0:
        warnings.append(
            "the model is randomised (two passes differ): evaluate with EoT (aa_rand) and "
            "repeat the evaluation"
        )

    m["probability_output_fraction"] = probability_output_fraction(model_fn(variables, x))
    if m["probability_output_fraction"] > 0.5:
        warnings.append(
            "the model outputs look like probabilities, not logits: cross-entropy gradients "
            "vanish; pass the logits"
        )

    eps_curve = [
        _pgd_accuracy(model_fn, variables, x, y, k_eps, settings.norm, f * settings.eps, 20)
        for f in EPS_FACTORS
    ]
    m["pgd20_accuracy_vs_eps"] = dict(zip([f"{f}x" for f in EPS_FACTORS], eps_curve, strict=True))
    if any(b > a + tolerance for a, b in zip(eps_curve, eps_curve[1:], strict=False)):
        warnings.append(f"PGD-20 accuracy does not fall as eps grows: {eps_curve}")
    step_curve = [
        _pgd_accuracy(model_fn, variables, x, y, k_steps, settings.norm, settings.eps, s)
        for s in STEP_COUNTS
    ]
    m["pgd_accuracy_vs_steps"] = dict(zip(map(str, STEP_COUNTS), step_curve, strict=True))
    if any(b > a + tolerance for a, b in zip(step_curve, step_curve[1:], strict=False)):
        warnings.append(f"PGD accuracy does not fall with more steps: {step_curve}")

    big = unbounded_eps(settings.norm, x)
    m["unbounded_pgd100_accuracy"] = _pgd_accuracy(
        model_fn, variables, x, y, k_unb, settings.norm, big, 100
    )
    if m["unbounded_pgd100_accuracy"] > 0:
        warnings.append(
            f"PGD-100 with an unbounded budget ({settings.norm} eps {big:g}) leaves "
            f"{100 * m['unbounded_pgd100_accuracy']:.1f}% accuracy: it should reach 0%; the "
            "gradients are uninformative somewhere"
        )

    if result is not None:
        only = blackbox_only_breaks(result)
        m["blackbox_only_breaks"] = only
        for name, count in only.items():
            if count:
                warnings.append(
                    f"{name} breaks {count} points that no white-box attack breaks: the white-box "
                    "attacks are failing (gradient masking?)"
                )
    return m, warnings
