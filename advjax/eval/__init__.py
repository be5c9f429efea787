"""Evaluation: accuracy over datasets, the attack suite, reports and gradient-masking checks."""

from advjax.eval.accuracy import attack_from_config, evaluate_accuracy
from advjax.eval.presets import PRESETS, Entry, ThreatSettings, parse_eps
from advjax.eval.suite import SuiteResult, evaluate_suite

__all__ = [
    "PRESETS",
    "Entry",
    "SuiteResult",
    "ThreatSettings",
    "attack_from_config",
    "evaluate_accuracy",
    "evaluate_suite",
    "parse_eps",
]
