"""Analysis helpers: image grids written as PNG files (no plotting dependency)."""

from advjax.analysis.images import image_grid, read_png, write_png

__all__ = ["image_grid", "read_png", "write_png"]
