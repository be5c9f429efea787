"""PNG figures of the analysis tools (needs matplotlib: ``pip install "advjax[plot]"``).

Every function takes numpy-convertible arrays, writes one PNG at ``path`` and returns nothing.
Figures are drawn on matplotlib's Agg canvas without ``pyplot``, so no global backend state is
touched. Colour choices are ours.

* ``plot_saliency_maps``: rows are images, columns the image and then one saliency map per model
  (Pareto doc, Fig. 4).
* ``plot_landscapes``: one filled-contour panel per model of a loss grid, origin marked (Pareto
  doc, Fig. 2; SRT doc, App. H).
* ``plot_decision_surfaces``: per model a 3-D surface and a 2-D map of ``D`` with the ``D = 0``
  contour (SRT doc, Fig. 3; red: correctly classified, blue: misclassified).
* ``plot_skewness``: median skewness of saliency differences against a reference model, as bars
  (Pareto doc, Fig. 5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_INSTALL = 'plotting needs matplotlib: pip install "advjax[plot]"'


def _figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` on the Agg canvas (lazy import; ImportError says what to install)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - exercised only without matplotlib
        raise ImportError(_INSTALL) from err
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str) -> None:
    fig.savefig(path, format="png", bbox_inches="tight")


def _axes_of(coefficients: Any, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Mesh ``(A, B)`` ``[n1, n2]`` (``indexing="ij"``) of one 1-D array or a pair."""
    if isinstance(coefficients, tuple | list) and len(coefficients) == 2:
        c1, c2 = (np.asarray(c, np.float64) for c in coefficients)
    else:
        c1 = c2 = np.asarray(coefficients, np.float64)
    if (c1.size, c2.size) != tuple(shape):
        raise ValueError(f"coefficients of sizes {(c1.size, c2.size)} for a grid of shape {shape}")
    return np.meshgrid(c1, c2, indexing="ij")


def _grids(grids: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {name: np.asarray(g, np.float64) for name, g in grids.items()}
    if not out:
        raise ValueError("nothing to plot: pass at least one model's grid")
    for name, g in out.items():
        if g.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D grid [n1, n2], got shape {g.shape}")
    return out


def _magnitude(maps: np.ndarray) -> np.ndarray:
    """``sum_c |S|`` per image, scaled to a maximum of 1 (as ``saliency_magnitude``)."""
    m = np.abs(maps).sum(axis=-1)
    peak = m.reshape(len(m), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(m, peak, out=np.zeros_like(m), where=peak > 0)


def plot_saliency_maps(
    path: str,
    images: Any,
    maps: Mapping[str, Any],
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> None:
    """Images ``[N, H, W, C]`` in [0, 1] in the first column, then each model's saliency map
    ``[N, H, W, C]`` (shown as ``sum_c |S|`` scaled to [0, 1] per image; Pareto doc, Fig. 4).
    ``labels`` (one per image) title the rows."""
    images = np.asarray(images, np.float64)
    named = {name: _magnitude(np.asarray(m, np.float64)) for name, m in maps.items()}
    for name, m in named.items():
        if m.shape != images.shape[:3]:
            raise ValueError(f"{name}: saliency maps of shape {m.shape} for images {images.shape}")
    rows, cols = len(images), 1 + len(named)
    fig = _figure(1.6 * cols, 1.6 * rows + (0.4 if title else 0.0))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i in range(rows):
        img = images[i, ..., 0] if images.shape[-1] == 1 else images[i]
        axes[i, 0].imshow(
            np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1
        )
        if labels is not None:
            axes[i, 0].set_ylabel(str(labels[i]), fontsize=8)
        for j, m in enumerate(named.values(), start=1):
            axes[i, j].imshow(m[i], cmap="inferno", vmin=0.0, vmax=1.0)
    for j, name in enumerate(["image", *named], start=0):
        axes[0, j].set_title(name, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, path)


def plot_landscapes(
    path: str,
    landscapes: Mapping[str, Any],
    coefficients: Any,
    *,
    xlabel: str = "direction 1",
    ylabel: str = "direction 2",
    zlabel: str = "loss",
    title: str | None = None,
) -> None:
    """One filled-contour panel per model of a grid ``[n1, n2]`` (axis 0 along ``xlabel``) over
    ``coefficients`` (1-D, or a pair), with the origin marked by a white cross."""
    grids = _grids(landscapes)
    cols = len(grids)
    fig = _figure(3.4 * cols, 3.0 + (0.3 if title else 0.0))
    axes = fig.subplots(1, cols, squeeze=False)[0]
    for ax, (name, g) in zip(axes, grids.items(), strict=True):
        a, b = _axes_of(coefficients, g.shape)
        filled = ax.contourf(a, b, g, levels=20, cmap="viridis")
        ax.contour(a, b, g, levels=10, colors="k", linewidths=0.3)
        ax.plot([0.0], [0.0], marker="x", color="white", markersize=8, markeredgewidth=2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        fig.colorbar(filled, ax=ax, label=zlabel)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_decision_surfaces(
    path: str,
    surfaces: Mapping[str, Any],
    coefficients: Any,
    *,
    xlabel: str = "direction 1",
    ylabel: str = "direction 2",
    title: str | None = None,
) -> None:
    """Per model (a row) the 3-D surface of ``D`` and its 2-D map with the ``D = 0`` contour in
    black and the origin (``x`` itself) marked (SRT doc, Fig. 3); colours from blue (``D = -1``,
    misclassified) to red (``D = 1``, correct)."""
    grids = _grids(surfaces)
    rows = len(grids)
    fig = _figure(7.0, 3.2 * rows + (0.3 if title else 0.0))
    for i, (name, g) in enumerate(grids.items()):
        a, b = _axes_of(coefficients, g.shape)
        ax3 = fig.add_subplot(rows, 2, 2 * i + 1, projection="3d")
        ax3.plot_surface(a, b, g, cmap="coolwarm", vmin=-1.0, vmax=1.0, linewidth=0)
        ax3.set_zlim(-1.0, 1.0)
        ax3.tick_params(labelsize=6)
        ax3.set_title(f"{name}: D", fontsize=9)
        ax3.set_xlabel(xlabel, fontsize=7)
        ax3.set_ylabel(ylabel, fontsize=7)
        ax2 = fig.add_subplot(rows, 2, 2 * i + 2)
        filled = ax2.contourf(a, b, g, levels=np.linspace(-1.0, 1.0, 21), cmap="coolwarm")
        if g.min() < 0.0 < g.max():
            ax2.contour(a, b, g, levels=[0.0], colors="k", linewidths=1.5)
        ax2.plot([0.0], [0.0], marker="x", color="k", markersize=8, markeredgewidth=2)
        ax2.set_title(f"{name}: D = 0 in black", fontsize=9)
        ax2.set_xlabel(xlabel, fontsize=8)
        ax2.set_ylabel(ylabel, fontsize=8)
        fig.colorbar(filled, ax=ax2, label="D")
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_skewness(
    path: str, medians: Mapping[str, float], *, reference: str, title: str | None = None
) -> None:
    """Bars of ``median skew(S_model - S_reference)`` per model (Pareto doc, Fig. 5)."""
    if not medians:
        raise ValueError("nothing to plot: pass at least one model's median skewness")
    names = list(medians)
    values = np.asarray([float(medians[n]) for n in names])
    fig = _figure(1.0 + 1.2 * len(names), 3.2)
    ax = fig.subplots()
    colors = ["tab:red" if v < 0 else "tab:blue" for v in values]
    ax.bar(np.arange(len(names)), values, color=colors)
    ax.axhline(0.0, color="k", linewidth=0.8)
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"median skew(S_model - S_{reference})", fontsize=8)
    ax.set_title(title or f"Median skewness of saliency differences vs {reference}", fontsize=9)
    _save(fig, path)
