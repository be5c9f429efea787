"""Analysis tools: SmoothGrad, skewness, loss landscapes, decision surfaces, plots, launch.analyze.

Closed forms on linear models, the value at the grid's origin against a direct computation, and
one end-to-end run of ``python -m launch.analyze`` on two tiny (untrained) workdirs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from advjax import losses
from advjax.analysis import (
    decision_surface,
    decision_value,
    input_directions,
    input_space_landscape,
    median_skewness,
    plot_decision_surfaces,
    plot_landscapes,
    plot_saliency_maps,
    plot_skewness,
    saliency_difference_skewness,
    smoothgrad,
    spatial_directions,
    spatial_landscape,
    transform_landscape,
)
from advjax.threats.spatial import IntegratedSet, RotationTranslation
from tests.conftest import linear_model_fn

REPO = Path(__file__).resolve().parents[1]


def mlp_fn(variables, x):
    """A small nonlinear model: its input gradient depends on ``x``."""
    return jnp.tanh(x.reshape(x.shape[0], -1) @ variables["w1"]) @ variables["w2"]


@pytest.fixture
def mlp():
    k1, k2 = jax.random.split(jax.random.key(3))
    return mlp_fn, {
        "w1": jax.random.normal(k1, (64, 16)) / 4.0,
        "w2": jax.random.normal(k2, (16, 10)),
    }


@jax.jit(static_argnums=0)
def _logit_grad(model_fn, variables, x, y):
    """``d f_y(x) / dx`` per example, by plain ``jax.grad``."""
    return jax.vmap(jax.grad(lambda xi, yi: model_fn(variables, xi[None])[0, yi]))(x, y)


def _ce(model_fn, variables, x, y):
    return losses.cross_entropy(model_fn(variables, x), y)


# ------------------------------------------------------------------------------------ SmoothGrad


def test_smoothgrad_with_sigma_zero_is_the_logit_gradient(mlp, images):
    model_fn, variables = mlp
    x, y = images
    s = smoothgrad(model_fn, variables, x, y, jax.random.key(0), num_samples=3, sigma=0.0)
    assert s.shape == x.shape
    np.testing.assert_allclose(s, _logit_grad(model_fn, variables, x, y), rtol=1e-5, atol=1e-6)


def test_smoothgrad_is_the_mean_gradient_over_documented_noise_draws(mlp, images):
    model_fn, variables = mlp
    x, y = images
    key, n, sigma = jax.random.key(4), 7, 0.3
    # Draw i is fold_in(key, i); the chunking does not change the result.
    noisy = [x + sigma * jax.random.normal(jax.random.fold_in(key, i), x.shape) for i in range(n)]
    expected = np.mean([_logit_grad(model_fn, variables, p, y) for p in noisy], axis=0)
    for chunk in (3, 50):  # 7 = 3 + 3 + 1 (a partial last chunk); 50 > n
        s = smoothgrad(model_fn, variables, x, y, key, num_samples=n, sigma=sigma, chunk_size=chunk)
        np.testing.assert_allclose(s, expected, rtol=1e-4, atol=1e-5)
    # Noise matters for a nonlinear model: not the plain gradient.
    assert not np.allclose(expected, _logit_grad(model_fn, variables, x, y), atol=1e-3)


def test_smoothgrad_of_a_linear_model_is_its_weight_column(linear_model, images):
    model_fn, variables = linear_model
    x, y = images
    keys = jax.random.split(jax.random.key(1), x.shape[0])  # per-example keys
    for sigma in (0.1, 2.0):
        s = smoothgrad(model_fn, variables, x, y, keys, num_samples=5, sigma=sigma)
        np.testing.assert_allclose(s.reshape(x.shape[0], -1), variables["w"][:, y].T, atol=1e-5)
    with pytest.raises(ValueError, match="one per example"):
        smoothgrad(model_fn, variables, x, y, keys[:2])


def test_jitted_smoothgrad_traces_once_for_calls_of_one_shape(mlp, images):
    model_fn, variables = mlp
    x, y = images
    chex.clear_trace_counter()
    fn = jax.jit(
        chex.assert_max_traces(smoothgrad, n=1),
        static_argnums=0,
        static_argnames=("num_samples", "chunk_size"),
    )
    outs = [
        fn(model_fn, variables, x * s, y, jax.random.key(s), num_samples=4, sigma=0.1 * s)
        for s in (1, 2, 3)
    ]
    assert all(np.all(np.isfinite(o)) for o in outs)
    assert not np.allclose(outs[0], outs[1])


# ------------------------------------------------------------------------------------- skewness


def test_skewness_of_saliency_differences():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 6, 6, 3)).astype(np.float32)
    b = rng.gamma(2.0, size=(5, 6, 6, 3)).astype(np.float32)
    skew = np.asarray(saliency_difference_skewness(a, b))
    expected = scipy.stats.skew((a - b).reshape(5, -1), axis=1)
    np.testing.assert_allclose(skew, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(median_skewness(a, b), np.median(expected), rtol=1e-4)
    assert np.all(np.asarray(saliency_difference_skewness(a, a)) == 0.0)
    assert np.all(np.asarray(saliency_difference_skewness(a + 3.0, a)) == 0.0)  # constant
    # A few large positive differences (a long positive tail): positive skewness; and mirrored.
    tail = np.zeros((2, 8, 8, 1), np.float32)
    tail[:, :2, :2] = 5.0
    tail += 0.01 * rng.normal(size=tail.shape).astype(np.float32)
    zeros = np.zeros_like(tail)
    assert np.all(np.asarray(saliency_difference_skewness(tail, zeros)) > 1.0)
    assert np.all(np.asarray(saliency_difference_skewness(zeros, tail)) < -1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        saliency_difference_skewness(a, b[:2])


# ------------------------------------------------------------------------- decision surfaces


def test_decision_surface_origin_and_linear_closed_form(images):
    x, y = images
    y = y % 2
    k_w, k_b = jax.random.split(jax.random.key(5))
    variables = {"w": jax.random.normal(k_w, (64, 2)), "b": jax.random.normal(k_b, (2,))}
    key, radius, n = jax.random.key(6), 0.4, 5
    surface = decision_surface(
        linear_model_fn, variables, x, y, key, radius=radius, num_points=n, chunk_size=4
    )
    assert surface.shape == (x.shape[0], n, n)
    p = np.asarray(jax.nn.softmax(linear_model_fn(variables, x)))
    direct = p[np.arange(len(y)), y] - p[np.arange(len(y)), 1 - y]
    np.testing.assert_allclose(surface[:, n // 2, n // 2], direct, atol=1e-6)
    # Two classes: D = p_y - p_other = tanh(m / 2), with the margin m affine in (a, b).
    d1, d2 = input_directions(linear_model_fn, variables, x, y, key)
    w = np.asarray(variables["w"])
    g = (w[:, y] - w[:, 1 - y]).T  # [B, D]: d m / dx
    m0 = np.asarray(linear_model_fn(variables, x))
    m0 = m0[np.arange(len(y)), y] - m0[np.arange(len(y)), 1 - y]
    s1 = np.sum(g * np.asarray(d1).reshape(len(y), -1), axis=1)
    s2 = np.sum(g * np.asarray(d2).reshape(len(y), -1), axis=1)
    c = np.linspace(-radius, radius, n)
    closed = np.tanh(
        (
            m0[:, None, None]
            + c[None, :, None] * s1[:, None, None]
            + c[None, None, :] * s2[:, None, None]
        )
        / 2
    )
    np.testing.assert_allclose(surface, closed, atol=2e-5)
    assert np.all(s1 < 0)  # the adversarial direction lowers the margin
    # Directions: sign of the CE gradient; random one orthogonal, of the same L2 norm.
    np.testing.assert_array_equal(np.abs(d1), 1.0)
    flat1, flat2 = np.asarray(d1).reshape(len(y), -1), np.asarray(d2).reshape(len(y), -1)
    np.testing.assert_allclose(np.sum(flat1 * flat2, axis=1), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(flat2, axis=1), np.linalg.norm(flat1, axis=1))


def test_decision_value_and_random_planes(mlp, images):
    model_fn, variables = mlp
    x, y = images
    logits = model_fn(variables, x)
    p = np.asarray(jax.nn.softmax(logits))
    others = np.where(np.eye(10, dtype=bool)[np.asarray(y)], -np.inf, p)
    np.testing.assert_allclose(
        decision_value(logits, y), p[np.arange(len(y)), y] - others.max(axis=1), atol=1e-6
    )
    surface = decision_surface(
        model_fn, variables, x, y, jax.random.key(0), radius=0.2, num_points=3, mode="random"
    )
    np.testing.assert_allclose(surface[:, 1, 1], decision_value(logits, y), atol=1e-6)
    assert np.all(np.abs(np.asarray(surface)) <= 1.0)
    with pytest.raises(ValueError, match="odd"):
        decision_surface(model_fn, variables, x, y, jax.random.key(0), radius=0.2, num_points=4)


# ------------------------------------------------------------------------------- landscapes


def test_input_space_landscape_origin_and_monotone_adversarial_axis(linear_model, images):
    model_fn, variables = linear_model
    x, y = images
    n = 7
    grid = input_space_landscape(
        model_fn, variables, x, y, jax.random.key(2), radius=0.6, num_points=n
    )
    assert grid.shape == (x.shape[0], n, n)
    clean = _ce(model_fn, variables, x, y)
    np.testing.assert_allclose(grid[:, n // 2, n // 2], clean, rtol=1e-5)
    # CE of a linear model is convex along the line with slope ||grad||_1 > 0 at x: increasing.
    forward = np.asarray(grid[:, n // 2 :, n // 2])
    assert np.all(np.diff(forward, axis=1) > 0)
    mean = input_space_landscape(
        model_fn, variables, x, y, jax.random.key(2), radius=0.6, num_points=n, reduction="mean"
    )
    np.testing.assert_allclose(mean, np.mean(grid, axis=0), rtol=1e-5)
    # A given adversarial direction is scaled to unit Linf norm: 3 (x_adv - x) is the same plane.
    delta = 0.1 * jnp.sign(jax.random.normal(jax.random.key(7), x.shape))
    a = input_space_landscape(
        model_fn, variables, x, y, jax.random.key(2), radius=0.6, num_points=3, adv_direction=delta
    )
    b = input_space_landscape(
        model_fn,
        variables,
        x,
        y,
        jax.random.key(2),
        radius=0.6,
        num_points=3,
        adv_direction=3 * delta,
    )
    np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_allclose(
        a[:, 2, 1], _ce(model_fn, variables, x + 0.6 * delta / 0.1, y), rtol=1e-5
    )


def test_transform_landscape_grid_orientation(mlp, images):
    model_fn, variables = mlp
    x, y = images
    d1 = jax.random.normal(jax.random.key(8), x.shape)
    d2 = jax.random.normal(jax.random.key(9), x.shape)
    c1, c2 = jnp.asarray([-0.1, 0.0, 0.2]), jnp.asarray([0.0, 0.05])
    grid = transform_landscape(
        model_fn, variables, x, y, lambda _, t: t, x, d1, d2, (c1, c2), chunk_size=4
    )
    assert grid.shape == (x.shape[0], 3, 2)
    for i, a in enumerate(c1):
        for j, b in enumerate(c2):
            direct = _ce(model_fn, variables, x + a * d1 + b * d2, y)
            np.testing.assert_allclose(grid[:, i, j], direct, rtol=1e-5, atol=1e-6)


def test_spatial_landscape_at_the_identity_is_the_clean_loss(mlp, images):
    model_fn, variables = mlp
    x, y = images
    clean = _ce(model_fn, variables, x, y)
    integrated = IntegratedSet(eps_flow=0.05, eps_affine=0.1)
    grid = spatial_landscape(
        model_fn, variables, x, y, integrated, jax.random.key(0), num_points=3, span=1.0
    )
    assert grid.shape == (x.shape[0], 3, 3)
    np.testing.assert_allclose(grid[:, 1, 1], clean, rtol=1e-6)
    assert not np.allclose(grid[:, 0, 0], clean)  # the corners are warped
    d1, d2 = spatial_directions(integrated, x, jax.random.key(0))
    np.testing.assert_allclose(np.abs(d1.flow), 0.05)
    np.testing.assert_allclose(np.abs(d2.affine), 0.1)
    # Coordinate directions of the rotation-translation threat: (tx, ty) scaled to 3 pixels.
    rt = RotationTranslation()
    dirs = spatial_directions(rt, x, coords=(1, 2))
    grid = spatial_landscape(model_fn, variables, x, y, rt, None, num_points=3, directions=dirs)
    np.testing.assert_allclose(grid[:, 1, 1], clean, rtol=1e-6)
    shifted = rt.apply(jnp.tile(jnp.asarray([[0.0, 3.0, 0.0]]), (x.shape[0], 1)), x)
    np.testing.assert_allclose(grid[:, 2, 1], _ce(model_fn, variables, shifted, y), rtol=1e-5)


# ------------------------------------------------------------------------------------ plots


def test_plots_write_readable_pngs(tmp_path, images):
    plt_image = pytest.importorskip("matplotlib.image")
    x, _ = images
    rng = np.random.default_rng(0)
    grid = rng.normal(size=(5, 5))
    c = np.linspace(-1, 1, 5)
    paths = [str(tmp_path / f"{i}.png") for i in range(4)]
    plot_saliency_maps(paths[0], np.asarray(x), {"a": rng.normal(size=x.shape)}, labels="012345")
    plot_landscapes(paths[1], {"a": grid, "b": grid**2}, c)
    plot_decision_surfaces(paths[2], {"a": np.tanh(grid)}, (c, c))
    plot_skewness(paths[3], {"pgd": -0.5, "rt": 0.3}, reference="natural")
    for p in paths:
        image = plt_image.imread(p)
        assert image.ndim == 3 and min(image.shape[:2]) > 50 and np.ptp(image) > 0
    with pytest.raises(ValueError, match="grid of shape"):
        plot_landscapes(paths[1], {"a": grid}, np.linspace(-1, 1, 4))


def test_plots_say_how_to_install_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    with pytest.raises(ImportError, match=r'pip install "advjax\[plot\]"'):
        plot_skewness(str(tmp_path / "s.png"), {"a": 1.0}, reference="b")


# ------------------------------------------------------------------------------------ launch


def _tiny_workdir(path: Path, seed: int) -> None:
    """A workdir of an untrained mnist_fast_at (the cheapest zoo network to compile) on synthetic
    data: config.json and step 0."""
    from advjax.experiment import build_defense, build_model, initial_state, write_config
    from advjax.train.checkpoint import Checkpointer, to_host
    from tests.train_configs import tiny_config

    config = tiny_config("natural", epochs=1)
    config.seed = seed
    config.model.name = "mnist_fast_at"
    config.evaluate.spatial_steps = 2  # w* of the integrated spatial attack: 2 steps suffice here
    path.mkdir(parents=True)
    write_config(config, str(path))
    model = build_model(config)
    defense = build_defense(config, model, 1)
    state, _, _ = initial_state(config, model, (28, 28, 1), 1, defense.init_state())
    ckpt = Checkpointer(str(path), create=True)
    ckpt.save(0, to_host(state))
    ckpt.close()


def test_launch_analyze_writes_pngs_markdown_and_skewness(tmp_path):
    plt_image = pytest.importorskip("matplotlib.image")
    workdirs = [tmp_path / "natural", tmp_path / "other"]
    for seed, w in enumerate(workdirs):
        _tiny_workdir(w, seed)
    out = tmp_path / "analysis"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [
        "-m",
        "launch.analyze",
        f"--workdirs={workdirs[0]},{workdirs[1]}",
        "--tools=saliency,skewness,landscape,decision_surface",
        "--num_examples=4",
        "--plot_examples=1",
        "--num_samples=3",
        "--grid_size=5",
        "--radius=0.5",
        f"--output={out}",
    ]
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pngs = [
        "saliency.png",
        "skewness.png",
        "landscape_input_0.png",
        "landscape_spatial_0.png",
        "landscape_spatial_max_0.png",
        "decision_surface_0.png",
    ]
    markdown = (out / "analysis.md").read_text()
    for name in pngs:
        image = plt_image.imread(str(out / name))
        assert image.ndim == 3 and np.ptp(image) > 0, name
        assert f"]({name})" in markdown
    assert "n = 3 samples, sigma = 0.15" in markdown and "5 x 5 grid" in markdown
    assert "[-0.5, 0.5]" in markdown
    report = json.loads((out / "skewness.json").read_text())
    assert report["reference"] == "natural" and report["num_examples"] == 4
    per_example = report["per_example_skewness"]["other"]
    assert len(per_example) == 4 and np.all(np.isfinite(per_example))
    assert report["median_skewness"]["other"] == pytest.approx(np.median(per_example))
    assert "median skew(S_other - S_natural)" in proc.stdout
