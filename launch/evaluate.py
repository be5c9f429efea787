"""Evaluates a trained model on the test set under a suite of attacks.

    python -m launch.evaluate --workdir=workdirs/mnist_fast_at [--checkpoint=best|latest|STEP]
    python -m launch.evaluate --workdir=... --suite=clean,pgd20,pgd1000,untargeted,aa_standard
    python -m launch.evaluate --checkpoint=SAVED_MODEL_DIR [--dataset=cifar10 --eps=8/255]
    python -m launch.evaluate --workdir=workdirs/mnist_t1_atlas --surrogate=workdirs/mnist_natural

Reads ``config.json`` and the checkpoint from ``--workdir``. The attacks are ``--suite`` or the
config's ``evaluate.suite`` (names from ``advjax.eval.presets``), with the threat model of
``--norm`` / ``--eps`` or the config's ``evaluate.norm`` / ``evaluate.eps`` (exact fractions such
as ``8/255`` are kept as such). Progress
is saved after every batch under ``<output>/eval_state/``: rerunning an interrupted command resumes
it. Writes ``report.json`` (per-attack and worst-case accuracy, protocols, gradient-masking checks)
and ``report.md`` into the output directory (default: the workdir).

``--checkpoint=DIR`` with a saved model (``launch.convert``'s output, e.g. a converted PyTorch
checkpoint) and no ``--workdir`` is the one-call benchmark: clean and AutoAttack standard
(``--suite`` to change) on ``--dataset`` (default ``mnist`` for 28x28x1 models) within the dataset's
standard radius (MNIST Linf 0.3, the others 8/255) unless ``--eps`` / ``--norm`` say otherwise.
``--surrogate=WORKDIR_OR_SAVED_MODEL`` adds the ATLAS document's black-box column: PGD-1000
(``--surrogate_steps``) crafted on that model within the same ball, evaluated on this one.
"""

from __future__ import annotations

from advjax import host

host.configure()  # malloc and XLA:CPU settings, before JAX starts; see advjax/host.py

# ruff: noqa: E402
from absl import app, flags

from advjax.eval import report
from advjax.experiment import evaluate_saved_model, evaluate_workdir
from launch import console

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints).")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint",
    None,
    "With --workdir: best, latest or a step (default: config). Alone: a saved model directory.",
)
_DATASET = flags.DEFINE_string("dataset", None, "A saved model's dataset (default: mnist).")
_SURROGATE = flags.DEFINE_string(
    "surrogate", None, "Workdir or saved model to craft the black-box (transfer) column on."
)
_SURROGATE_STEPS = flags.DEFINE_integer("surrogate_steps", 1000, "PGD steps on the surrogate.")
_SEED = flags.DEFINE_integer("seed", 0, "A saved model's evaluation seed (workdirs: config).")
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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    console.configure()
    if _WORKDIR.value is None and _CHECKPOINT.value is None:
        raise ValueError("give --workdir=TRAINING_WORKDIR or --checkpoint=SAVED_MODEL_DIR")
    if _SURROGATE_STEPS.value < 1:
        raise ValueError(f"--surrogate_steps must be >= 1, got {_SURROGATE_STEPS.value}")
    if _WORKDIR.value is None:
        rep = evaluate_saved_model(
            _CHECKPOINT.value,
            _DATASET.value,
            num_examples=_NUM_EXAMPLES.value,
            data_dir=_DATA_DIR.value,
            output=_OUTPUT.value,
            suite_names=_SUITE.value,
            run_checks=True if _CHECKS.value is None else _CHECKS.value,
            eps=_EPS.value,
            norm=_NORM.value or "linf",
            seed=_SEED.value,
            surrogate=_SURROGATE.value,
            surrogate_steps=_SURROGATE_STEPS.value,
        )
    else:
        if _DATASET.value is not None:
            raise ValueError("--dataset is for saved models; a workdir's config names its data")
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
            surrogate=_SURROGATE.value,
            surrogate_steps=_SURROGATE_STEPS.value,
        )
    print(report.markdown_table(rep))


if __name__ == "__main__":
    console.run(main)
