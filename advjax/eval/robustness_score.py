"""The Robustness Score of seed 001 (Sec. 4.3, Fig. 7): comprehensive robustness in one number.

"We evaluate their robustness by PGD, Flow-based and RT attacks under different iteration steps.
After equally averaging robust accuracy for each category of these attacks, we then compute the
difference of robust accuracy between different training strategies and standard training".
With categories ``C`` (PGD, flow, RT), iteration counts ``K_c`` and robust accuracy
``acc_f(c, k)`` of model ``f`` under the attack of category ``c`` with ``k`` iterations::

    A_f(c)  = mean_{k in K_c} acc_f(c, k)                  (per-category mean)
    score_f = mean_{c in C} A_f(c) - mean_{c in C} A_nat(c)  (nat: the naturally trained model)
    sacrificed_f = clean_nat - clean_f                      (Fig. 7's vertical axis)

The document's appendix with the attacks' settings is missing; the defaults here are our choice:
each category at 10, 20 and 40 iterations; PGD in the Linf ball of radius 0.3 with step 0.01 and a
random start (ATLAS App. B's MNIST step, as ``configs/mnist.py`` evaluates); flow (``flow_pgd``,
``eps_flow`` 0.05) and RT (the document's generic affine RT attack ``affine_pgd``, ``eps_affine``
0.1) with ``ThreatSettings``'s bounds and the factories' step ``2.5 * bound / steps``. Category
``rt_pgd`` (Engstrom et al.'s rotation-translation, +-30 degrees, +-3 px) can replace ``rt`` or
be a category of its own (every category weighs the same in the score).

    suite = robustness_suite({"pgd": (10, 20, 40), "flow": (10, 20, 40), "rt": (10, 20, 40)})
    accuracy = evaluate_robustness(model_fn, variables, test_set, suite, state_path="rs.npz")
    robustness_score(accuracy, natural_accuracy, DEFAULT_CATEGORIES)["score"]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from advjax.data import Dataset
from advjax.eval.presets import ThreatSettings
from advjax.eval.suite import evaluate_suite

DEFAULT_STEPS: tuple[int, ...] = (10, 20, 40)  # our choice (seed 001 App. A is missing)
DEFAULT_CATEGORIES: dict[str, tuple[int, ...]] = {
    "pgd": DEFAULT_STEPS,
    "flow": DEFAULT_STEPS,
    "rt": DEFAULT_STEPS,
}
# The suite's threat model: ThreatSettings' bounds, PGD step 0.01 (our choice, ATLAS App. B).
DEFAULT_SETTINGS = ThreatSettings(step_size=0.01)

# category -> (registry attack, human name)
CATEGORY_ATTACKS: dict[str, tuple[str, str]] = {
    "pgd": ("pgd", "PGD"),
    "flow": ("flow_pgd", "Flow"),
    "rt": ("affine_pgd", "RT (affine)"),
    "rt_pgd": ("rt_pgd", "RT (rotation-translation)"),
}


def entry_label(category: str, steps: int) -> str:
    """The suite label of ``category`` at ``steps`` iterations: ``pgd_10``, ``flow_20``, ..."""
    return f"{category}_{int(steps)}"


def _check_categories(categories: Mapping[str, Sequence[int]]) -> None:
    if not categories:
        raise ValueError("the Robustness Score needs at least one attack category")
    for category, steps in categories.items():
        if category not in CATEGORY_ATTACKS:
            raise ValueError(
                f"unknown attack category {category!r}; valid: {', '.join(CATEGORY_ATTACKS)}"
            )
        if not steps or any(isinstance(k, bool) or int(k) != k or k < 1 for k in steps):
            raise ValueError(
                f"category {category!r} needs positive integer iteration counts, got {steps!r}"
            )


def _spec(category: str, steps: int, s: ThreatSettings) -> dict[str, Any]:
    label = entry_label(category, steps)
    if category == "pgd":
        pgd = {
            "name": "pgd",
            "eps": s.eps,
            "norm": s.norm,
            "step_size": s.step_size,
            "steps": steps,
        }
        if s.restarts > 1:
            return {"name": "restarts", "label": label, "restarts": s.restarts, "attack": pgd}
        return {**pgd, "label": label}
    spatial = {"steps": steps, "padding": s.padding, "label": label, "bounded": False}
    if category == "flow":
        return {"name": "flow_pgd", "eps_flow": s.eps_flow, **spatial}
    if category == "rt":
        return {"name": "affine_pgd", "eps_affine": s.eps_affine, **spatial}
    bounds = {"max_angle": s.max_angle, "max_translation": s.max_translation}
    return {"name": "rt_pgd", **bounds, **spatial}


def robustness_suite(
    categories: Mapping[str, Sequence[int]] = DEFAULT_CATEGORIES,
    settings: ThreatSettings = DEFAULT_SETTINGS,
) -> list[dict[str, Any]]:
    """The suite entries of the score, category by category, in increasing iteration counts.

    Each entry is a spec dict for ``advjax.eval.evaluate_suite`` labelled ``<category>_<steps>``
    with every bound written out: ``pgd`` (``settings.norm`` ball of radius ``settings.eps``, step
    ``settings.step_size`` (None: ``2.5 eps / steps``), random start, ``settings.restarts``),
    ``flow`` (``flow_pgd``, ``settings.eps_flow``), ``rt`` (``affine_pgd``,
    ``settings.eps_affine``), ``rt_pgd`` (``settings.max_angle``, ``settings.max_translation``).
    Spatial steps are the factories' ``2.5 * bound / steps``. Pass the same ``settings`` to
    ``evaluate_robustness`` (the PGD bounds check reads its norm and eps).
    """
    _check_categories(categories)
    return [
        _spec(category, int(k), settings)
        for category, steps in categories.items()
        for k in sorted({int(k) for k in steps})
    ]


def describe_suite(
    categories: Mapping[str, Sequence[int]] = DEFAULT_CATEGORIES,
    settings: ThreatSettings = DEFAULT_SETTINGS,
) -> list[str]:
    """One line per category: the attack, its bounds and iteration counts (for reports)."""
    _check_categories(categories)
    lines = []
    for category, steps in categories.items():
        counts = "/".join(str(k) for k in sorted({int(k) for k in steps}))
        name, title = CATEGORY_ATTACKS[category]
        if category == "pgd":
            step = "2.5 eps / steps" if settings.step_size is None else f"{settings.step_size:g}"
            bounds = f"{settings.norm} eps {settings.eps_text}, step {step}, random start"
            if settings.restarts > 1:
                bounds += f", {settings.restarts} restarts"
        elif category == "flow":
            bounds = f"eps_flow {settings.eps_flow:g} (normalised units), step 2.5 eps / steps"
        elif category == "rt":
            bounds = f"eps_affine {settings.eps_affine:g}, step 2.5 eps / steps"
        else:
            bounds = (
                f"max_angle {settings.max_angle:g} deg, max_translation "
                f"{settings.max_translation:g} px, step 2.5 bound / steps"
            )
        lines.append(f"{title} (`{name}`; {bounds}): {counts} iterations")
    return lines


def category_accuracy(
    accuracy: Mapping[str, float], categories: Mapping[str, Sequence[int]]
) -> dict[str, float]:
    """``A(c) = mean_{k in K_c} accuracy[<c>_<k>]`` for every category ``c``."""
    _check_categories(categories)
    out = {}
    for category, steps in categories.items():
        labels = [entry_label(category, k) for k in sorted({int(k) for k in steps})]
        missing = [label for label in labels if label not in accuracy]
        if missing:
            raise KeyError(
                f"no accuracy for {', '.join(missing)}: evaluate the model with "
                f"robustness_suite(categories) (have: {', '.join(sorted(accuracy))})"
            )
        out[category] = math.fsum(float(accuracy[label]) for label in labels) / len(labels)
    return out


def robustness_score(
    accuracy: Mapping[str, float],
    natural_accuracy: Mapping[str, float],
    categories: Mapping[str, Sequence[int]] = DEFAULT_CATEGORIES,
) -> dict[str, Any]:
    """Seed 001's Robustness Score of a model against the naturally trained one (Sec. 4.3).

    ``accuracy`` and ``natural_accuracy`` map suite labels (``clean``, ``pgd_10``, ...) to
    accuracies in [0, 1] (``evaluate_robustness``'s output). Returns, as fractions::

        category_accuracy[c]          A_f(c) = mean_k acc_f(c, k)
        robust_accuracy               mean_c A_f(c)
        score                         mean_c A_f(c) - mean_c A_nat(c)
        category_score[c]             A_f(c) - A_nat(c)   (score = mean_c category_score[c])
        clean_accuracy                clean_f
        sacrificed_clean_accuracy     clean_nat - clean_f  (negative: cleaner than natural)

    plus the natural model's ``natural_category_accuracy``, ``natural_robust_accuracy`` and
    ``natural_clean_accuracy``. The natural model's own score and sacrifice are 0.
    """
    own = category_accuracy(accuracy, categories)
    nat = category_accuracy(natural_accuracy, categories)
    for name, acc in (("accuracy", accuracy), ("natural_accuracy", natural_accuracy)):
        if "clean" not in acc:
            raise KeyError(f"{name} has no 'clean' entry (have: {', '.join(sorted(acc))})")
    robust = math.fsum(own.values()) / len(own)
    natural_robust = math.fsum(nat.values()) / len(nat)
    clean, natural_clean = float(accuracy["clean"]), float(natural_accuracy["clean"])
    return {
        "category_accuracy": own,
        "robust_accuracy": robust,
        "score": robust - natural_robust,
        "category_score": {c: own[c] - nat[c] for c in own},
        "clean_accuracy": clean,
        "sacrificed_clean_accuracy": natural_clean - clean,
        "natural_category_accuracy": nat,
        "natural_robust_accuracy": natural_robust,
        "natural_clean_accuracy": natural_clean,
    }


def evaluate_robustness(
    model_fn,
    variables: Any,
    dataset: Dataset,
    suite: Sequence[dict[str, Any]] | None = None,
    *,
    settings: ThreatSettings = DEFAULT_SETTINGS,
    batch_size: int = 500,
    key: jax.Array | None = None,
    state_path: str | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Accuracy per suite label (``clean`` and ``worst_case`` included) of ``model_fn`` on every
    example of ``dataset`` (take a prefix for fewer) under ``suite`` (default:
    ``robustness_suite()``), by ``evaluate_suite``.

    With ``state_path`` (``.npz``) progress is saved after every batch and a rerun resumes; the
    state is tied to the suite, data, batch size and key (use one file per model and protocol).
    Raises if the evaluation did not finish.
    """
    entries = list(robustness_suite() if suite is None else suite)
    result = evaluate_suite(
        model_fn,
        variables,
        dataset,
        entries,
        settings=settings,
        batch_size=batch_size,
        key=jax.random.key(0) if key is None else key,
        state_path=state_path,
        progress=progress,
    )
    if not result.complete:
        raise RuntimeError(f"the robustness evaluation stopped at {result.num_examples} examples")
    return result.accuracy()
