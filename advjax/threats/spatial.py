"""Spatial threat models: differentiable warps by rotation-translation, affine maps and flow fields.

Conventions (used by every function here):

* **Sampling grids** are ``[B, H, W, 2]`` arrays of *pixel* coordinates in the input image, ordered
  ``(row, col)`` (= ``(y, x)``), with pixel centres at the integers ``0 .. H-1`` and ``0 .. W-1``.
  ``warp(x, grid)[b, i, j] = x[b]`` bilinearly sampled at ``grid[b, i, j]`` (the inverse-map
  sampling of spatial transformer networks, Jaderberg et al. 2015): the output pixel ``(i, j)``
  *reads* the input at ``grid[b, i, j]``.
* **Normalised coordinates** ``(u, v)`` run over ``[-1, 1]`` about the image centre: ``u`` is the
  column (x) coordinate, ``v`` the row (y) coordinate, ``u = -1`` / ``u = 1`` are the centres of the
  first / last column (PyTorch's ``affine_grid(..., align_corners=True)``). One normalised unit is
  ``(W - 1) / 2`` pixels along x and ``(H - 1) / 2`` pixels along y.
* **Affine matrices** ``A [B, 2, 3]`` map ``[u, v, 1]`` of an output pixel to the normalised point
  ``(u', v')`` it samples: the sampling grid ``T(G) = A [u v 1]^T`` of the Pareto document (Sec. 2).
  The 6-parameter increment ``w_RT [B, 6]`` is ``(w11, w12, w13, w21, w22, w23)`` row-major, and
  ``A = I + w_RT`` (``w13``, ``w23`` are the translations, in normalised units).
* **Flow fields** have the layout of a grid, ``[B, H, W, 2]`` with ``(row, col)`` components, and
  displace the sampling point of each output pixel. ``flow_grid`` takes *pixels* (stAdv, Xiao et
  al. 2018); ``integrated_grid``, ``FlowSet`` and ``IntegratedSet`` take *normalised* units, because
  the Pareto document adds ``w_F`` to the normalised grid ``A_{w_RT} [u v 1]^T`` and bounds ``w_F``
  and ``w_RT`` in one Linf ball ``||[w_F, w_RT]|| <= [eps_F, eps_RT]``; ``flow_to_pixels``
  converts.
* **Rotation-translation** parameters ``(angle, tx, ty)`` describe how the *content* moves (Engstrom
  et al. 2019, ``u' = R(theta) u + delta``): rotation about the image centre by ``angle`` degrees,
  counter-clockwise as displayed (row 0 at the top; 90 degrees equals ``np.rot90``), then a shift by
  ``tx`` pixels to the right and ``ty`` pixels down.

Threat models are frozen, hashable dataclasses with the same parts:
``identity(x)`` (parameters of the identity transform), ``sample(key, batch, hw)`` (uniform in the
set), ``init(key, x)`` (uniform in the set; ``key`` is one key or per-example keys ``[B]``),
``project(params)`` (Euclidean projection = clip to the bounds), ``apply(params, x)`` (the warped
batch, clipped to [0, 1]), ``contains(params)`` (per-example bound check), ``ascend(params, grad,
step_size)`` (one sign-ascent step, per-component step sizes) and ``scaled(factor)`` (bounds times
``factor``, which may be traced).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from advjax.threats.lp import is_concrete

PADDINGS = ("zeros", "edge", "reflect")
_COORD_LIMIT = 1e6  # far-away sampling points are clipped here (keeps the int32 floor exact)


def check_padding(padding: str) -> str:
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}; valid paddings: {', '.join(PADDINGS)}")
    return padding


def _check_nonnegative(**values: Any) -> None:
    for name, value in values.items():
        if is_concrete(value) and not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def _map_index(i: jax.Array, size: int, padding: str) -> jax.Array:
    """Integer sample index -> index into the image (``zeros`` masks out-of-range ones later)."""
    if padding == "reflect" and size > 1:
        period = 2 * (size - 1)
        return (size - 1) - jnp.abs(jnp.mod(i, period) - (size - 1))
    return jnp.clip(i, 0, size - 1)


def _clamp(v: jax.Array, lo: float, hi: float) -> jax.Array:
    """``clip`` whose derivative is 1 on the closed interval (``jnp.clip`` gives 1/2 at its ends,
    e.g. at the border pixels of the identity grid)."""
    return jnp.where(v < lo, lo, jnp.where(v > hi, hi, v)).astype(v.dtype)


def warp(images: jax.Array, grid: jax.Array, padding: str = "zeros") -> jax.Array:
    """Bilinear sampling of ``images [B, H, W, C]`` at pixel ``(row, col)`` ``grid [B, Ho, Wo, 2]``.

    Differentiable w.r.t. both ``images`` and ``grid`` (Jaderberg et al. 2015, eq. 5). At integer
    coordinates the interpolation weights are exactly 0 and 1, so the identity grid returns the
    input bit for bit. ``grid`` may also be ``[Ho, Wo, 2]`` (shared by the batch).

    Padding (samples outside the image): ``"zeros"`` (out-of-image pixels are 0), ``"edge"``
    (clamped to the border pixels) or ``"reflect"`` (mirrored about the border pixel centres,
    ``... 2 1 | 0 1 2 ... H-2 H-1 | H-2 ...``).
    """
    check_padding(padding)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    batch, height, width, channels = images.shape
    if grid.ndim == 3:
        grid = jnp.broadcast_to(grid[None], (batch,) + grid.shape)
    if grid.ndim != 4 or grid.shape[0] != batch or grid.shape[-1] != 2:
        raise ValueError(
            f"grid must be [B, Ho, Wo, 2] (or [Ho, Wo, 2]) for images of shape {images.shape}, "
            f"got shape {grid.shape}"
        )
    dtype = jnp.result_type(images.dtype, grid.dtype)
    images = images.astype(dtype)
    grid = grid.astype(dtype)
    out_h, out_w = grid.shape[1:3]

    if padding == "reflect":
        coords = _clamp(grid, -_COORD_LIMIT, _COORD_LIMIT)
    else:
        # "edge": clamping the coordinates (not only the indices) makes the gradient w.r.t. an
        # outside sampling point exactly 0, not a rounding residue whose sign a sign-gradient step
        # would follow. "zeros": beyond one pixel outside the image every sample is 0.
        lo, extra = (0.0, -1.0) if padding == "edge" else (-2.0, 1.0)
        coords = jnp.stack(
            [
                _clamp(grid[..., 0], lo, height + extra),
                _clamp(grid[..., 1], lo, width + extra),
            ],
            axis=-1,
        )
    base = jnp.floor(coords)
    frac = coords - base  # exact; d frac / d coords = 1 (floor has zero derivative)
    base = base.astype(jnp.int32)
    r0, c0 = base[..., 0], base[..., 1]
    fr, fc = frac[..., 0:1], frac[..., 1:2]
    flat = images.reshape(batch, height * width, channels)

    def sample(r, c):
        idx = _map_index(r, height, padding) * width + _map_index(c, width, padding)
        values = jnp.take_along_axis(flat, idx.reshape(batch, -1, 1), axis=1)
        values = values.reshape(batch, out_h, out_w, channels)
        if padding == "zeros":
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            values = jnp.where(inside[..., None], values, jnp.zeros((), dtype))
        return values

    # Nested lerps: at integer coordinates (fr = fc = 0) this is v00 + 0 exactly, and the
    # gradient w.r.t. the coordinates is built from differences of neighbours, exactly 0 where the
    # image is flat (a sum of weighted terms would leave rounding residues there, whose random
    # signs a sign-gradient attack would follow).
    v00, v01 = sample(r0, c0), sample(r0, c0 + 1)
    v10, v11 = sample(r0 + 1, c0), sample(r0 + 1, c0 + 1)
    top = v00 + fc * (v01 - v00)
    bottom = v10 + fc * (v11 - v10)
    return top + fr * (bottom - top)


def pixel_scale(height: int, width: int) -> tuple[float, float]:
    """Pixels per normalised unit along ``(row, col)``: ``((H - 1) / 2, (W - 1) / 2)`` (1 for a
    size-1 axis, where normalised coordinates are degenerate)."""
    return (height - 1) / 2 if height > 1 else 1.0, (width - 1) / 2 if width > 1 else 1.0


def identity_grid(height: int, width: int, dtype: Any = jnp.float32) -> jax.Array:
    """``[H, W, 2]`` pixel coordinates ``(row, col)`` of every pixel: ``warp`` leaves images as
    they are."""
    rows, cols = jnp.meshgrid(
        jnp.arange(height, dtype=dtype), jnp.arange(width, dtype=dtype), indexing="ij"
    )
    return jnp.stack([rows, cols], axis=-1)


def flow_to_pixels(flow: jax.Array, height: int, width: int) -> jax.Array:
    """A flow field ``[..., 2]`` in normalised units converted to pixels (``(row, col)``)."""
    sy, sx = pixel_scale(height, width)
    return flow * jnp.asarray([sy, sx], flow.dtype)


def affine_grid(matrices: jax.Array, height: int, width: int) -> jax.Array:
    """Sampling grid ``T(G) = A [u v 1]^T`` of affine matrices ``[B, 2, 3]``, in pixel coordinates.

    ``A`` acts on normalised ``(u, v) = (x, y)`` coordinates in ``[-1, 1]`` (see the module
    docstring). The computation is done about the centre in pixel units, so the identity matrix
    gives the identity grid exactly.
    """
    if matrices.ndim != 3 or matrices.shape[1:] != (2, 3):
        raise ValueError(f"affine matrices must be [B, 2, 3], got shape {matrices.shape}")
    dtype = matrices.dtype if jnp.issubdtype(matrices.dtype, jnp.floating) else jnp.float32
    matrices = matrices.astype(dtype)
    sy, sx = pixel_scale(height, width)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    grid = identity_grid(height, width, dtype)
    dy = grid[..., 0] - cy  # [H, W], exact (multiples of 1/2)
    dx = grid[..., 1] - cx
    a = matrices[:, :, :, None, None]  # [B, 2, 3, 1, 1]
    # In pixels about the centre: x' = cx + a11 dx + a12 (sx/sy) dy + a13 sx, and likewise y'.
    col = cx + ((a[:, 0, 0] * dx + (a[:, 0, 1] * (sx / sy)) * dy) + a[:, 0, 2] * sx)
    row = cy + (((a[:, 1, 0] * (sy / sx)) * dx + a[:, 1, 1] * dy) + a[:, 1, 2] * sy)
    return jnp.stack([row, col], axis=-1)


def _as_batch(v: Any) -> jax.Array:
    v = jnp.asarray(v)
    if not jnp.issubdtype(v.dtype, jnp.floating):
        v = v.astype(jnp.float32)
    return jnp.atleast_1d(v)


def rotation_translation_matrix(
    angle_deg: jax.Array, tx: jax.Array, ty: jax.Array, height: int, width: int
) -> jax.Array:
    """Normalised sampling matrices ``[B, 2, 3]`` of a rotation-translation (Engstrom et al. 2019).

    The content is rotated about the image centre by ``angle_deg`` degrees (counter-clockwise as
    displayed) and then shifted by ``tx`` pixels right and ``ty`` pixels down: the content at pixel
    offset ``p`` from the centre moves to ``R p + t``, so output pixel ``p'`` samples
    ``R^{-1}(p' - t)``.
    The rotation is rigid in pixel space also for non-square images.
    """
    angle, tx, ty = (_as_batch(v) for v in (angle_deg, tx, ty))
    theta = angle * (math.pi / 180.0)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    sy, sx = pixel_scale(height, width)
    # Pixel-space inverse map on (x, y): src = M (p' - t) with M = R(-theta) = [[c, -s], [s, c]].
    bx = -(cos * tx - sin * ty)
    by = -(sin * tx + cos * ty)
    row0 = jnp.stack([cos, -sin * (sy / sx), bx / sx], axis=-1)
    row1 = jnp.stack([sin * (sx / sy), cos, by / sy], axis=-1)
    return jnp.stack([row0, row1], axis=1)


def affine_matrices(w_rt: jax.Array) -> jax.Array:
    """``A = I + w_RT`` ``[B, 2, 3]`` from ``w_RT = (w11, w12, w13, w21, w22, w23)`` ``[B, 6]``."""
    eye = jnp.asarray([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], w_rt.dtype)
    return eye + w_rt.reshape(-1, 2, 3)


def flow_grid(flow: jax.Array) -> jax.Array:
    """Identity grid plus a per-pixel flow ``[B, H, W, 2]`` in *pixels* (``(row, col)``): the output
    pixel ``p`` samples the input at ``p + flow(p)`` (stAdv, Xiao et al. 2018, eq. 1)."""
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(f"flow must be [B, H, W, 2], got shape {flow.shape}")
    return identity_grid(flow.shape[1], flow.shape[2], flow.dtype) + flow


def integrated_grid(w_rt: jax.Array, flow: jax.Array) -> jax.Array:
    """The integrated spatial grid ``T_{w_RT, w_F}(G) = (I + w_RT) [u v 1]^T + w_F`` (Pareto doc,
    Sec. 2), in pixel coordinates; ``w_rt [B, 6]`` and the flow ``w_F [B, H, W, 2]`` (``(row, col)``
    components) are both in normalised units."""
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(f"flow must be [B, H, W, 2], got shape {flow.shape}")
    height, width = flow.shape[1:3]
    return affine_grid(affine_matrices(w_rt), height, width) + flow_to_pixels(flow, height, width)


def smoothness(flow: jax.Array, eps: float = 1e-8) -> jax.Array:
    """stAdv's flow loss ``L_flow`` (Xiao et al. 2018, eq. 4), per example ``[B]``.

    ``L_flow(f) = sum_p sum_{q in N(p)} sqrt(||du_p - du_q||^2 + ||dv_p - dv_q||^2 + eps)`` over the
    4-neighbourhood ``N(p)`` inside the image; every adjacent pair appears twice (as ``(p, q)`` and
    ``(q, p)``), as in the published sum. It is in the units of ``flow``.
    """
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(f"flow must be [B, H, W, 2], got shape {flow.shape}")
    vertical = flow[:, 1:] - flow[:, :-1]
    horizontal = flow[:, :, 1:] - flow[:, :, :-1]
    v = jnp.sqrt(jnp.sum(vertical**2, axis=-1) + eps)
    h = jnp.sqrt(jnp.sum(horizontal**2, axis=-1) + eps)
    return 2.0 * (jnp.sum(v, axis=(1, 2)) + jnp.sum(h, axis=(1, 2)))


# ------------------------------------------------------------------------------ threat models


def _per_example(key: jax.Array, x: jax.Array, draw) -> Any:
    """``draw(key, batch)`` with one key, or one draw per example with per-example keys ``[B]``."""
    if key.ndim == 1:
        return jax.vmap(lambda k: jax.tree.map(lambda a: a[0], draw(k, 1)))(key)
    return draw(key, x.shape[0])


def _uniform_box(key: jax.Array, shape: tuple[int, ...], bound: Any, dtype: Any) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, minval=-1.0, maxval=1.0) * bound


def _linf_contains(v: jax.Array, bound: Any, atol: float) -> jax.Array:
    flat = jnp.abs(v.reshape(v.shape[0], -1)) - bound
    return jnp.all(flat <= atol, axis=1)


def _finish(x_adv: jax.Array) -> jax.Array:
    """Clips the warped batch to [0, 1] (bilinear weights sum to 1 only up to rounding), with the
    identity as gradient: a plain clip would halve the gradient at pixels that are exactly 0 or 1
    (most of an MNIST digit), although the warp itself never leaves the box."""
    return x_adv + jax.lax.stop_gradient(jnp.clip(x_adv, 0.0, 1.0) - x_adv)


def _require_hw(hw: tuple[int, int] | None) -> tuple[int, int]:
    if hw is None:
        raise ValueError("this threat model has per-pixel parameters: pass hw=(height, width)")
    return hw


@dataclasses.dataclass(frozen=True)
class RotationTranslation:
    """Rotations by at most ``max_angle`` degrees and translations by at most ``max_translation``
    pixels per axis (Engstrom et al. 2019; the SRT document's spatial neighbourhood).

    Parameters: ``[B, 3]`` = ``(angle_deg, tx, ty)`` (see the module docstring for the direction).
    Step sizes for ``ascend``: ``(step_size_angle, step_size_translation)``.
    """

    max_angle: float = 30.0
    max_translation: float = 3.0
    padding: str = "zeros"

    def __post_init__(self):
        _check_nonnegative(max_angle=self.max_angle, max_translation=self.max_translation)
        check_padding(self.padding)

    @property
    def bounds(self) -> jax.Array:
        return jnp.stack(
            [
                jnp.asarray(b, jnp.float32)
                for b in (self.max_angle, self.max_translation, self.max_translation)
            ]
        )

    def scaled(self, factor: Any) -> RotationTranslation:
        return dataclasses.replace(
            self, max_angle=self.max_angle * factor, max_translation=self.max_translation * factor
        )

    def identity(self, x: jax.Array) -> jax.Array:
        return jnp.zeros((x.shape[0], 3), jnp.float32)

    def sample(self, key: jax.Array, batch: int, hw: tuple[int, int] | None = None) -> jax.Array:
        return _uniform_box(key, (batch, 3), self.bounds, jnp.float32)

    def init(self, key: jax.Array, x: jax.Array) -> jax.Array:
        return _per_example(key, x, self.sample)

    def project(self, params: jax.Array) -> jax.Array:
        return jnp.clip(params, -self.bounds, self.bounds)

    def contains(self, params: jax.Array, atol: float = 1e-5) -> jax.Array:
        return _linf_contains(params, self.bounds, atol)

    def ascend(self, params: jax.Array, grad: jax.Array, step_size: tuple[Any, Any]) -> jax.Array:
        angle, translation = (jnp.asarray(s, params.dtype) for s in step_size)
        steps = jnp.stack([angle, translation, translation])
        return params + steps * jnp.sign(grad)

    def grid(self, params: jax.Array, height: int, width: int) -> jax.Array:
        matrices = rotation_translation_matrix(
            params[:, 0], params[:, 1], params[:, 2], height, width
        )
        return affine_grid(matrices, height, width)

    def apply(self, params: jax.Array, x: jax.Array) -> jax.Array:
        grid = self.grid(params.astype(x.dtype), x.shape[1], x.shape[2])
        return _finish(warp(x, grid, self.padding))


@dataclasses.dataclass(frozen=True)
class AffineSet:
    """Affine warps ``A = I + w_RT`` with ``||w_RT||_inf <= eps`` (the Pareto document's generic
    6-parameter RT attack). Parameters: ``[B, 6]`` (normalised units). Step size: a float."""

    eps: float
    padding: str = "zeros"

    def __post_init__(self):
        _check_nonnegative(eps=self.eps)
        check_padding(self.padding)

    def scaled(self, factor: Any) -> AffineSet:
        return dataclasses.replace(self, eps=self.eps * factor)

    def identity(self, x: jax.Array) -> jax.Array:
        return jnp.zeros((x.shape[0], 6), jnp.float32)

    def sample(self, key: jax.Array, batch: int, hw: tuple[int, int] | None = None) -> jax.Array:
        return _uniform_box(key, (batch, 6), self.eps, jnp.float32)

    def init(self, key: jax.Array, x: jax.Array) -> jax.Array:
        return _per_example(key, x, self.sample)

    def project(self, params: jax.Array) -> jax.Array:
        return jnp.clip(params, -self.eps, self.eps)

    def contains(self, params: jax.Array, atol: float = 1e-5) -> jax.Array:
        return _linf_contains(params, self.eps, atol)

    def ascend(self, params: jax.Array, grad: jax.Array, step_size: Any) -> jax.Array:
        return params + step_size * jnp.sign(grad)

    def grid(self, params: jax.Array, height: int, width: int) -> jax.Array:
        return affine_grid(affine_matrices(params), height, width)

    def apply(self, params: jax.Array, x: jax.Array) -> jax.Array:
        grid = self.grid(params.astype(x.dtype), x.shape[1], x.shape[2])
        return _finish(warp(x, grid, self.padding))


@dataclasses.dataclass(frozen=True)
class FlowSet:
    """Per-pixel flow fields ``w_F`` with ``||w_F||_inf <= eps`` (Pareto document, Eq. 2).

    Parameters: ``[B, H, W, 2]`` ``(row, col)`` displacements in *normalised* units (one unit is
    ``(H - 1) / 2`` pixels along rows, ``(W - 1) / 2`` along columns), so ``eps`` is the ``eps_F``
    of the integrated attack. Step size: a float.
    """

    eps: float
    padding: str = "zeros"

    def __post_init__(self):
        _check_nonnegative(eps=self.eps)
        check_padding(self.padding)

    def scaled(self, factor: Any) -> FlowSet:
        return dataclasses.replace(self, eps=self.eps * factor)

    def identity(self, x: jax.Array) -> jax.Array:
        return jnp.zeros(x.shape[:3] + (2,), jnp.float32)

    def sample(self, key: jax.Array, batch: int, hw: tuple[int, int] | None = None) -> jax.Array:
        return _uniform_box(key, (batch, *_require_hw(hw), 2), self.eps, jnp.float32)

    def init(self, key: jax.Array, x: jax.Array) -> jax.Array:
        return _per_example(key, x, lambda k, b: self.sample(k, b, x.shape[1:3]))

    def project(self, params: jax.Array) -> jax.Array:
        return jnp.clip(params, -self.eps, self.eps)

    def contains(self, params: jax.Array, atol: float = 1e-5) -> jax.Array:
        return _linf_contains(params, self.eps, atol)

    def ascend(self, params: jax.Array, grad: jax.Array, step_size: Any) -> jax.Array:
        return params + step_size * jnp.sign(grad)

    def flow_pixels(self, params: jax.Array) -> jax.Array:
        return flow_to_pixels(params, params.shape[1], params.shape[2])

    def grid(self, params: jax.Array, height: int, width: int) -> jax.Array:
        return flow_grid(flow_to_pixels(params, height, width))

    def apply(self, params: jax.Array, x: jax.Array) -> jax.Array:
        grid = self.grid(params.astype(x.dtype), x.shape[1], x.shape[2])
        return _finish(warp(x, grid, self.padding))


class SpatialParams(NamedTuple):
    """Parameters of ``IntegratedSet``: ``w = [w_F, w_RT]`` (a pytree)."""

    flow: jax.Array  # [B, H, W, 2], normalised units
    affine: jax.Array  # [B, 6]


@dataclasses.dataclass(frozen=True)
class IntegratedSet:
    """The integrated spatial set of the Pareto document (Sec. 2): flow ``||w_F||_inf <= eps_flow``
    and affine increment ``||w_RT||_inf <= eps_affine``, warped by ``T_{w_RT, w_F}(G)``.

    Parameters: ``SpatialParams(flow [B, H, W, 2], affine [B, 6])`` (normalised units).
    Step sizes for ``ascend``: ``(step_size_flow, step_size_affine)``.
    """

    eps_flow: float
    eps_affine: float
    padding: str = "zeros"

    def __post_init__(self):
        _check_nonnegative(eps_flow=self.eps_flow, eps_affine=self.eps_affine)
        check_padding(self.padding)

    def scaled(self, factor: Any) -> IntegratedSet:
        return dataclasses.replace(
            self, eps_flow=self.eps_flow * factor, eps_affine=self.eps_affine * factor
        )

    def identity(self, x: jax.Array) -> SpatialParams:
        return SpatialParams(
            jnp.zeros(x.shape[:3] + (2,), jnp.float32), jnp.zeros((x.shape[0], 6), jnp.float32)
        )

    def sample(
        self, key: jax.Array, batch: int, hw: tuple[int, int] | None = None
    ) -> SpatialParams:
        k_flow, k_affine = jax.random.split(key)
        return SpatialParams(
            _uniform_box(k_flow, (batch, *_require_hw(hw), 2), self.eps_flow, jnp.float32),
            _uniform_box(k_affine, (batch, 6), self.eps_affine, jnp.float32),
        )

    def init(self, key: jax.Array, x: jax.Array) -> SpatialParams:
        return _per_example(key, x, lambda k, b: self.sample(k, b, x.shape[1:3]))

    def project(self, params: SpatialParams) -> SpatialParams:
        return SpatialParams(
            jnp.clip(params.flow, -self.eps_flow, self.eps_flow),
            jnp.clip(params.affine, -self.eps_affine, self.eps_affine),
        )

    def contains(self, params: SpatialParams, atol: float = 1e-5) -> jax.Array:
        return _linf_contains(params.flow, self.eps_flow, atol) & _linf_contains(
            params.affine, self.eps_affine, atol
        )

    def ascend(
        self, params: SpatialParams, grad: SpatialParams, step_size: tuple[Any, Any]
    ) -> SpatialParams:
        step_size_flow, step_size_affine = step_size
        return SpatialParams(
            params.flow + step_size_flow * jnp.sign(grad.flow),
            params.affine + step_size_affine * jnp.sign(grad.affine),
        )

    def flow_pixels(self, params: SpatialParams) -> jax.Array:
        return flow_to_pixels(params.flow, params.flow.shape[1], params.flow.shape[2])

    def grid(self, params: SpatialParams, height: int, width: int) -> jax.Array:
        return integrated_grid(params.affine, params.flow)

    def apply(self, params: SpatialParams, x: jax.Array) -> jax.Array:
        params = jax.tree.map(lambda p: p.astype(x.dtype), params)
        return _finish(warp(x, self.grid(params, x.shape[1], x.shape[2]), self.padding))


SpatialThreat = RotationTranslation | AffineSet | FlowSet | IntegratedSet
