"""Analysis figures of trained models: saliency, skewness, loss landscapes, decision surfaces.

    python -m launch.analyze --workdirs=workdirs/mnist_natural,workdirs/mnist_pgd_at \
        --tools=saliency,skewness,landscape,decision_surface --num_examples=8 --output=analysis

Every workdir is restored (``--checkpoint``, default each config's ``evaluate.checkpoint``) and
analysed on the first ``--num_examples`` test images of the first workdir's dataset. Tools:

* ``saliency``: SmoothGrad maps of every model side by side (Pareto doc, Sec. 4, Eq. 10, Fig. 4):
  ``saliency.png``.
* ``skewness``: per model, the median over the examples of the skewness of ``S_model - S_ref``,
  the first workdir being the reference (the document compares robust models with the naturally
  trained one; Fig. 5): ``skewness.png`` and ``skewness.json``. Needs two or more workdirs.
* ``landscape``: for each of the first ``--plot_examples`` images, the CE loss on the input plane
  spanned by the adversarial direction ``sign(grad_x CE)`` and a random one
  (``landscape_input_<i>.png``; SRT doc, App. H) and over a random plane in the integrated
  spatial attack's parameter space ``w = [w_F, w_RT]``, around the identity
  (``landscape_spatial_<i>.png``) and around the maximiser ``w*`` of the integrated spatial
  attack (``landscape_spatial_max_<i>.png``; Pareto doc, Fig. 2).
* ``decision_surface``: ``D = p_y - max_{i != y} p_i`` on the same kind of input plane, one
  3-D surface and one map with the ``D = 0`` contour per model (``decision_surface_<i>.png``;
  SRT doc, Sec. 4.6, Fig. 3).

Each model uses its own adversarial direction; random directions and SmoothGrad noise are the
same for every model (one ``--seed``). ``analysis.md`` names every PNG and the hyperparameters.
Defaults the documents do not give are ours: ``--num_samples=50``, ``--sigma=0.15``,
``--radius`` twice the first workdir's Linf evaluation eps, ``--grid_size=21``,
``--spatial_span=1`` (in units of the spatial bounds ``eps_flow`` / ``eps_affine`` of the first
config's ``evaluate`` section).
"""

from __future__ import annotations

from advjax import host

host.configure()  # malloc and XLA:CPU settings, before JAX starts; see advjax/host.py

# ruff: noqa: E402
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from advjax import attacks
from advjax.analysis import (
    centered_grid,
    decision_surface,
    input_space_landscape,
    plot_decision_surfaces,
    plot_landscapes,
    plot_saliency_maps,
    plot_skewness,
    saliency_difference_skewness,
    smoothgrad,
    spatial_landscape,
)
from advjax.experiment import load_config, load_split, restore_variables, threat_settings
from advjax.models import make_model_fn
from advjax.models.canonicalize import auto_canonicalize
from advjax.threats.spatial import IntegratedSet
from launch import console

TOOLS = ("saliency", "skewness", "landscape", "decision_surface")

_WORKDIRS = flags.DEFINE_list(
    "workdirs", None, "Comma-separated training workdirs; the first is the skewness reference."
)
_TOOLS = flags.DEFINE_list("tools", list(TOOLS), f"Comma-separated tools: {', '.join(TOOLS)}.")
_NAMES = flags.DEFINE_list("names", None, "Model names in the figures (default: workdir names).")
_NUM_EXAMPLES = flags.DEFINE_integer(
    "num_examples", 8, "Analyse the first N test images.", lower_bound=1
)
_PLOT_EXAMPLES = flags.DEFINE_integer(
    "plot_examples",
    2,
    "Landscape / decision-surface figures for the first K images.",
    lower_bound=1,
)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "best, latest or a step (default: config).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Override the configs' data.data_dir.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "Output directory (default: <first workdir>/analysis)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the noise and random directions.")
_NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples", 50, "SmoothGrad noise samples n (our choice).", lower_bound=1
)
_SIGMA = flags.DEFINE_float("sigma", 0.15, "SmoothGrad noise std (our choice).", lower_bound=0.0)
_RADIUS = flags.DEFINE_float(
    "radius", None, "Input-plane half-width (default: 2 x the Linf evaluation eps).", lower_bound=0
)
_GRID_SIZE = flags.DEFINE_integer("grid_size", 21, "Grid points per axis (odd).", lower_bound=1)
_SPATIAL_SPAN = flags.DEFINE_float(
    "spatial_span", 1.0, "Spatial-plane half-width in units of the bounds.", lower_bound=0
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "SmoothGrad batch size.", lower_bound=1)


def model_names(workdirs: list[str], names: list[str] | None = None) -> list[str]:
    """The given names, or each workdir's base name (made unique with ``#i``)."""
    if names:
        if len(names) != len(workdirs):
            raise ValueError(f"{len(names)} names for {len(workdirs)} workdirs")
        return list(names)
    out: list[str] = []
    for i, w in enumerate(workdirs):
        name = os.path.basename(os.path.normpath(w)) or f"model{i}"
        out.append(name if name not in out else f"{name}#{i}")
    return out


def load_models(workdirs, checkpoint, data_dir, num_examples):
    """``(x, y, models, first config)``; ``models`` are ``(model_fn, variables, checkpoint info)``
    of every workdir, on the first ``num_examples`` test images of the first workdir's data."""
    configs = [load_config(w) for w in workdirs]
    for w, c in zip(workdirs[1:], configs[1:], strict=True):
        if c.data.name != configs[0].data.name:
            raise ValueError(
                f"{w} was trained on {c.data.name}, {workdirs[0]} on {configs[0].data.name}: "
                "analyse models of one dataset together"
            )
    test = load_split(configs[0], "test", data_dir)
    test = test.take(np.arange(min(num_examples, len(test))))
    models = []
    for w, c in zip(workdirs, configs, strict=True):
        which = checkpoint or c.evaluate.get("checkpoint", "best")
        model, variables, info = restore_variables(c, w, which, test.image_shape)
        models.append((auto_canonicalize(make_model_fn(model)), variables, info))
    x = jnp.asarray(test.images, jnp.float32) / 255.0
    return x, jnp.asarray(test.labels), models, configs[0]


_smoothgrad = jax.jit(smoothgrad, static_argnums=0, static_argnames=("num_samples", "chunk_size"))


def saliency_maps(model_fn, variables, x, y, key, num_samples, sigma, batch_size) -> np.ndarray:
    """SmoothGrad ``[N, H, W, C]`` in batches of ``batch_size`` (the last one padded: one
    compilation); example ``i``'s noise comes from ``fold_in(key, i)``, whatever the batching."""
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(x.shape[0]))
    size = min(batch_size, x.shape[0])
    out = []
    for start in range(0, x.shape[0], size):
        xb, yb, kb = x[start : start + size], y[start : start + size], keys[start : start + size]
        pad = size - xb.shape[0]
        if pad:
            xb = jnp.concatenate([xb, jnp.zeros((pad,) + xb.shape[1:], xb.dtype)])
            yb = jnp.concatenate([yb, jnp.zeros((pad,), yb.dtype)])
            kb = jnp.concatenate([kb, kb[:pad]])
        s = _smoothgrad(model_fn, variables, xb, yb, kb, num_samples=num_samples, sigma=sigma)
        out.append(np.asarray(s[: size - pad]))
    return np.concatenate(out)


_input_landscape = jax.jit(
    input_space_landscape, static_argnums=0, static_argnames=("num_points", "chunk_size")
)
_spatial_landscape = jax.jit(
    spatial_landscape, static_argnums=(0, 4), static_argnames=("num_points", "chunk_size")
)
_decision_surface = jax.jit(
    decision_surface, static_argnums=0, static_argnames=("num_points", "chunk_size")
)


def default_radius(config) -> float:
    """Twice the Linf evaluation eps of ``config`` (our choice)."""
    settings = threat_settings(config.evaluate, 10)
    if settings.norm != "linf":
        raise ValueError(
            f"the evaluation threat model is {settings.norm}: pass --radius (the planes are "
            "spanned by Linf-normalised directions)"
        )
    return 2.0 * float(settings.eps)


def analyze(
    workdirs: list[str],
    tools: list[str],
    *,
    names: list[str] | None = None,
    num_examples: int = 8,
    plot_examples: int = 2,
    checkpoint: str | None = None,
    data_dir: str | None = None,
    output: str | None = None,
    seed: int = 0,
    num_samples: int = 50,
    sigma: float = 0.15,
    radius: float | None = None,
    grid_size: int = 21,
    spatial_span: float = 1.0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Runs ``tools`` on ``workdirs``; writes the PNGs, ``analysis.md`` and (for ``skewness``)
    ``skewness.json`` into ``output``. Returns ``{"pngs": [...], "skewness": {...} or None}``."""
    unknown = [t for t in tools if t not in TOOLS]
    if unknown or not tools:
        raise ValueError(f"unknown tools {unknown}; valid tools: {', '.join(TOOLS)}")
    if not workdirs:
        raise ValueError("pass at least one workdir")
    centered_grid(1.0, grid_size)  # checks that the grid size is odd, before any work
    names = model_names(workdirs, names)
    x, y, models, config = load_models(workdirs, checkpoint, data_dir, num_examples)
    out = output or os.path.join(workdirs[0], "analysis")
    os.makedirs(out, exist_ok=True)
    key_noise, key_dirs, key_attack = jax.random.split(jax.random.key(seed), 3)
    k = min(plot_examples, x.shape[0])
    xk, yk = x[:k], y[:k]
    entries: list[tuple[str, str]] = []  # (png, description)
    notes: list[str] = []
    result: dict[str, Any] = {"pngs": [], "skewness": None}

    def png(name: str, description: str) -> str:
        entries.append((name, description))
        result["pngs"].append(os.path.join(out, name))
        return os.path.join(out, name)

    maps = None
    if "saliency" in tools or "skewness" in tools:
        maps = {
            name: saliency_maps(f, v, x, y, key_noise, num_samples, sigma, batch_size)
            for name, (f, v, _) in zip(names, models, strict=True)
        }
    if "saliency" in tools:
        rows = min(x.shape[0], 16)
        plot_saliency_maps(
            png(
                "saliency.png",
                f"SmoothGrad maps (channel sum of abs(S), max 1 per image), {rows} images",
            ),
            np.asarray(x[:rows]),
            {n: m[:rows] for n, m in maps.items()},
            labels=[f"y={int(t)}" for t in np.asarray(y[:rows])],
        )
    if "skewness" in tools:
        if len(models) < 2:
            notes.append("skewness skipped: it compares models, and one workdir was given.")
            logging.warning("skewness needs two or more workdirs; skipped")
        else:
            ref = names[0]
            per_example = {
                n: np.asarray(saliency_difference_skewness(maps[n], maps[ref])) for n in names[1:]
            }
            medians = {n: float(np.median(s)) for n, s in per_example.items()}
            result["skewness"] = {
                "reference": ref,
                "num_examples": int(x.shape[0]),
                "num_samples": num_samples,
                "sigma": sigma,
                "median_skewness": medians,
                "per_example_skewness": {n: s.tolist() for n, s in per_example.items()},
            }
            with open(os.path.join(out, "skewness.json"), "w") as f:
                json.dump(result["skewness"], f, indent=2)
            plot_skewness(
                png("skewness.png", f"median skew(S_model - S_{ref}) over {x.shape[0]} images"),
                medians,
                reference=ref,
            )
    if "landscape" in tools or "decision_surface" in tools:
        radius = default_radius(config) if radius is None else float(radius)
        coefficients = np.asarray(centered_grid(radius, grid_size))
    if "landscape" in tools:
        settings = threat_settings(config.evaluate, 10)
        threat = IntegratedSet(settings.eps_flow, settings.eps_affine, settings.padding)
        attack = attacks.integrated_spatial(
            settings.eps_flow, settings.eps_affine, steps=settings.spatial_steps
        )
        run_params = jax.jit(attack.run_params, static_argnums=0)
        inputs, spatial, spatial_max = {}, {}, {}
        for name, (f, v, _) in zip(names, models, strict=True):
            inputs[name] = np.asarray(
                _input_landscape(f, v, xk, yk, key_dirs, radius=radius, num_points=grid_size)
            )
            common = dict(num_points=grid_size, span=spatial_span)
            identity = jax.tree.map(np.asarray, threat.identity(xk))
            spatial[name] = np.asarray(
                _spatial_landscape(f, v, xk, yk, threat, key_dirs, theta0=identity, **common)
            )
            w_star, _ = run_params(f, v, xk, yk, key_attack)
            # On the host: a committed device array would make jit compile the landscape again.
            w_star = jax.tree.map(np.asarray, w_star)
            spatial_max[name] = np.asarray(
                _spatial_landscape(f, v, xk, yk, threat, key_dirs, theta0=w_star, **common)
            )
        span_grid = np.asarray(centered_grid(spatial_span, grid_size))
        for i in range(k):
            label = f"image {i} (y={int(yk[i])})"
            plot_landscapes(
                png(f"landscape_input_{i}.png", f"{label}: CE on the input plane"),
                {n: g[i] for n, g in inputs.items()},
                coefficients,
                xlabel="adversarial direction sign(grad CE)",
                ylabel="random orthogonal direction",
                zlabel="CE",
                title=f"{label}: loss in input space",
            )
            plot_landscapes(
                png(f"landscape_spatial_{i}.png", f"{label}: CE over w around the identity"),
                {n: g[i] for n, g in spatial.items()},
                span_grid,
                xlabel="random direction 1 (x bounds)",
                ylabel="random direction 2 (x bounds)",
                zlabel="CE",
                title=f"{label}: integrated spatial loss around w = 0",
            )
            plot_landscapes(
                png(f"landscape_spatial_max_{i}.png", f"{label}: CE over w around w*"),
                {n: g[i] for n, g in spatial_max.items()},
                span_grid,
                xlabel="random direction 1 (x bounds)",
                ylabel="random direction 2 (x bounds)",
                zlabel="CE",
                title=f"{label}: integrated spatial loss around the attack's w*",
            )
        notes.append(
            f"Spatial planes: integrated spatial threat eps_flow={settings.eps_flow}, "
            f"eps_affine={settings.eps_affine} ({settings.padding} padding), random sign "
            f"directions scaled to the bounds, coefficients in [-{spatial_span}, {spatial_span}]; "
            f"w* from the integrated spatial attack ({settings.spatial_steps} steps)."
        )
    if "decision_surface" in tools:
        surfaces = {
            name: np.asarray(
                _decision_surface(f, v, xk, yk, key_dirs, radius=radius, num_points=grid_size)
            )
            for name, (f, v, _) in zip(names, models, strict=True)
        }
        for i in range(k):
            label = f"image {i} (y={int(yk[i])})"
            plot_decision_surfaces(
                png(f"decision_surface_{i}.png", f"{label}: decision value D on the input plane"),
                {n: g[i] for n, g in surfaces.items()},
                coefficients,
                xlabel="adversarial direction",
                ylabel="random orthogonal direction",
                title=f"{label}: D = p_y - max_(i != y) p_i",
            )
    with open(os.path.join(out, "analysis.md"), "w") as f:
        settings = dict(
            num_examples=int(x.shape[0]),
            plot_examples=k,
            seed=seed,
            num_samples=num_samples,
            sigma=sigma,
            radius=radius,
            grid_size=grid_size,
        )
        f.write(_markdown(workdirs, names, models, entries, notes, settings))
    return result


def _markdown(workdirs, names, models, entries, notes, args: dict[str, Any]) -> str:
    lines = ["# Analysis", "", "| model | workdir | checkpoint |", "| --- | --- | --- |"]
    for name, w, (_, _, info) in zip(names, workdirs, models, strict=True):
        lines.append(f"| {name} | {w} | {info['kind']} (step {info['step']}) |")
    radius = args["radius"]
    lines += [
        "",
        f"Examples: the first {args['num_examples']} test images (figures per image: the first "
        f"{args['plot_examples']}); seed {args['seed']}.",
        f"SmoothGrad (Pareto doc, Eq. 10, logit f_y): n = {args['num_samples']} samples, "
        f"sigma = {args['sigma']} (our choices).",
    ]
    if radius is not None:
        lines.append(
            f"Input planes: coefficients in [-{radius:g}, {radius:g}], {args['grid_size']} x "
            f"{args['grid_size']} grid; directions: sign(grad_x CE) of each model (unit Linf) and "
            "a Rademacher direction made orthogonal to it, of the same L2 norm (our choices)."
        )
    lines += notes
    lines += ["", "| file | content |", "| --- | --- |"]
    lines += [f"| [{png}]({png}) | {text} |" for png, text in entries]
    return "\n".join(lines) + "\n"


def main(argv):
    console.configure()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    result = analyze(
        _WORKDIRS.value,
        [t.strip() for t in _TOOLS.value if t.strip()],
        names=_NAMES.value,
        num_examples=_NUM_EXAMPLES.value,
        plot_examples=_PLOT_EXAMPLES.value,
        checkpoint=_CHECKPOINT.value,
        data_dir=_DATA_DIR.value,
        output=_OUTPUT.value,
        seed=_SEED.value,
        num_samples=_NUM_SAMPLES.value,
        sigma=_SIGMA.value,
        radius=_RADIUS.value,
        grid_size=_GRID_SIZE.value,
        spatial_span=_SPATIAL_SPAN.value,
        batch_size=_BATCH_SIZE.value,
    )
    for path in result["pngs"]:
        print(f"wrote {path}")
    if result["skewness"]:
        for name, value in result["skewness"]["median_skewness"].items():
            print(f"median skew(S_{name} - S_{result['skewness']['reference']}) = {value:.4f}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdirs"])
    console.run(main)
