"""Bad inputs, tried as a new user would (issue 20): every one raises an error of the right type
whose message names the offending value. Tiny linear model, no training."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks, validation
from advjax.data import Dataset
from advjax.eval import evaluate_suite
from advjax.experiment import write_config
from tests.train_configs import tiny_config

REPO = Path(__file__).resolve().parents[1]
W = jax.random.normal(jax.random.key(0), (16, 3))
X = jax.random.uniform(jax.random.key(1), (4, 4, 4, 1))
Y = jnp.array([0, 1, 2, 0])
KEY = jax.random.key(2)


def model_fn(w, x):
    return x.reshape(x.shape[0], -1) @ w


# (name, (x, y, key) -> bad (x, y, key), error type, pattern the message must match)
BAD_BATCHES = {
    "labels_out_of_range": (lambda x, y, k: (x, y + 10, k), ValueError, r"\[0, 3\).*\[10, 12\]"),
    "negative_labels": (lambda x, y, k: (x, y - 1, k), ValueError, r"\[0, 3\).*\[-1, 1\]"),
    "float_labels": (lambda x, y, k: (x, y.astype(jnp.float32), k), TypeError, "dtype float32"),
    "labels_for_another_batch": (lambda x, y, k: (x, y[:3], k), ValueError, r"\(3,\).*4 images"),
    "scalar_label": (lambda x, y, k: (x, y[0], k), ValueError, "scalar"),
    "list_labels": (lambda x, y, k: (x, [0, 1, 2, 0], k), TypeError, "got list"),
    "uint8_range_images": (lambda x, y, k: (x * 255, y, k), ValueError, r"divide by 255.*\d\]"),
    "negative_pixels": (lambda x, y, k: (x - 0.5, y, k), ValueError, r"\[0, 1\].*\[-0\.\d+"),
    "nan_pixel": (lambda x, y, k: (x.at[2, 1].set(jnp.nan), y, k), ValueError, "NaN.*example 2"),
    "inf_pixel": (lambda x, y, k: (x.at[1, 0, 0].set(jnp.inf), y, k), ValueError, "example 1"),
    "nchw_images": (
        lambda x, y, k: (jnp.zeros((4, 1, 4, 4)), y, k), ValueError, r"\(4, 1, 4, 4\) .*NCHW",
    ),
    "rank_3_images": (lambda x, y, k: (x[..., 0], y, k), ValueError, r"rank 3.*x\[\.\.\., None\]"),
    "integer_images": (lambda x, y, k: ((x * 255).astype(jnp.uint8), y, k), TypeError, "uint8"),
    "empty_batch": (lambda x, y, k: (x[:0], y[:0], k), ValueError, r"empty.*\(0, 4, 4, 1\)"),
    "keys_for_another_batch": (
        lambda x, y, k: (x, y, jax.random.split(k, 3)), ValueError, r"\[4\].*\(3,\)",
    ),
    "not_a_key": (lambda x, y, k: (x, y, 7), TypeError, "PRNG key.*int"),
}  # fmt: skip

ATTACK_SPECS = {
    "pgd": dict(name="pgd", eps=0.1, step_size=0.05, steps=2),
    "fgsm": dict(name="fgsm", eps=0.1),
    "apgd": dict(name="apgd", eps=0.1, steps=2),
    "apgd_t": dict(name="apgd_t", eps=0.1, steps=2, num_targets=2),
    "square": dict(name="square", eps=0.1, steps=2),
    "fab": dict(name="fab", eps=0.1, steps=2),
    "rays": dict(name="rays", eps=0.1, steps=2),
    "grid_adv": dict(name="grid_adv", max_angle=10.0, max_translation=1.0),
    "jsma": dict(name="jsma", gamma=0.1),
    "restarts": dict(
        name="restarts", attack=dict(name="pgd", eps=0.1, step_size=0.05, steps=1), restarts=2
    ),
}


@pytest.mark.parametrize("attack_name", list(ATTACK_SPECS))
@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_attacks_reject_bad_batches_eagerly(attack_name, case):
    make_bad, error, pattern = BAD_BATCHES[case]
    x, y, key = make_bad(X, Y, KEY)
    attack = attacks.build(ATTACK_SPECS[attack_name])
    with pytest.raises(error, match=pattern):
        attack(model_fn, W, x, y, key)


JITTED = {
    name: jax.jit(attacks.build(ATTACK_SPECS[name]), static_argnums=0) for name in ("pgd", "apgd")
}
VALUE_CASES = ["labels_out_of_range", "uint8_range_images", "nan_pixel", "negative_labels"]


@pytest.mark.parametrize("attack_name", list(JITTED))
@pytest.mark.parametrize("case", VALUE_CASES + ["float_labels", "nchw_images", "empty_batch"])
def test_attacks_reject_bad_batches_under_jit(attack_name, case):
    # The README's pattern, jax.jit(attack, static_argnums=0): static problems raise at trace
    # time; values are checked by a host callback inside the compiled attack.
    make_bad, error, pattern = BAD_BATCHES[case]
    x, y, key = make_bad(X, Y, KEY)
    expected = jax.errors.JaxRuntimeError if case in VALUE_CASES else error
    with pytest.raises(expected, match=pattern):
        jax.block_until_ready(JITTED[attack_name](model_fn, W, x, y, key))


def test_value_checks_can_be_left_out_of_a_trace():
    x_adv = JITTED["pgd"](model_fn, W, X, Y, KEY)  # valid inputs: no error, same result eager
    np.testing.assert_allclose(x_adv, attacks.build(ATTACK_SPECS["pgd"])(model_fn, W, X, Y, KEY))
    # jit caches traces by function: a new attack (3 steps) is traced inside the block.
    with validation.value_checks(False):
        unchecked = jax.jit(attacks.build({**ATTACK_SPECS["pgd"], "steps": 3}), static_argnums=0)
        out = unchecked(model_fn, W, X * 255, Y, KEY)  # traced without the callback: no error
    assert out.shape == X.shape
    raw = jax.random.PRNGKey(2)  # a legacy uint32 key is accepted as the same typed key
    np.testing.assert_array_equal(
        attacks.build(ATTACK_SPECS["pgd"])(model_fn, W, X, Y, raw),
        attacks.build(ATTACK_SPECS["pgd"])(model_fn, W, X, Y, jax.random.wrap_key_data(raw)),
    )


BAD_HYPERPARAMETERS = {
    "negative_eps": (dict(name="pgd", eps=-0.1, step_size=0.01, steps=2), r"eps.*-0\.1"),
    "negative_step_size": (dict(name="pgd", eps=0.1, step_size=-0.01, steps=2), r"-0\.01"),
    "zero_steps": (dict(name="pgd", eps=0.1, step_size=0.01, steps=0), r"steps.*\b0\b"),
    "fractional_steps": (dict(name="apgd", eps=0.1, steps=2.5), r"steps.*2\.5"),
    "negative_restarts": (
        dict(name="restarts", attack=dict(name="fgsm", eps=0.1), restarts=-1), "restarts.*-1",
    ),
    "unknown_norm": (dict(name="pgd", eps=0.1, step_size=0.01, steps=2, norm="l3"), "l3.*linf"),
    "unknown_loss": (dict(name="pgd", eps=0.1, step_size=0.01, steps=2, loss="hinge"), "hinge"),
    "unknown_attack": (dict(name="pgdd", eps=0.1), "pgdd.*apgd"),
    "unknown_hyperparameter": (dict(name="pgd", eps=0.1, stepz=3), "stepz"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_HYPERPARAMETERS))
def test_attack_specs_with_bad_hyperparameters_are_named(case):
    spec, pattern = BAD_HYPERPARAMETERS[case]
    with pytest.raises((ValueError, TypeError), match=pattern):
        attacks.build(spec)


def _dataset(n=8, num_classes=3):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8)
    return Dataset(images, np.arange(n) % num_classes, num_classes, "tiny")


BAD_SUITES = {
    "unknown_attack": (dict(attacks=["clean", "pgd20", "bogus"]), ValueError, "bogus"),
    "zero_batch_size": (dict(batch_size=0), ValueError, "batch_size.*0"),
    "empty_dataset": (dict(dataset=_dataset().take(np.arange(0))), ValueError, "empty"),
    "too_few_outputs": (dict(dataset=_dataset(num_classes=5)), ValueError, "3 outputs.*5 classes"),
}


@pytest.mark.parametrize("case", list(BAD_SUITES))
def test_evaluation_suite_rejects_bad_inputs(case):
    overrides, error, pattern = BAD_SUITES[case]
    args = dict(dataset=_dataset(), attacks=["clean"], batch_size=4) | overrides
    with pytest.raises(error, match=pattern):
        evaluate_suite(model_fn, W, args["dataset"], args["attacks"], batch_size=args["batch_size"])


@pytest.mark.parametrize(
    "labels, pattern",
    [(np.array([0, 1, 3]), r"\[0, 3\).*\[0, 3\]"), (np.array([0.0, 1.0, 2.0]), "integer")],
)
def test_datasets_reject_bad_labels(labels, pattern):
    with pytest.raises(ValueError, match=pattern):
        Dataset(np.zeros((3, 4, 4, 1), np.uint8), labels, 3, "tiny")


# ---------------------------------------------------------------- the command line


def _launch_cases(workdir: Path) -> dict[str, tuple[list[str], int, str]]:
    """name -> (argv, exit status, pattern the one-paragraph error must match)."""
    train = ["launch.train", f"--config={REPO}/configs/mnist.py:natural", f"--workdir={workdir}"]
    evaluate = ["launch.evaluate", f"--workdir={workdir}"]
    return {
        "evaluate_negative_num_examples": (
            [*evaluate, "--num_examples=-5"], 1, "num_examples.*-5",
        ),
        "evaluate_zero_num_examples": ([*evaluate, "--num_examples=0"], 1, "num_examples.*got 0"),
        "evaluate_missing_workdir": (
            ["launch.evaluate", f"--workdir={workdir}_missing"], 1, "_missing",
        ),
        "evaluate_unknown_attack": ([*evaluate, "--suite=clean,pgd20,pgdd"], 1, "pgdd"),
        "evaluate_bad_eps": ([*evaluate, "--eps=8/0"], 1, "8/0"),
        "evaluate_bad_checkpoint": ([*evaluate, "--checkpoint=newest"], 1, "newest"),
        "evaluate_bad_norm": ([*evaluate, "--norm=l3"], 2, "l3"),
        "evaluate_no_model": (["launch.evaluate"], 1, "--workdir=.*or --checkpoint=SAVED_MODEL"),
        "evaluate_checkpoint_not_a_saved_model": (
            ["launch.evaluate", f"--checkpoint={workdir}_missing"], 1, "not an advjax saved model",
        ),
        "train_config_typo": (
            [*train, "--config.train.epoch=1"], 2, 'field .epoch.*Did you mean "epochs"',
        ),
        "train_unknown_variant": (
            ["launch.train", f"--config={REPO}/configs/mnist.py:natual", f"--workdir={workdir}"],
            2,
            "natual.*valid variants",
        ),
        "train_workdir_is_a_file": (
            ["launch.train", f"--config={REPO}/configs/mnist.py:natural",
             f"--workdir={workdir / 'config.json'}"],
            1,
            "config.json",
        ),
    }  # fmt: skip


def test_launch_commands_name_the_bad_value_in_one_paragraph(tmp_path):
    workdir = tmp_path / "wd"
    workdir.mkdir()
    write_config(tiny_config("natural"), str(workdir))  # a workdir without checkpoints
    cases = _launch_cases(workdir)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", *argv], cwd=REPO, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for name, (argv, _, _) in cases.items()
    }  # fmt: skip
    failures = []
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=240)
        _, status, pattern = cases[name]
        error = [line for line in stderr.splitlines() if not line.startswith("WARNING")]
        text = " ".join(error)
        ok = (
            proc.returncode == status
            and error[:1] and error[0].startswith("error: ")
            and "Traceback" not in stderr
            and len(error) <= 8
            and re.search(pattern, text)
        )  # fmt: skip
        if not ok:
            failures.append(f"{name}: exit {proc.returncode}, stderr:\n{stderr[-1500:]}")
    assert not failures, "\n\n".join(failures)
    assert json.loads((workdir / "config.json").read_text())["model"]["name"] == "mnist_cnn4"
