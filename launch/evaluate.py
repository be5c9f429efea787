"""Evaluates a trained model: clean and PGD robust accuracy on the test set.

    python -m launch.evaluate --workdir=workdirs/mnist_fast_at [--checkpoint=best|latest|STEP]

Reads ``config.json`` and the checkpoint from ``--workdir``; the attack is the config's
``evaluate.attack`` (PGD-40, eps 0.3, step 0.01, random start for MNIST). Writes
``report.json`` and ``report.md`` into the workdir.
"""

from __future__ import annotations

from advjax import host

host.keep_freed_memory()  # before JAX starts; see advjax/host.py

# ruff: noqa: E402
import json
import os
import platform
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

import advjax
from advjax.eval import attack_from_config, evaluate_accuracy
from advjax.train.checkpoint import Checkpointer
from advjax.train.loop import build_model, initial_state, load_split

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "best, latest or a step (default: config).")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", None, "Evaluate on the first N test images.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Override the config's data.data_dir.")
_OUTPUT = flags.DEFINE_string("output", None, "Report directory (default: --workdir).")
flags.mark_flags_as_required(["workdir"])


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no config.json in {workdir}: is it a workdir written by `python -m launch.train`?"
        )
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def restore_variables(config, workdir: str, which: str, image_shape):
    model = build_model(config)
    template, _, _ = initial_state(config, model, image_shape, steps_per_epoch_=1)
    ckpt = Checkpointer(workdir, metric=config.validation.get("metric", "val_robust_accuracy"))
    if which in ("best", "latest"):
        step = ckpt.best_step() if which == "best" else ckpt.latest_step()
        if step is None and which == "best":  # no validation ran: fall back to the latest
            which, step = "latest", ckpt.latest_step()
    else:
        step, which = int(which), "latest"
    state = ckpt.restore(template, which=which, step=step)
    ckpt.close()
    return model, state.variables, {"kind": which, "step": int(step)}


def markdown_report(report: dict) -> str:
    attack = report["attack"]
    name = f"{attack['name'].upper()}-{attack['steps']}"
    lines = [
        f"# Evaluation of `{report['workdir']}`",
        "",
        f"{report['dataset']} test set, {report['num_examples']} images, checkpoint "
        f"{report['checkpoint']['kind']} (step {report['checkpoint']['step']}).",
        f"Attack: {name}, {attack.get('norm', 'linf')} eps {attack['eps']}, step "
        f"{attack['step_size']}, {attack.get('restarts', 1)} restart(s), random start; "
        f"seed {report['seed']}.",
        "",
        f"| model | defense | clean | {name} |",
        "| --- | --- | --- | --- |",
        f"| {report['model']} | {report['defense']} | {100 * report['clean_accuracy']:.2f}% | "
        f"{100 * report['robust_accuracy']:.2f}% |",
        "",
        f"advjax {report['advjax_version']}, jax {report['jax_version']}, "
        f"{report['devices']}, {report['eval_time_s']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def evaluate_workdir(
    workdir: str,
    checkpoint: str | None = None,
    num_examples: int | None = None,
    data_dir: str | None = None,
    output: str | None = None,
) -> dict:
    config = load_config(workdir)
    ec = config.evaluate
    test = load_split(config, "test", data_dir)
    n = num_examples if num_examples is not None else ec.get("num_examples", 0)
    if n:
        test = test.take(np.arange(min(n, len(test))))
    model, variables, ckpt_info = restore_variables(
        config, workdir, checkpoint or ec.get("checkpoint", "best"), test.image_shape
    )
    attack_cfg = ec.attack.to_dict()
    start = time.time()
    result = evaluate_accuracy(
        model,
        variables,
        test,
        attack_from_config(attack_cfg),
        ec.get("batch_size", 500),
        jax.random.key(config.seed + 2),
        progress=True,
        desc="evaluate",
    )
    report = {
        "workdir": os.path.abspath(workdir),
        "dataset": config.data.name,
        "split": "test",
        "model": config.model.name,
        "defense": config.defense.name,
        "checkpoint": ckpt_info,
        "attack": attack_cfg,
        "seed": config.seed + 2,
        **result,
        "eval_time_s": time.time() - start,
        "advjax_version": advjax.__version__,
        "jax_version": jax.__version__,
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "host": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = output or workdir
    if jax.process_index() == 0:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(report, f, indent=2)
        with open(os.path.join(out, "report.md"), "w") as f:
            f.write(markdown_report(report))
    return report


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    report = evaluate_workdir(
        _WORKDIR.value, _CHECKPOINT.value, _NUM_EXAMPLES.value, _DATA_DIR.value, _OUTPUT.value
    )
    print(markdown_report(report))


if __name__ == "__main__":
    app.run(main)
