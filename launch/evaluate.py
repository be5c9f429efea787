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
from absl import app, flags

from advjax.eval import report
from advjax.experiment import evaluate_workdir
from launch import console

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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    console.configure()
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
    console.run(main)
