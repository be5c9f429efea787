"""Analysis: saliency maps, loss landscapes, decision surfaces, and their figures.

* ``images``: image grids written as PNG files (no plotting dependency).
* ``saliency``: SmoothGrad and the skewness of saliency-map differences (Pareto doc, Sec. 4).
* ``landscape``: loss over planes in a transformation's parameter space or in input space.
* ``decision_surface``: ``D = p_y - max_{i != y} p_i`` on a plane through ``x`` (SRT doc, 4.6).
* ``plots``: PNG figures of the above (matplotlib, imported lazily: the ``plot`` extra).
"""

from advjax.analysis.decision_surface import decision_surface, decision_value
from advjax.analysis.images import image_grid, read_png, write_png
from advjax.analysis.landscape import (
    centered_grid,
    gradient_sign_direction,
    input_directions,
    input_space_landscape,
    plane_values,
    spatial_directions,
    spatial_landscape,
    transform_landscape,
)
from advjax.analysis.plots import (
    plot_decision_surfaces,
    plot_landscapes,
    plot_saliency_maps,
    plot_skewness,
)
from advjax.analysis.saliency import (
    median_skewness,
    saliency_difference_skewness,
    saliency_magnitude,
    skewness,
    smoothgrad,
)

__all__ = [
    "centered_grid",
    "decision_surface",
    "decision_value",
    "gradient_sign_direction",
    "image_grid",
    "input_directions",
    "input_space_landscape",
    "median_skewness",
    "plane_values",
    "plot_decision_surfaces",
    "plot_landscapes",
    "plot_saliency_maps",
    "plot_skewness",
    "read_png",
    "saliency_difference_skewness",
    "saliency_magnitude",
    "skewness",
    "smoothgrad",
    "spatial_directions",
    "spatial_landscape",
    "transform_landscape",
    "write_png",
]
