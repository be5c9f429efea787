"""Evaluating a training workdir on its test set under a suite of attacks.

``evaluate_workdir(workdir)`` reads ``config.json`` and a checkpoint, runs the attacks of
``evaluate.suite`` (names from ``advjax.eval.presets``) with the config's threat model, saves its
progress after every batch under ``<output>/eval_state/`` (rerunning an interrupted evaluation
resumes it), runs the gradient-masking checks and writes ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import json
import os
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from advjax.data.dataset import get_spec
from advjax.eval import checks, presets, report, suite
from advjax.experiment.builders import load_split
from advjax.experiment.workdir import load_config, restore_variables, threat_settings
from advjax.models import make_model_fn


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
    progress: bool = True,
) -> dict:
    """Evaluates ``workdir``'s checkpoint (``best``, ``latest`` or a step; default: the config's
    ``evaluate.checkpoint``) and returns the report. The arguments override the config's
    ``evaluate`` section: ``num_examples`` (the first N test images), ``suite_names``
    (comma-separated), ``eps`` (a number or an exact fraction such as ``8/255``) and ``norm``."""
    if num_examples is not None and (isinstance(num_examples, bool) or num_examples < 1):
        raise ValueError(
            f"num_examples must be a positive number of test images, got {num_examples}; leave it "
            "out to evaluate the whole test set"
        )
    config = load_config(workdir)
    ec = config.evaluate
    with ec.unlocked():
        if eps is not None:
            ec.eps = str(eps)
        if norm is not None:
            ec.norm = norm
    which = _checkpoint_name(checkpoint or ec.get("checkpoint", "best"))
    # Everything the command line chose is checked before the data and the checkpoint are read.
    settings = threat_settings(ec, get_spec(config.data.name).num_classes)
    names = [a.strip() for a in (suite_names or ec.suite).split(",") if a.strip()]
    if not names:
        raise ValueError(f"the suite is empty ({suite_names or ec.suite!r}); name some attacks")
    entries = [presets.resolve(name, settings) for name in names]
    batch_size = int(ec.get("batch_size", 500))
    if batch_size < 1:
        raise ValueError(f"evaluate.batch_size must be >= 1, got {batch_size}")
    test = load_split(config, "test", data_dir)
    n = num_examples if num_examples is not None else ec.get("num_examples", 0)
    if n:
        test = test.take(np.arange(min(n, len(test))))
    model, variables, ckpt_info = restore_variables(config, workdir, which, test.image_shape)
    model_fn = make_model_fn(model)
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
        entries,
        settings=settings,
        batch_size=batch_size,
        key=jax.random.key(seed),
        state_path=state_path,
        progress=progress,
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


def _checkpoint_name(which: str) -> str:
    """``best``, ``latest`` or a step number."""
    text = str(which).strip()
    if text in ("best", "latest") or (text.isdigit()):
        return text
    raise ValueError(f"checkpoint must be 'best', 'latest' or a step number, got {which!r}")
