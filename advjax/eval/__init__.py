"""Evaluation: accuracy over datasets, the attack suite, perturbation statistics, reports and
gradient-masking checks."""

from advjax.eval.accuracy import evaluate_accuracy
from advjax.eval.benchmark import BenchmarkResult, benchmark
from advjax.eval.perturbation import perturbation_statistics
from advjax.eval.presets import PRESETS, Entry, Preset, ThreatSettings, parse_eps
from advjax.eval.robustness_score import evaluate_robustness, robustness_suite
from advjax.eval.suite import SuiteResult, evaluate_suite

__all__ = [
    "PRESETS",
    "BenchmarkResult",
    "Entry",
    "Preset",
    "SuiteResult",
    "ThreatSettings",
    "benchmark",
    "evaluate_accuracy",
    "evaluate_robustness",
    "evaluate_suite",
    "parse_eps",
    "perturbation_statistics",
    "robustness_suite",
]
