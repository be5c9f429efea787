"""Perturbation sets (threat models): Lp balls intersected with the image box, and spatial
transformations (rotation-translation, affine, flow, integrated) applied by a differentiable
warp."""

from advjax.threats.lp import NORMS, LpBall, lp_norm, project_l1_box, project_l2_box
from advjax.threats.spatial import (
    AffineSet,
    FlowSet,
    IntegratedSet,
    RotationTranslation,
    SpatialParams,
    affine_grid,
    flow_grid,
    identity_grid,
    integrated_grid,
    rotation_translation_matrix,
    smoothness,
    warp,
)

__all__ = [
    "NORMS",
    "AffineSet",
    "FlowSet",
    "IntegratedSet",
    "LpBall",
    "RotationTranslation",
    "SpatialParams",
    "affine_grid",
    "flow_grid",
    "identity_grid",
    "integrated_grid",
    "lp_norm",
    "project_l1_box",
    "project_l2_box",
    "rotation_translation_matrix",
    "smoothness",
    "warp",
]
