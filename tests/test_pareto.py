"""Pareto AT (seed 001 Sec. 4.2): the lower-level QP against CVXOPT, the sliding-window moments
against NumPy across a kill-and-resume, one compilation of the step."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import defenses
from advjax.data import load_dataset, train_batches
from advjax.defenses.pareto import (
    ParetoWindow,
    lower_level_objective,
    solve_lower_level,
    window_moments,
)
from advjax.experiment import initial_state, train_and_evaluate
from advjax.models import get_model
from advjax.train import Checkpointer, make_mesh, replicate, shard_batch
from advjax.train.metrics import read_metrics
from advjax.train.step import train_step
from tests.train_configs import tiny_config

TERMS = ("clean_ce", "pgd_ce", "flow_ce", "rt_ce")


def _cvxopt_solution(mean: np.ndarray, second: np.ndarray, r: float) -> np.ndarray:
    """Eq. 12 by CVXOPT's interior-point QP (the document's solver), tight tolerances."""
    cvxopt = pytest.importorskip("cvxopt")
    n = len(mean)
    hessian = n * np.diag(np.diag(second)) - second
    args = (
        cvxopt.matrix(4.0 * hessian),  # cvxopt minimises 1/2 x^T P x
        cvxopt.matrix(np.zeros(n)),
        cvxopt.matrix(-np.eye(n)),
        cvxopt.matrix(np.zeros(n)),
        cvxopt.matrix(np.stack([np.r_[0.0, mean[1:]], np.ones(n)])),
        cvxopt.matrix(np.array([r, 1.0])),
    )
    # Tight tolerances; a degenerate instance where they break the interior point method
    # (a domain error) gets CVXOPT's defaults.
    for tol in (1e-11, 1e-9, None):
        options = {"show_progress": False, "maxiters": 200}
        if tol is not None:
            options.update(abstol=tol, reltol=tol, feastol=tol)
        try:
            return np.asarray(cvxopt.solvers.qp(*args, options=options)["x"]).ravel()
        except (ValueError, ArithmeticError):
            continue
    raise AssertionError("CVXOPT failed")


def _instances(count: int, seed: int = 0):
    """Random windows of four losses, a quarter of them degenerate: two equal losses, a loss
    that is always zero, a window of one batch, ``r`` at either end of its feasible range."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        rows = 1 if k % 8 == 7 else int(rng.integers(2, 60))
        losses = rng.uniform(0.0, 3.0, (rows, 4)) * rng.uniform(0.2, 1.5, 4)
        kind = k % 8
        if kind == 1:
            losses[:, 2] = losses[:, 1]  # equal losses
        elif kind == 2:
            losses[:, 3] = 0.0  # a zero loss
        elif kind == 3:
            losses[:, 0] = losses[:, 1]  # natural loss equal to an adversarial one
        mean, second = losses.mean(0), losses.T @ losses / rows
        top = mean[1:].max()
        r = {4: 0.0, 5: top}.get(kind, float(rng.uniform(0.0, top)))
        out.append((mean, second, r, kind))
    return out


def test_lower_level_equals_cvxopt_on_1000_instances():
    instances = _instances(1000)
    with jax.enable_x64(True):
        solve = jax.jit(jax.vmap(solve_lower_level))
        ours = solve(*(jnp.asarray(np.stack([i[k] for i in instances])) for k in range(3)))
        ours_alpha = np.asarray(ours.alpha)
        objective = jax.vmap(lower_level_objective)
        ours_obj = np.asarray(objective(ours.alpha, jnp.asarray([i[1] for i in instances])))
        theirs = np.stack([_cvxopt_solution(m, s, r) for m, s, r, _ in instances])
        theirs_obj = np.asarray(
            objective(jnp.asarray(theirs), jnp.asarray([i[1] for i in instances]))
        )
    assert not np.asarray(ours.clipped).any()
    for k, (mean, _, r, kind) in enumerate(instances):
        alpha = ours_alpha[k]
        assert alpha.min() >= 0.0 and abs(alpha.sum() - 1.0) < 1e-9
        assert abs(alpha[1:] @ mean[1:] - r) < 1e-9
        # Same optimum value; the same point wherever the minimiser is unique (strictly convex
        # quadratic: no equal losses, more batches than losses).
        assert ours_obj[k] <= theirs_obj[k] + 1e-6 * max(1.0, abs(theirs_obj[k])), k
        if kind not in (1, 2, 3, 7):
            np.testing.assert_allclose(alpha, theirs[k], atol=1e-6, err_msg=f"instance {k}")


def test_infeasible_r_is_clipped_to_the_nearest_feasible_value():
    mean = jnp.asarray([0.5, 1.0, 2.0, 1.5])
    second = jnp.outer(mean, mean) + jnp.eye(4) * 0.1
    high = solve_lower_level(mean, second, 5.0)
    assert bool(high.clipped) and float(high.r) == pytest.approx(2.0)
    np.testing.assert_allclose(high.alpha, [0, 0, 1, 0], atol=1e-6)  # all on the largest loss
    low = solve_lower_level(mean, second, -1.0)
    assert bool(low.clipped) and float(low.r) == 0.0
    np.testing.assert_allclose(low.alpha, [1, 0, 0, 0], atol=1e-6)  # all on the natural loss
    inside = solve_lower_level(mean, second, 1.2)
    assert not bool(inside.clipped)
    assert float(jnp.dot(inside.alpha[1:], mean[1:])) == pytest.approx(1.2, abs=1e-5)


def test_window_moments_and_weights_in_float32_stay_on_the_simplex():
    rule = ParetoWindow(TERMS, r=1.0, window=5)
    state = rule.init()
    rng = np.random.default_rng(1)
    seen = []
    for _ in range(12):  # wraps around the window twice
        losses = rng.uniform(0.2, 2.5, 4).astype(np.float32)
        seen.append(losses)
        state = rule.update(state, jnp.asarray(losses))
        window = np.stack(seen[-5:])
        mean, second = window_moments(state["losses"], state["filled"])
        np.testing.assert_allclose(mean, window.mean(0), rtol=1e-6)
        np.testing.assert_allclose(second, window.T @ window / len(window), rtol=1e-6)
        alpha = np.asarray(state["weights"])
        assert alpha.min() >= 0 and abs(alpha.sum() - 1) < 1e-6
        if 1.0 <= window.mean(0)[1:].max():
            assert abs(alpha[1:] @ window.mean(0)[1:] - 1.0) < 1e-4


SPATIAL = dict(
    pgd=dict(name="fgsm_rs", eps=0.3),
    flow=dict(name="flow_pgd", eps_flow=0.05, steps=1),
    rt=dict(name="affine_pgd", eps_affine=0.1, steps=1),
)
# Three one-step Linf adversaries of different sizes: the window and the weights do not care what
# the adversaries are, and these compile in a fraction of the spatial attacks' time.
CHEAP = dict(
    pgd=dict(name="fgsm_rs", eps=0.3),
    flow=dict(name="fgsm_rs", eps=0.1),
    rt=dict(name="fgsm_rs", eps=0.2),
)


def _pareto_config(epochs: int, attacks: dict):
    config = tiny_config("fast_at", epochs=epochs)
    config.defense = dict(name="pareto_at", r=0.8, window=20, attacks=attacks)
    config.train.update(log_every=1, batch_size=16, checkpoint_every_steps=1000)
    config.validation.update(every_epochs=100, batch_size=16)
    return config


def test_window_moments_equal_numpy_over_50_steps_across_a_kill_and_resume(tmp_path):
    config = _pareto_config(5, CHEAP)  # 12 steps an epoch: 60 steps, the window of 20 wraps
    uninterrupted = train_and_evaluate(config, str(tmp_path / "a"))
    partial = train_and_evaluate(config, str(tmp_path / "b"), stop_after_steps=30)
    assert Checkpointer(str(tmp_path / "b")).latest_step() == 24
    assert int(partial.step) == 30
    resumed = train_and_evaluate(config, str(tmp_path / "b"))
    for a, b in zip(
        jax.tree.leaves(uninterrupted.defense_state),
        jax.tree.leaves(resumed.defense_state),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    terms = defenses.build(config.defense).state_rule.terms  # clean_ce first, then by name
    assert terms[0] == "clean_ce" and sorted(terms) == sorted(TERMS)
    records = [m for m in read_metrics(str(tmp_path / "a")) if "clean_ce_loss" in m]
    steps = [int(m["step"]) for m in records]
    assert steps == list(range(1, 61))
    losses = np.asarray([[m[f"{t}_loss"] for t in terms] for m in records])
    state = jax.device_get(uninterrupted.defense_state)
    window = losses[-20:]
    mean, second = window_moments(jnp.asarray(state["losses"]), state["filled"])
    np.testing.assert_allclose(mean, window.mean(0), rtol=1e-5)
    np.testing.assert_allclose(second, window.T @ window / 20, rtol=1e-5)
    # Step t's logged moments and weights come from steps t-20 .. t-1.
    for t in (10, 30, 60):
        prior = losses[max(0, t - 21) : t - 1]
        record = records[t - 1]
        assert record[f"pareto_mean_{terms[2]}"] == pytest.approx(prior.mean(0)[2], rel=1e-5)
        second_t = prior.T @ prior / len(prior)
        key = f"pareto_second_{terms[1]}_{terms[3]}"
        assert record[key] == pytest.approx(second_t[1, 3], rel=1e-5)
        expected = solve_lower_level(prior.mean(0), second_t, 0.8)
        weights = [record[f"{term}_weight"] for term in terms]
        np.testing.assert_allclose(weights, expected.alpha, atol=1e-4)
    assert all(r["pareto_r_clipped_steps"] >= 0 for r in records)


def test_pareto_step_compiles_once():
    config = _pareto_config(1, SPATIAL)
    ds = load_dataset("synthetic", "train", num_examples=48)
    model = get_model("mnist_cnn4")
    defense = defenses.build(config.defense)
    state, tx, schedule = initial_state(config, model, ds.image_shape, 3, defense.init_state())
    traced = chex.assert_max_traces(n=1)(
        lambda s, b: train_step(s, b, model=model, defense=defense, tx=tx, schedule=schedule)
    )
    mesh = make_mesh()
    step = jax.jit(
        jax.shard_map(
            traced, mesh=mesh, in_specs=(jax.P(), jax.P("batch")), out_specs=(jax.P(), jax.P())
        )
    )
    state = replicate(state, mesh)
    batches = train_batches(ds, 16, seed=0)
    for _ in range(3):
        state, metrics = step(state, shard_batch(next(batches), mesh))
    assert int(state.defense_state["filled"]) == 3
    weights = [float(metrics[f"{t}_weight"]) for t in TERMS]
    assert min(weights) >= 0 and sum(weights) == pytest.approx(1.0, abs=1e-5)
