"""Perturbation sets (threat models): Lp balls intersected with the image box."""

from advjax.threats.lp import NORMS, LpBall, lp_norm, project_l1_box, project_l2_box

__all__ = ["NORMS", "LpBall", "lp_norm", "project_l1_box", "project_l2_box"]
