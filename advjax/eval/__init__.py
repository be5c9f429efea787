"""Evaluation: clean and robust accuracy over datasets."""

from advjax.eval.accuracy import attack_from_config, evaluate_accuracy

__all__ = ["attack_from_config", "evaluate_accuracy"]
