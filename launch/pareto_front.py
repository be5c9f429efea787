"""Seed 001's Fig. 7: trains Pareto AT at several ``r`` and the baselines, evaluates each with the
Robustness Score's attacks and plots the front of score against sacrificed clean accuracy.

    python -m launch.pareto_front --root=workdirs/pareto --r=0.5,1.0,1.5 \\
        --baselines=natural_cnn4,pgd10_at,flow_at,rt_at,ave_at,max_at --natural=natural_cnn4 \\
        --override=data.data_dir=../shared/data/mnist --override=train.epochs=1 \\
        --num_examples=1000

For each ``r``, ``--config_file:--pareto_variant`` with ``--r_field`` set to ``r`` is trained into
``<root>/<pareto_variant>_r<r>``; each baseline variant (and ``--natural``) into
``<root>/<variant>``. Every ``--override=a.b=value`` (repeatable; the value is parsed as the
field's type) applies to every run, so a short schedule is stated once. A workdir whose training
finished (its latest checkpoint is at ``train.epochs`` epochs) is read, not retrained; an
unfinished one resumes from its checkpoint. Each model's ``--checkpoint`` is then evaluated on
the first ``--num_examples`` test images with PGD, flow and RT attacks at ``--steps`` iterations
(``advjax.eval.robustness_score``; progress saved under ``<workdir>/robustness_score/``, so an
interrupted front resumes), scored against ``--natural`` and written to ``<output>.png``,
``<output>.json`` and ``<output>.md`` (default output: ``<root>/pareto_front``) with the command,
date, hardware, attacks and overrides.

The attacks' settings are our choice (the document's appendix is missing): 10/20/40 iterations;
PGD Linf eps 0.3, step 0.01, random start; flow eps 0.05 and affine RT eps 0.1 (normalised
units), step 2.5 eps / steps. The evaluated checkpoint defaults to ``latest`` (the best one is
chosen by validation PGD accuracy, which would favour PGD robustness over the others). Every model
is evaluated under these flags, whatever its config's ``evaluate`` section says.

Every run keeps its config's schedule (``configs/mnist.py``: 10 epochs on the 4-conv CNN) unless
overridden; the default front is 9 trainings, 8 of them adversarial with 10-step adversaries
(Pareto AT, Ave-AT and Max-AT against three at once): plan a GPU, or a short schedule on a CPU
(``train.epochs``, ``data.num_train``). Runtimes have not been measured yet.
"""

from __future__ import annotations

from advjax import host

host.configure()  # malloc and XLA:CPU settings, before JAX starts; see advjax/host.py

# ruff: noqa: E402
import ast
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import shlex
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from advjax.analysis import pareto_front
from advjax.data import steps_per_epoch
from advjax.eval import presets
from advjax.eval import robustness_score as rs
from advjax.experiment import (
    load_config,
    load_split,
    load_splits,
    restore_variables,
    train_and_evaluate,
)
from advjax.models import make_model_fn
from advjax.train.checkpoint import Checkpointer
from advjax.train.metrics import read_metrics
from launch import console

REPO = Path(__file__).resolve().parents[1]
_DEFAULTS = presets.ThreatSettings()


def define_flags() -> None:
    """The command's flags, defined when it runs (``python -m launch.pareto_front``): importing
    the module (tests, notebooks) defines none, so that its names (``--output``, ``--eps``, ...)
    cannot clash with those of ``launch.evaluate`` imported in the same process."""
    _FLAGS.update(
        root=flags.DEFINE_string("root", None, "Directory holding one workdir per model."),
        output=flags.DEFINE_string("output", None, "Output prefix (default: <root>/pareto_front)."),
        config_file=flags.DEFINE_string(
            "config_file", str(REPO / "configs" / "mnist.py"), "Config file of every variant."
        ),
        pareto_variant=flags.DEFINE_string("pareto_variant", "pareto_at", "Pareto AT's variant."),
        r_field=flags.DEFINE_string("r_field", "defense.r", "Config field that --r sets."),
        r=flags.DEFINE_list("r", ["0.5", "1.0", "1.5"], "Pareto AT's robustness levels r."),
        baselines=flags.DEFINE_list(
            "baselines",
            ["natural_cnn4", "pgd10_at", "flow_at", "rt_at", "ave_at", "max_at"],
            "Baseline variants of --config_file.",
        ),
        natural=flags.DEFINE_string("natural", "natural_cnn4", "The naturally trained reference."),
        override=flags.DEFINE_multi_string(
            "override", [], "a.b=value applied to every run's config (repeatable)."
        ),
        num_examples=flags.DEFINE_integer(
            "num_examples", 1000, "Evaluate on the first N test images (0: all)."
        ),
        categories=flags.DEFINE_list(
            "categories",
            list(rs.DEFAULT_CATEGORIES),
            f"Attack categories: {', '.join(rs.CATEGORY_ATTACKS)}.",
        ),
        steps=flags.DEFINE_list(
            "steps", [str(k) for k in rs.DEFAULT_STEPS], "Iteration counts of every category."
        ),
        eps=flags.DEFINE_string("eps", "0.3", "PGD's Linf radius (a number or a fraction)."),
        pgd_step_size=flags.DEFINE_float("pgd_step_size", 0.01, "PGD step (0: 2.5 eps / steps)."),
        eps_flow=flags.DEFINE_float("eps_flow", _DEFAULTS.eps_flow, "Flow bound (normalised)."),
        eps_affine=flags.DEFINE_float("eps_affine", _DEFAULTS.eps_affine, "Affine RT bound."),
        checkpoint=flags.DEFINE_string(
            "checkpoint", "latest", "Evaluated checkpoint: latest, best."
        ),
        batch_size=flags.DEFINE_integer("batch_size", 500, "Evaluation batch size."),
        eval_seed=flags.DEFINE_integer("eval_seed", 0, "Seed of the attacks' random starts."),
    )
    flags.mark_flags_as_required(["root"])


_FLAGS: dict[str, flags.FlagHolder] = {}


# ------------------------------------------------------------------------------------- configs


def load_variant(config_file: str, variant: str) -> ml_collections.ConfigDict:
    """``get_config(variant)`` of ``config_file``, locked (overriding an unknown field fails)."""
    spec = importlib.util.spec_from_file_location(
        f"_front_config_{Path(config_file).stem}", config_file
    )
    if spec is None or not os.path.exists(config_file):
        raise FileNotFoundError(f"config file {config_file} not found")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(Path(config_file).resolve().parents[1]))  # `from configs import ...`
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    config = module.get_config(variant)
    config.lock()
    return config


def apply_override(config: ml_collections.ConfigDict, text: str) -> None:
    """``a.b.c=value``: the value as the field's type (text for strings, ``true``/``false`` for
    booleans, a Python literal otherwise)."""
    path, sep, raw = text.partition("=")
    if not sep or not path.strip():
        raise ValueError(f"override {text!r} is not of the form a.b=value")
    *parents, leaf = path.strip().split(".")
    node = config
    for i, name in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            raise KeyError(f"unknown config field {'.'.join(parents[: i + 1])} in {text!r}")
        node = node[name]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise KeyError(f"unknown config field {path.strip()} in override {text!r}")
    node[leaf] = _parse_value(raw.strip(), node[leaf])


def _parse_value(raw: str, old: Any) -> Any:
    if isinstance(old, str):
        return raw
    if isinstance(old, bool):
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, got {raw!r}")
        return raw.lower() in ("true", "1")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@dataclasses.dataclass
class Run:
    """One model of the front: its name, family (``pareto_at``, ``baseline``, ``natural``), r,
    workdir and config."""

    method: str
    family: str
    variant: str
    r: float | None
    workdir: str
    config: ml_collections.ConfigDict


def front_runs(
    root: str,
    config_file: str,
    pareto_variant: str,
    r_field: str,
    r_values: Sequence[float],
    baselines: Sequence[str],
    natural: str,
    overrides: Sequence[str],
) -> list[Run]:
    """The natural reference first, then Pareto AT at every r, then the other baselines."""
    runs = []

    def add(method: str, family: str, variant: str, r: float | None = None) -> None:
        config = load_variant(config_file, variant)
        for text in overrides:
            apply_override(config, text)
        if r is not None:
            apply_override(config, f"{r_field}={r!r}")
        runs.append(Run(method, family, variant, r, os.path.join(root, method), config))

    add(natural, "natural", natural)
    for r in r_values:
        add(f"{pareto_variant}_r{r:g}", pareto_front.PARETO_FAMILY, pareto_variant, r)
    for variant in baselines:
        if variant != natural:
            add(variant, "baseline", variant)
    names = [run.method for run in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"two runs share a workdir name: {names}")
    return runs


# ----------------------------------------------------------------------------- train, evaluate


def training_finished(config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Whether ``workdir`` holds a checkpoint at ``train.epochs`` epochs of ``config``'s data
    (``train_and_evaluate``'s last step) under ``checkpoints/``."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return False
    ckpt = Checkpointer(workdir)
    try:
        latest = ckpt.latest_step()
    finally:
        ckpt.close()
    if latest is None:
        return False
    train, _ = load_splits(config)
    total = int(config.train.epochs * steps_per_epoch(len(train), config.train.batch_size))
    return latest >= total


def _config_differences(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Dotted fields where ``workdir``'s ``config.json`` differs from ``config``."""
    saved = load_config(workdir).to_dict()
    wanted = json.loads(config.to_json_best_effort())

    def diff(a: Any, b: Any, prefix: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted({*a, *b}) for d in diff(a.get(k), b.get(k), f"{prefix}{k}.")]
        a, b = json.loads(json.dumps(a, default=str)), json.loads(json.dumps(b, default=str))
        return [] if a == b else [prefix[:-1]]

    return diff(saved, wanted, "")


def train_or_reuse(run: Run) -> dict[str, Any]:
    """Trains ``run`` unless its workdir finished training (then warns on config differences)."""
    if training_finished(run.config, run.workdir):
        differences = _config_differences(run.config, run.workdir)
        if differences:
            logging.warning(
                "%s finished training with a different config (%s); reusing it: delete the "
                "workdir to retrain",
                run.workdir,
                ", ".join(differences),
            )
        print(f"{run.method}: training finished earlier, reusing {run.workdir}", flush=True)
        return {"trained": False, "config_differences": differences}
    print(f"{run.method}: training into {run.workdir}", flush=True)
    train_and_evaluate(run.config, run.workdir)
    return {"trained": True}


def evaluate_workdir_robustness(
    workdir: str,
    suite: list[dict[str, Any]],
    settings: presets.ThreatSettings,
    num_examples: int = 0,
    checkpoint: str = "latest",
    batch_size: int = 500,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict[str, float], dict[str, Any]]:
    """``(accuracy per suite label, evaluation record)`` of ``workdir``'s checkpoint on its
    config's test set (first ``num_examples``, 0: all); resumable through
    ``<workdir>/robustness_score/<checkpoint>_<hash>.npz``."""
    config = load_config(workdir)
    test = load_split(config, "test")
    if num_examples:
        test = test.take(np.arange(min(num_examples, len(test))))
    model, variables, info = restore_variables(config, workdir, checkpoint, test.image_shape)
    fingerprint = json.dumps([suite, str(settings), info, len(test), batch_size, seed], default=str)
    state_path = os.path.join(
        workdir,
        "robustness_score",
        f"{info['kind']}{info['step']}_{zlib.crc32(fingerprint.encode()):08x}.npz",
    )
    summary_path = state_path[: -len(".npz")] + ".json"
    previous = _read_json(summary_path)
    start = time.time()
    accuracy = rs.evaluate_robustness(
        make_model_fn(model),
        variables,
        test,
        suite,
        settings=settings,
        batch_size=batch_size,
        key=jax.random.key(seed),
        state_path=state_path,
        progress=progress,
    )
    record = {
        "checkpoint": info,
        "num_examples": len(test),
        "dataset": test.name,
        "state_path": state_path,
        "eval_time_s": previous.get("eval_time_s", round(time.time() - start, 1)),
    }
    if jax.process_index() == 0 and not previous:
        with open(summary_path, "w") as f:
            json.dump({"accuracy": accuracy, **record}, f, indent=2)
    return accuracy, record


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def training_time(workdir: str) -> float | None:
    """Training wall time: the sum of the epochs' ``epoch_time_s`` in ``metrics.jsonl`` (the first
    step's compilation included, checkpoint writes between epochs not)."""
    try:
        records = read_metrics(workdir)
    except (OSError, ValueError):
        return None
    times = [r["epoch_time_s"] for r in records if "epoch_time_s" in r]
    return round(sum(times), 1) if times else None


# --------------------------------------------------------------------------------------- front


def hardware() -> dict[str, Any]:
    devices = jax.devices()
    return {
        "platform": platform.platform(),
        "cpu": host.cpu_model(),
        "cpu_count": os.cpu_count(),
        "devices": f"{len(devices)} x {devices[0].device_kind}",
        "python": platform.python_version(),
        "jax": jax.__version__,
    }


def run_front(
    root: str,
    output: str | None = None,
    *,
    config_file: str = str(REPO / "configs" / "mnist.py"),
    pareto_variant: str = "pareto_at",
    r_field: str = "defense.r",
    r_values: Sequence[float] = (0.5, 1.0, 1.5),
    baselines: Sequence[str] = ("natural_cnn4", "pgd10_at", "flow_at", "rt_at", "ave_at", "max_at"),
    natural: str = "natural_cnn4",
    overrides: Sequence[str] = (),
    categories: dict[str, tuple[int, ...]] = rs.DEFAULT_CATEGORIES,
    settings: presets.ThreatSettings = rs.DEFAULT_SETTINGS,
    num_examples: int = 1000,
    checkpoint: str = "latest",
    batch_size: int = 500,
    seed: int = 0,
    command: str = "",
    progress: bool = True,
) -> tuple[list[pareto_front.FrontPoint], dict[str, Any]]:
    """Trains (or reuses) every run, evaluates and scores it, writes ``<output>.{json,md,png}``
    and returns the points and the JSON record's metadata."""
    output = output or os.path.join(root, "pareto_front")
    suite = rs.robustness_suite(categories, settings)  # checked before any training
    if checkpoint not in ("best", "latest") and not str(checkpoint).isdigit():
        raise ValueError(f"checkpoint must be 'best', 'latest' or a step, got {checkpoint!r}")
    runs = front_runs(
        root, config_file, pareto_variant, r_field, list(r_values), list(baselines), natural,
        list(overrides),
    )  # fmt: skip
    os.makedirs(root, exist_ok=True)
    records = []
    for run in runs:
        record = {
            "method": run.method,
            "family": run.family,
            "variant": run.variant,
            "r": run.r,
            "workdir": os.path.abspath(run.workdir),
        }
        record |= train_or_reuse(run)
        record["train_time_s"] = training_time(run.workdir)
        print(f"{run.method}: evaluating", flush=True)
        accuracy, evaluation = evaluate_workdir_robustness(
            run.workdir, suite, settings, num_examples, checkpoint, batch_size, seed, progress
        )
        records.append(record | {"accuracy": accuracy, "evaluation": evaluation})
    natural_accuracy = records[0]["accuracy"]
    points = []
    for record in records:
        score = rs.robustness_score(record["accuracy"], natural_accuracy, categories)
        record["robustness_score"] = score
        details = {"clean (%)": 100 * score["clean_accuracy"]}
        details |= {f"{c} (%)": 100 * v for c, v in score["category_accuracy"].items()}
        points.append(
            pareto_front.FrontPoint(
                method=record["method"],
                family=record["family"],
                score=100 * score["score"],
                sacrificed=100 * score["sacrificed_clean_accuracy"],
                r=record["r"],
                details=details,
            )
        )
    metadata = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware(),
        "protocol": {
            "attacks": rs.describe_suite(categories, settings),
            "categories": {c: list(k) for c, k in categories.items()},
            "suite": suite,
            "settings": dataclasses.asdict(settings),
            "num_examples": records[0]["evaluation"]["num_examples"],
            "checkpoint": checkpoint,
            "eval_seed": seed,
            "units": "score and sacrificed in percentage points; accuracies in [0, 1]",
        },
        "config_file": config_file,
        "pareto_variant": pareto_variant,
        "r_field": r_field,
        "r": list(r_values),
        "natural": natural,
        "overrides": list(overrides),
        "runs": records,
    }
    pareto_front.write_json(points, f"{output}.json", **metadata)
    pareto_front.plot_front(points, f"{output}.png", title="Pareto front (seed 001, Fig. 7)")
    with open(f"{output}.md", "w") as f:
        f.write(_markdown(points, metadata, os.path.basename(output)))
    return points, metadata


def _markdown(points, metadata: dict[str, Any], name: str) -> str:
    hw = metadata["hardware"]
    protocol = metadata["protocol"]
    overrides = ", ".join(f"`{o}`" for o in metadata["overrides"]) or "none (the configs' own)"
    lines = [
        "# Pareto front: Robustness Score against sacrificed clean accuracy (seed 001, Fig. 7)",
        "",
        f"Command: `{metadata['command']}`",
        "",
        f"Date: {metadata['date']}. Hardware: {hw['cpu']} ({hw['cpu_count']} CPUs), "
        f"{hw['devices']}, {hw['platform']}, JAX {hw['jax']}.",
        "",
        f"Runs: `{metadata['config_file']}`; Pareto AT is `{metadata['pareto_variant']}` with "
        f"`{metadata['r_field']}` = {', '.join(f'{r:g}' for r in metadata['r'])}; the natural "
        f"reference is `{metadata['natural']}`. Schedule overrides shared by every run: "
        f"{overrides}.",
        "",
        f"Attacks (our choice; the document's appendix with them is missing), on the first "
        f"{protocol['num_examples']} test images, checkpoint `{protocol['checkpoint']}`, attack "
        f"seed {protocol['eval_seed']}:",
        "",
        *[f"- {line}" for line in protocol["attacks"]],
        "",
        "Score = mean over categories of the category's mean robust accuracy, minus the natural "
        "model's; sacrificed = natural clean accuracy - clean accuracy; both in percentage points "
        "(pp). The plot's vertical axis is sign(v) ln(1 + |v|) of the sacrifice v in pp.",
        "",
        pareto_front.markdown_table(points),
        "| method | workdir | trained by this command | train time (s) | eval time (s) |",
        "|---|---|---|---|---|",
    ]
    for run in metadata["runs"]:
        trained = "yes" if run["trained"] else "no"
        if run.get("config_differences"):
            trained += f" (its config differs in {', '.join(run['config_differences'])})"
        train_time = "" if run["train_time_s"] is None else run["train_time_s"]
        lines.append(
            f"| {run['method']} | {run['workdir']} | {trained} | {train_time} | "
            f"{run['evaluation']['eval_time_s']} |"
        )
    lines += ["", f"![Pareto front]({name}.png)", ""]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    console.configure()
    f = {name: holder.value for name, holder in _FLAGS.items()}
    try:
        steps = tuple(int(k) for k in f["steps"])
        r_values = [float(r) for r in f["r"]]
    except ValueError as err:
        raise app.UsageError(f"--steps takes integers and --r numbers: {err}") from err
    eps, eps_text = presets.parse_eps(f["eps"])
    settings = dataclasses.replace(
        rs.DEFAULT_SETTINGS,
        eps=eps,
        eps_text=eps_text,
        step_size=f["pgd_step_size"] or None,
        eps_flow=f["eps_flow"],
        eps_affine=f["eps_affine"],
    )
    output = f["output"] or os.path.join(f["root"], "pareto_front")
    points, _ = run_front(
        f["root"],
        output,
        config_file=f["config_file"],
        pareto_variant=f["pareto_variant"],
        r_field=f["r_field"],
        r_values=r_values,
        baselines=list(f["baselines"]),
        natural=f["natural"],
        overrides=list(f["override"]),
        categories={c: steps for c in f["categories"]},
        settings=settings,
        num_examples=f["num_examples"],
        checkpoint=f["checkpoint"],
        batch_size=f["batch_size"],
        seed=f["eval_seed"],
        command=shlex.join(["python", "-m", "launch.pareto_front", *sys.argv[1:]]),
    )
    print(pareto_front.markdown_table(points))
    print(f"wrote {output}.png, {output}.json and {output}.md")


if __name__ == "__main__":
    define_flags()
    console.run(main)
