"""The Pareto front of seed 001's Fig. 7: Robustness Score against sacrificed clean accuracy.

A point is one trained model: its Robustness Score (``advjax.eval.robustness_score``, to be
maximised) and its sacrificed clean accuracy (natural model's clean accuracy minus its own, to be
minimised), both in percentage points. ``q`` dominates ``p`` when ``q.score >= p.score`` and
``q.sacrificed <= p.sacrificed`` with one of them strict; the Pareto-optimal points are those no
other point dominates (equal points do not dominate each other: both stay).

Fig. 7's vertical axis "has been under the log transformation along two directions": we plot
``signed_log(v) = sign(v) * ln(1 + |v|)`` of the sacrifice ``v`` in percentage points (our
choice), odd and monotone, so a model cleaner than the natural one (``v < 0``) has a place too.
The Pareto AT points (family ``pareto_at``, one per ``r``) are joined in order of score as the
front, as in the figure; other families are labelled markers, and the points that are
Pareto-optimal among all methods are ringed.

``plot_front`` needs matplotlib (``pip install "advjax[plot]"``), imported when called and drawn
on the Agg canvas (no display, no global backend switch).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PARETO_FAMILY = "pareto_at"


@dataclasses.dataclass(frozen=True)
class FrontPoint:
    """One model on the front. ``score`` and ``sacrificed`` are in percentage points; ``r`` is
    Pareto AT's robustness level (None for other methods); ``details`` are extra table columns
    (e.g. clean and per-category robust accuracy, in percent)."""

    method: str
    family: str
    score: float
    sacrificed: float
    r: float | None = None
    details: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("score", "sacrificed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
                raise TypeError(f"{self.method}: {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{self.method}: {name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(value))


def pareto_mask(points: Sequence[FrontPoint]) -> list[bool]:
    """``mask[i]``: no other point dominates ``points[i]`` (max score, min sacrifice)."""

    def dominates(q: FrontPoint, p: FrontPoint) -> bool:
        no_worse = q.score >= p.score and q.sacrificed <= p.sacrificed
        return no_worse and (q.score > p.score or q.sacrificed < p.sacrificed)

    return [not any(dominates(q, p) for q in points if q is not p) for p in points]


def pareto_optimal(points: Sequence[FrontPoint]) -> list[FrontPoint]:
    """The Pareto-optimal subset of ``points``, in their order."""
    return [p for p, keep in zip(points, pareto_mask(points), strict=True) if keep]


def signed_log(v: Any) -> Any:
    """``sign(v) * ln(1 + |v|)``: Fig. 7's log transformation "along two directions"."""
    v = np.asarray(v, dtype=np.float64)
    return np.sign(v) * np.log1p(np.abs(v))


def signed_log_inverse(u: Any) -> Any:
    """The inverse of ``signed_log``: ``sign(u) * (exp(|u|) - 1)``."""
    u = np.asarray(u, dtype=np.float64)
    return np.sign(u) * np.expm1(np.abs(u))


def front_record(points: Sequence[FrontPoint]) -> list[dict[str, Any]]:
    """The points as JSON-friendly dicts with their ``pareto_optimal`` flag."""
    return [
        {**dataclasses.asdict(p), "details": dict(p.details), "pareto_optimal": keep}
        for p, keep in zip(points, pareto_mask(points), strict=True)
    ]


def write_json(points: Sequence[FrontPoint], path: str, **metadata: Any) -> None:
    """``{**metadata, "points": front_record(points)}`` to ``path``."""
    with open(path, "w") as f:
        json.dump({**metadata, "points": front_record(points)}, f, indent=2, default=str)
        f.write("\n")


def _num(v: float | None, digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def markdown_table(points: Sequence[FrontPoint]) -> str:
    """One row per point: method, family, r, the ``details`` columns, score, sacrifice (pp) and
    whether it is Pareto-optimal among all the points."""
    columns: list[str] = []
    for p in points:
        columns += [c for c in p.details if c not in columns]
    header = ["method", "family", "r", *columns, "score (pp)", "sacrificed clean (pp)", "Pareto"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p, keep in zip(points, pareto_mask(points), strict=True):
        row = [p.method, p.family, "" if p.r is None else f"{p.r:g}"]
        row += [_num(p.details.get(c)) for c in columns]
        row += [_num(p.score), _num(p.sacrificed), "yes" if keep else ""]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


_TICKS = (-100, -30, -10, -3, -1, 0, 1, 3, 10, 30, 100)


def plot_front(
    points: Sequence[FrontPoint], path: str, title: str = "Pareto front", dpi: int = 150
) -> None:
    """Writes Fig. 7's plot to ``path`` (PNG): score (pp) across, ``signed_log`` of the
    sacrificed clean accuracy (pp) up, ticks labelled in pp."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            'plotting the Pareto front needs matplotlib: pip install "advjax[plot]"'
        ) from err
    if not points:
        raise ValueError("no points to plot")
    fig = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    mask = pareto_mask(points)
    front = sorted((p for p in points if p.family == PARETO_FAMILY), key=lambda p: p.score)
    if front:
        ax.plot(
            [p.score for p in front],
            signed_log([p.sacrificed for p in front]),
            "-o",
            color="tab:red",
            label="Pareto AT (front)",
            zorder=3,
        )
        for p in front:
            ax.annotate(
                f"r={p.r:g}" if p.r is not None else p.method,
                (p.score, float(signed_log(p.sacrificed))),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
                color="tab:red",
            )
    markers = "sD^v<>phX*"
    others = [p for p in points if p.family != PARETO_FAMILY]
    for i, p in enumerate(others):
        y = float(signed_log(p.sacrificed))
        ax.scatter([p.score], [y], marker=markers[i % len(markers)], s=40, zorder=3, label=p.method)
        ax.annotate(p.method, (p.score, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    optimal = [p for p, keep in zip(points, mask, strict=True) if keep]
    ax.scatter(
        [p.score for p in optimal],
        signed_log([p.sacrificed for p in optimal]),
        s=160,
        facecolors="none",
        edgecolors="black",
        linewidths=0.8,
        zorder=2,
        label="Pareto-optimal (all methods)",
    )
    values = [p.sacrificed for p in points]
    lo, hi = min(0.0, *values), max(0.0, *values)
    lo = max([t for t in _TICKS if t <= lo], default=_TICKS[0])  # one tick beyond each end
    hi = min([t for t in _TICKS if t >= hi], default=_TICKS[-1])
    ticks = [t for t in _TICKS if lo <= t <= hi]
    ax.set_yticks(signed_log(ticks), [f"{t:g}" for t in ticks])
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_xlabel("Robustness Score (pp of robust accuracy over the natural model)")
    ax.set_ylabel("sacrificed clean accuracy (pp, signed log scale)")
    ax.set_title(title)
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
