"""One-call robustness benchmark: clean and AutoAttack accuracy, RobustBench's ``benchmark()``.

    result = advjax.eval.benchmark(model_fn, variables, "mnist", "Linf", 0.3, num_examples=1000)
    result.clean_accuracy, result.robust_accuracy   # 0.99, 0.88
    result.report                                   # the suite's report (advjax.eval.report)

The first ``num_examples`` test points of ``dataset`` are attacked by AutoAttack ``version``
(``"standard"``: APGD-CE, APGD-T, FAB-T and Square, each on the points the earlier ones left
robust; ``"plus"``, ``"rand"``) within the ``threat_model`` ball of radius ``eps``. The robust
accuracy is the fraction of points classified correctly both clean and under the attack. Each
point's randomness is ``fold_in`` of ``seed`` and its index, so results do not depend on the batch
size or the device count; with ``state_path`` an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np

from advjax.data import Dataset, load_dataset
from advjax.eval import report as report_lib
from advjax.eval.presets import ThreatSettings, parse_eps
from advjax.eval.suite import SuiteResult, evaluate_suite

THREAT_MODELS = {"linf": "linf", "l2": "l2", "l1": "l1"}
VERSIONS = ("standard", "plus", "rand")


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """Clean and robust accuracy over ``num_examples`` points, the report and per-point outcomes."""

    clean_accuracy: float
    robust_accuracy: float
    num_examples: int
    report: dict[str, Any]
    result: SuiteResult


def threat_norm(threat_model: str) -> str:
    """``"Linf"`` / ``"L2"`` / ``"L1"`` (any case) -> advjax's norm name."""
    norm = THREAT_MODELS.get(str(threat_model).strip().lower())
    if norm is None:
        raise ValueError(
            f"unknown threat model {threat_model!r}; valid threat models: Linf, L2, L1"
        )
    return norm


def benchmark(
    model_fn,
    variables: Any,
    dataset: Dataset | str,
    threat_model: str,
    eps: float | str,
    *,
    version: str = "standard",
    num_examples: int | None = None,
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 500,
    seed: int = 0,
    state_path: str | None = None,
    progress: bool = True,
    model_name: str = "",
) -> BenchmarkResult:
    """Clean and AutoAttack-``version`` accuracy of ``model_fn`` on ``dataset``'s test points.

    Args:
      model_fn: hashable ``model_fn(variables, x) -> logits`` on NHWC images in [0, 1]
        (``advjax.models.make_model_fn``; a converted PyTorch model carries its normalisation).
      dataset: a ``Dataset``, or a name from ``advjax.data.DATASETS`` whose test split is loaded
        from ``data_dir`` (else ``$ADVJAX_DATA_DIR``).
      threat_model: ``"Linf"``, ``"L2"`` or ``"L1"``.
      eps: the radius, a number or an exact fraction such as ``"8/255"``.
      version: AutoAttack's ``"standard"``, ``"plus"`` or ``"rand"``.
      num_examples: the first N test points (``None``: all of them).
    """
    norm = threat_norm(threat_model)
    if version not in VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; valid versions: {VERSIONS}")
    eps_value, eps_text = parse_eps(eps)
    if num_examples is not None and (isinstance(num_examples, bool) or int(num_examples) < 1):
        raise ValueError(f"num_examples must be a positive number of points, got {num_examples!r}")
    test = load_dataset(dataset, "test", data_dir) if isinstance(dataset, str) else dataset
    if num_examples is not None:
        test = test.take(np.arange(min(int(num_examples), len(test))))
    settings = ThreatSettings(
        norm=norm, eps=eps_value, eps_text=eps_text, num_classes=test.num_classes
    )
    result = evaluate_suite(
        model_fn,
        variables,
        test,
        ["clean", f"aa_{version}"],
        settings=settings,
        batch_size=batch_size,
        key=jax.random.key(seed),
        state_path=state_path,
        progress=progress,
    )
    acc = result.accuracy()
    rep = report_lib.build_report(
        result,
        settings,
        seed=seed,
        dataset=test.name,
        model=model_name,
        extra={"clean_accuracy": acc["clean"], "robust_accuracy": acc["worst_case"]},
    )
    return BenchmarkResult(
        clean_accuracy=acc["clean"],
        robust_accuracy=acc["worst_case"],
        num_examples=result.num_examples,
        report=rep,
        result=result,
    )
