"""Evaluating a model on its test set under a suite of attacks: a training workdir or a saved model.

``evaluate_workdir(workdir)`` reads ``config.json`` and a checkpoint, runs the attacks of
``evaluate.suite`` (names from ``advjax.eval.presets``) with the config's threat model, saves its
progress after every batch under ``<output>/eval_state/`` (rerunning an interrupted evaluation
resumes it), runs the gradient-masking checks and writes ``report.json`` and ``report.md``.
``evaluate_saved_model(path, dataset)`` does the same for a saved model (``advjax.models.
saved_model``, e.g. a converted PyTorch checkpoint): clean and AutoAttack standard by default.
With ``surrogate`` (a workdir or a saved model) both add the ATLAS document's black-box column:
PGD-1000 crafted on the surrogate and evaluated on the target (``presets.transfer_entry``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from advjax.data import load_dataset
from advjax.data.dataset import get_spec
from advjax.eval import checks, presets, report, suite
from advjax.experiment.builders import load_split
from advjax.experiment.workdir import load_config, restore_variables, threat_settings
from advjax.models import make_model_fn, saved_model

# Threat radius of a saved model's evaluation when none is given: the field's standard Linf
# radius per dataset (Madry et al. on MNIST, RobustBench on the others).
DEFAULT_EPS = {
    "mnist": "0.3",
    "cifar10": "8/255",
    "cifar100": "8/255",
    "svhn": "8/255",
    "synthetic": "0.3",
}
SAVED_MODEL_SUITE = "clean,aa_standard"


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model to evaluate or to craft on: its function, variables and where it came from."""

    model_fn: Any
    variables: Any
    name: str  # the model's registry name
    source: dict[str, Any]  # {"workdir"|"saved_model": path, ...}: report and fingerprint


def load_model_source(path: str, checkpoint: str = "best", image_shape=None) -> LoadedModel:
    """The model in ``path``: a saved model directory (``model.json``) or a training workdir
    (``config.json`` and checkpoints; ``checkpoint`` is ``best``, ``latest`` or a step)."""
    if os.path.isfile(os.path.join(path, saved_model.HEADER_FILE)):
        model, variables = saved_model.load_model(path)
        header = saved_model.read_header(path)
        source = {"saved_model": os.path.abspath(path), "sha256": header["variables_sha256"]}
        return LoadedModel(make_model_fn(model), variables, header["model"], source)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(
            f"{path} is neither a training workdir (no config.json) nor an advjax saved model "
            f"(no {saved_model.HEADER_FILE}); convert PyTorch checkpoints with launch.convert"
        )
    config = load_config(path)
    if image_shape is None:
        image_shape = get_spec(config.data.name).image_shape
    which = _checkpoint_name(checkpoint)
    model, variables, info = restore_variables(config, path, which, image_shape)
    source = {"workdir": os.path.abspath(path), "checkpoint": info}
    return LoadedModel(make_model_fn(model), variables, config.model.name, source)


def _surrogate_entry(surrogate: str, settings, image_shape, steps: int) -> presets.Entry:
    loaded = load_model_source(surrogate, image_shape=image_shape)
    name = os.path.basename(os.path.normpath(surrogate))
    entry = presets.transfer_entry(
        loaded.model_fn, loaded.variables, settings, steps=steps, surrogate=name
    )
    entry.protocol["surrogate_source"] = loaded.source
    return entry


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
    surrogate: str | None = None,
    surrogate_steps: int = 1000,
) -> dict:
    """Evaluates ``workdir``'s checkpoint (``best``, ``latest`` or a step; default: the config's
    ``evaluate.checkpoint``) and returns the report. The arguments override the config's
    ``evaluate`` section: ``num_examples`` (the first N test images), ``suite_names``
    (comma-separated), ``eps`` (a number or an exact fraction such as ``8/255``) and ``norm``.
    ``surrogate`` (a workdir or a saved model) adds the black-box column (PGD-``surrogate_steps``
    crafted on it)."""
    _check_num_examples(num_examples)
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
    entries = _entries(suite_names or ec.suite, settings)
    if surrogate:
        shape = get_spec(config.data.name).image_shape
        entries.append(_surrogate_entry(surrogate, settings, shape, surrogate_steps))
    test = load_split(config, "test", data_dir)
    n = num_examples if num_examples is not None else ec.get("num_examples", 0)
    if n:
        test = test.take(np.arange(min(n, len(test))))
    model, variables, ckpt_info = restore_variables(config, workdir, which, test.image_shape)
    return _evaluate(
        make_model_fn(model),
        variables,
        test,
        entries,
        settings,
        seed=config.seed + 2,
        output=output or workdir,
        state_name=f"{ckpt_info['kind']}{ckpt_info['step']}",
        batch_size=int(ec.get("batch_size", 500)),
        run_checks=ec.get("checks", True) if run_checks is None else run_checks,
        check_examples=int(ec.get("check_examples", 200)),
        progress=progress,
        meta={
            "dataset": config.data.name,
            "model": config.model.name,
            "defense": config.defense.name,
        },
        extra={"workdir": os.path.abspath(workdir), "checkpoint": ckpt_info},
    )


def evaluate_saved_model(
    path: str,
    dataset: str | None = None,
    *,
    num_examples: int | None = None,
    data_dir: str | None = None,
    output: str | None = None,
    suite_names: str | None = None,
    run_checks: bool = True,
    eps: str | None = None,
    norm: str = "linf",
    step_size: float | None = None,
    seed: int = 0,
    progress: bool = True,
    surrogate: str | None = None,
    surrogate_steps: int = 1000,
) -> dict:
    """Evaluates the saved model in directory ``path`` (``launch.convert``'s output) on
    ``dataset``'s test set (default: ``mnist`` for 28x28x1 models; others must be named) and
    returns the report; by default clean and AutoAttack standard (``advjax.eval.benchmark``'s
    suite) within the dataset's standard Linf radius (``DEFAULT_EPS``). Writes ``report.json``,
    ``report.md`` and the resumable state under ``output`` (default: ``path``)."""
    _check_num_examples(num_examples)
    header = saved_model.read_header(path)
    shape = tuple(header["input_shape"])
    if dataset is None:
        if shape != (28, 28, 1):
            raise ValueError(
                f"{path}: a {shape} model; name its dataset (one of {', '.join(DEFAULT_EPS)})"
            )
        dataset = "mnist"
    spec = get_spec(dataset)
    if tuple(spec.image_shape) != shape:
        raise ValueError(
            f"{path} takes {shape} images but {dataset} has {tuple(spec.image_shape)} images"
        )
    eps_value, eps_text = presets.parse_eps(eps if eps is not None else DEFAULT_EPS[dataset])
    settings = presets.ThreatSettings(
        norm=norm,
        eps=eps_value,
        eps_text=eps_text,
        step_size=step_size,
        num_classes=spec.num_classes,
    )
    entries = _entries(suite_names or SAVED_MODEL_SUITE, settings)
    if surrogate:
        entries.append(_surrogate_entry(surrogate, settings, shape, surrogate_steps))
    test = load_dataset(dataset, "test", data_dir)
    if num_examples:
        test = test.take(np.arange(min(num_examples, len(test))))
    loaded = load_model_source(path)
    return _evaluate(
        loaded.model_fn,
        loaded.variables,
        test,
        entries,
        settings,
        seed=seed,
        output=output or path,
        state_name=f"saved{loaded.source['sha256'][:12]}",
        batch_size=500,
        run_checks=run_checks,
        check_examples=200,
        progress=progress,
        meta={"dataset": dataset, "model": loaded.name, "defense": ""},
        extra={"saved_model": loaded.source},
    )


def _check_num_examples(num_examples: int | None) -> None:
    if num_examples is not None and (isinstance(num_examples, bool) or num_examples < 1):
        raise ValueError(
            f"num_examples must be a positive number of test images, got {num_examples}; leave it "
            "out to evaluate the whole test set"
        )


def _entries(suite_names: str, settings) -> list[presets.Entry]:
    names = [a.strip() for a in suite_names.split(",") if a.strip()]
    if not names:
        raise ValueError(f"the suite is empty ({suite_names!r}); name some attacks")
    return [presets.resolve(name, settings) for name in names]


def _evaluate(
    model_fn,
    variables,
    test,
    entries: list[presets.Entry],
    settings,
    *,
    seed: int,
    output: str,
    state_name: str,
    batch_size: int,
    run_checks: bool,
    check_examples: int,
    progress: bool,
    meta: dict[str, str],
    extra: dict[str, Any],
) -> dict:
    """Runs the suite (resumable under ``output/eval_state``), the checks, and writes the report."""
    if batch_size < 1:
        raise ValueError(f"evaluate.batch_size must be >= 1, got {batch_size}")
    names = [e.name for e in entries]
    surrogates = [e.protocol.get("surrogate_source") for e in entries]
    fingerprint = f"{names}{settings}{state_name}{extra}{surrogates}{len(test)}{seed}"
    state_path = os.path.join(
        output, "eval_state", f"{state_name}_{zlib.crc32(fingerprint.encode()):08x}.npz"
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
    if run_checks:
        m = min(check_examples, len(test))
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
        checks=check_out,
        extra={
            **extra,
            "clean_accuracy": acc["clean"],
            "robust_accuracy": acc["worst_case"],
            "eval_time_s": eval_time,
        },
        **meta,
    )
    if jax.process_index() == 0:
        os.makedirs(output, exist_ok=True)
        with open(os.path.join(output, "report.json"), "w") as f:
            json.dump(rep, f, indent=2)
        with open(os.path.join(output, "report.md"), "w") as f:
            f.write(report.markdown_table(rep))
    return rep


def _checkpoint_name(which: str) -> str:
    """``best``, ``latest`` or a step number."""
    text = str(which).strip()
    if text in ("best", "latest") or (text.isdigit()):
        return text
    raise ValueError(f"checkpoint must be 'best', 'latest' or a step number, got {which!r}")
