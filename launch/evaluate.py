"""Evaluates a trained model on the test set under a suite of attacks.

    python -m launch.evaluate --workdir=workdirs/mnist_fast_at [--checkpoint=best|latest|STEP]
    python -m launch.evaluate --workdir=... --suite=clean,pgd20,pgd1000,untargeted,aa_standard

Reads ``config.json`` and the checkpoint from ``--workdir``. The attacks are ``--suite`` or the
config's ``evaluate.suite`` (names from ``advjax.eval.presets``), with the threat model of
``--norm`` / ``--eps`` or the config's ``evaluate.norm`` / ``evaluate.eps`` (exact fractions such
as ``8/255`` are kept as such). Progress
is saved after every batch under ``<output>/eval_state/``: rerunning an interrupted command resumes
it. Writes ``report.json`` (per-attack and worst-case accuracy, protocols, gradient-masking checks)
and ``report.md`` into the output directory (default: the workdir).
"""

from __future__ import annotations

from advjax import host

host.configure()  # malloc and XLA:CPU settings, before JAX starts; see advjax/host.py

# ruff: noqa: E402
import json
import os
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from advjax.eval import checks, report, suite
from advjax.eval.workdir import load_config, restore_variables, threat_settings
from advjax.models import make_model_fn
from advjax.train.loop import load_split

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "best, latest or a step (default: config).")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", None, "Evaluate on the first N test images.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Override the config's data.data_dir.")
_OUTPUT = flags.DEFINE_string("output", None, "Report directory (default: --workdir).")
_SUITE = flags.DEFINE_string(
    "suite", None, "Comma-separated attack names (default: the config's evaluate.suite)."
)
_EPS = flags.DEFINE_string(
    "eps", None, "Threat radius, a number or an exact fraction such as 8/255 (default: config)."
)
_NORM = flags.DEFINE_enum("norm", None, ["linf", "l2", "l1"], "Threat norm (default: config).")
_CHECKS = flags.DEFINE_boolean("checks", None, "Run the gradient-masking checks (default: config).")
flags.mark_flags_as_required(["workdir"])


def evaluate_workdir(
    workdir: str,
    checkpoint: str | None = None,
    num_examples: int | None = None,
    data_dir: str | None = None,
    output: str | None = None,
    suite_names: str | None = None,
    run_checks: bool | None = None,
    eps: str | None = None,
    norm: str | None = None,
) -> dict:
    config = load_config(workdir)
    ec = config.evaluate
    with ec.unlocked():
        if eps is not None:
            ec.eps = str(eps)
        if norm is not None:
            ec.norm = norm
    test = load_split(config, "test", data_dir)
    n = num_examples if num_examples is not None else ec.get("num_examples", 0)
    if n:
        test = test.take(np.arange(min(n, len(test))))
    model, variables, ckpt_info = restore_variables(
        config, workdir, checkpoint or ec.get("checkpoint", "best"), test.image_shape
    )
    model_fn = make_model_fn(model)
    settings = threat_settings(ec, test.num_classes)
    names = [a.strip() for a in (suite_names or ec.suite).split(",") if a.strip()]
    out = output or workdir
    seed = config.seed + 2
    fingerprint = f"{names}{settings}{ckpt_info}{len(test)}{seed}"
    state_path = os.path.join(
        out,
        "eval_state",
        f"{ckpt_info['kind']}{ckpt_info['step']}_{zlib.crc32(fingerprint.encode()):08x}.npz",
    )
    start = time.time()
    result = suite.evaluate_suite(
        model_fn,
        variables,
        test,
        names,
        settings=settings,
        batch_size=ec.get("batch_size", 500),
        key=jax.random.key(seed),
        state_path=state_path,
        progress=True,
    )
    eval_time = time.time() - start
    check_out = None
    if ec.get("checks", True) if run_checks is None else run_checks:
        m = min(int(ec.get("check_examples", 200)), len(test))
        x = jnp.asarray(test.images[:m], jnp.float32) / 255.0
        y = jnp.asarray(test.labels[:m])
        check_out = checks.run_checks(
            model_fn, variables, x, y, jax.random.key(seed + 1), settings, result
        )
        for warning in check_out[1]:
            logging.warning("gradient-masking check: %s", warning)
    acc = result.accuracy()
    rep = report.build_report(
        result,
        settings,
        seed=seed,
        dataset=config.data.name,
        model=config.model.name,
        defense=config.defense.name,
        checks=check_out,
        extra={
            "workdir": os.path.abspath(workdir),
            "checkpoint": ckpt_info,
            "clean_accuracy": acc["clean"],
            "robust_accuracy": acc["worst_case"],
            "eval_time_s": eval_time,
        },
    )
    if jax.process_index() == 0:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(rep, f, indent=2)
        with open(os.path.join(out, "report.md"), "w") as f:
            f.write(report.markdown_table(rep))
    return rep


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    rep = evaluate_workdir(
        _WORKDIR.value,
        _CHECKPOINT.value,
        _NUM_EXAMPLES.value,
        _DATA_DIR.value,
        _OUTPUT.value,
        _SUITE.value,
        _CHECKS.value,
        _EPS.value,
        _NORM.value,
    )
    print(report.markdown_table(rep))


if __name__ == "__main__":
    app.run(main)
