"""The one-call benchmark, the black-box (transfer) column, and evaluating saved models.

Closed forms on a linear model ``z = W^T x + b`` whose points lie far inside the [0, 1] box:
the point is robust within the Linf ball of radius eps exactly when, for every k != y,
``z_y - z_k > eps ||w_y - w_k||_1`` (the box never binds), so AutoAttack must find every other
clean-correct point, and a transfer attack crafted on the negated model must find none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import linear_model_fn, linear_toy_problem

from advjax.data import Dataset
from advjax.eval import benchmark, presets
from advjax.eval.presets import ThreatSettings
from advjax.eval.suite import evaluate_suite
from advjax.experiment import evaluate_saved_model
from advjax.models import get_model, init_variables
from advjax.models.saved_model import save_model

REPO = Path(__file__).resolve().parents[1]
EPS = 0.05


@pytest.fixture(scope="module")
def problem():
    return linear_toy_problem(1, 24, (60, 196), 0.2, 6)  # pixels in [0.23, 0.77]


def linf_robust(dataset: Dataset, variables, eps: float) -> np.ndarray:
    """Exact Linf robustness of the linear model (the box does not bind)."""
    x = jnp.asarray(dataset.images, jnp.float32) / 255.0
    z = np.asarray(linear_model_fn(variables, x))
    w = np.asarray(variables["w"])
    y = dataset.labels
    margin = z[np.arange(len(y)), y][:, None] - z  # [N, K]
    cost = eps * np.abs(w[:, y].T[:, :, None] - w[None]).sum(axis=1)  # [N, K] ||w_y - w_k||_1
    others = np.arange(10)[None] != y[:, None]
    return np.all((margin > cost) | ~others, axis=1) & (np.argmax(z, -1) == y)


def test_benchmark_is_autoattack_and_meets_the_closed_form(problem):
    dataset, variables = problem
    exact = linf_robust(dataset, variables, EPS)
    assert (
        0
        < exact.sum()
        < (
            np.argmax(
                np.asarray(
                    linear_model_fn(variables, jnp.asarray(dataset.images, jnp.float32) / 255.0)
                ),
                -1,
            )
            == dataset.labels
        ).sum()
    )
    out = benchmark(
        linear_model_fn, variables, dataset, "Linf", "1/20", num_examples=20, batch_size=20,
        progress=False,
    )  # fmt: skip
    assert out.num_examples == 20
    np.testing.assert_array_equal(out.result.correct["aa_standard"], exact[:20])
    assert out.robust_accuracy == pytest.approx(exact[:20].mean())
    assert out.report["threat_model"]["eps_text"] == "1/20"
    assert [a["name"] for a in out.report["attacks"]] == ["clean", "aa_standard"]
    assert out.report["robust_accuracy"] == out.robust_accuracy <= out.clean_accuracy


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"threat_model": "L3"}, "unknown threat model 'L3'; valid threat models: Linf, L2, L1"),
        ({"version": "fast"}, "unknown AutoAttack version 'fast'"),
        ({"eps": -0.1}, "eps must be >= 0"),
        ({"num_examples": 0}, "num_examples must be a positive"),
    ],
)
def test_benchmark_rejects_bad_arguments(problem, kwargs, pattern):
    dataset, variables = problem
    args = {"threat_model": "Linf", "eps": 0.1, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        benchmark(linear_model_fn, variables, dataset, progress=False, **args)


def test_transfer_column_uses_the_surrogate_variables(problem):
    dataset, variables = problem
    settings = ThreatSettings(norm="linf", eps=EPS, eps_text="0.05", step_size=0.01)
    negated = jax.tree.map(jnp.negative, variables)
    same = presets.transfer_entry(linear_model_fn, variables, settings, steps=20, surrogate="twin")
    away = presets.transfer_entry(linear_model_fn, negated, settings, steps=20, surrogate="neg")
    assert same.kind == "transfer" and same.protocol["surrogate"] == "twin"
    assert same.protocol["steps"] == 20 and same.protocol["eps"] == EPS
    for entry, expected in ((same, linf_robust(dataset, variables, EPS)), (away, None)):
        result = evaluate_suite(
            linear_model_fn, variables, dataset, [entry], settings=settings, batch_size=12,
            progress=False,
        )  # fmt: skip
        if expected is None:  # crafted to help the negated model: nothing transfers
            expected = result.correct["clean"]
        np.testing.assert_array_equal(result.correct["transfer"], expected)
        assert result.violations["transfer"] == 0


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    model = get_model("mnist_fast_at")
    paths = []
    for seed in (0, 1):
        variables = init_variables(model, jax.random.key(seed), (28, 28, 1))
        paths.append(root / f"model{seed}")
        save_model(paths[-1], "mnist_fast_at", {}, variables)
    return paths


def test_evaluate_saved_model_with_a_surrogate(saved_models, tmp_path):
    target, surrogate = saved_models
    rep = evaluate_saved_model(
        str(target), "synthetic", num_examples=16, output=str(tmp_path / "a"),
        suite_names="clean,pgd3", run_checks=False, surrogate=str(surrogate), surrogate_steps=3,
        progress=False,
    )  # fmt: skip
    names = [a["name"] for a in rep["attacks"]]
    assert names == ["clean", "pgd3", "transfer"] and rep["num_examples"] == 16
    transfer = rep["attacks"][2]
    assert transfer["kind"] == "transfer" and transfer["protocol"]["steps"] == 3
    assert transfer["protocol"]["surrogate_source"]["saved_model"] == str(surrogate.resolve())
    assert rep["threat_model"]["eps_text"] == "0.3"  # the dataset's standard radius
    assert json.loads((tmp_path / "a" / "report.json").read_text())["complete"]
    with pytest.raises(ValueError, match="takes \\(28, 28, 1\\) images but cifar10"):
        evaluate_saved_model(str(target), "cifar10", progress=False)
    with pytest.raises(ValueError, match="neither a training workdir"):
        evaluate_saved_model(str(target), surrogate=str(tmp_path), progress=False)


def test_launch_evaluate_checkpoint_is_the_benchmark_command(saved_models, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "report"
    args = [
        sys.executable, "-m", "launch.evaluate", f"--checkpoint={saved_models[0]}",
        "--dataset=synthetic", "--num_examples=8", "--suite=clean,fgsm", "--eps=1/10",
        f"--output={out}", "--nochecks",
    ]  # fmt: skip
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert [a["name"] for a in rep["attacks"]] == ["clean", "fgsm"]
    assert rep["threat_model"]["eps_text"] == "1/10" and rep["model"] == "mnist_fast_at"
    assert "FGSM" in proc.stdout
