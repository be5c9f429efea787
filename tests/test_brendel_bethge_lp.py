"""B&B in L2 and L1 (and Linf's step): each trust-region solver against cvxopt, the attack against
the closed-form minimal distances of a linear model, one compilation per shape."""

from __future__ import annotations

import chex
import cvxopt
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks
from advjax.attacks.brendel_bethge import _start_path, solve_l1_step, solve_l2_step, solve_linf_step
from advjax.threats.lp import lp_norm

SOLVE = {"linf": solve_linf_step, "l2": solve_l2_step, "l1": solve_l1_step}
ORD = {"linf": np.inf, "l2": 2, "l1": 1}

# ------------------------------------------------------------------ the subproblem against cvxopt


def _conelp(cost, lin_g, lin_h, cones, eq=None, eq_value=None):
    """``min cost . z`` s.t. ``lin_g z <= lin_h``, ``||m z - v||_2 <= a . z + a0`` for each cone
    ``(a, a0, m, v)`` and ``eq . z = eq_value``; returns cvxopt's status and ``z``."""
    g = np.vstack([lin_g] + [np.vstack([-a[None], m]) for a, _, m, _ in cones])
    h = np.concatenate([lin_h] + [np.concatenate([[a0], v]) for a, a0, _, v in cones])
    dims = {"l": len(lin_h), "q": [1 + m.shape[0] for _, _, m, _ in cones], "s": []}
    args = [cvxopt.matrix(cost), cvxopt.matrix(g), cvxopt.matrix(h), dims]
    if eq is not None:
        args += [cvxopt.matrix(eq[None]), cvxopt.matrix(np.array([eq_value], float))]
    options = {"show_progress": False, "abstol": 1e-8, "reltol": 1e-8, "feastol": 1e-8}
    sol = cvxopt.solvers.conelp(*args, options=options)
    return sol["status"], np.array(sol["x"]).ravel()


def _epigraph(n, extra):
    """Variables ``z = (d, t)`` with ``extra`` epigraph variables ``t``: ``d``'s matrices padded
    to ``z``, the last unit vector, and a row on ``d`` padded to ``z``."""
    pad = lambda m: np.hstack([m, np.zeros((m.shape[0], extra))])  # noqa: E731
    return pad, np.eye(n + extra)[-1], lambda row: np.concatenate([row, np.zeros(extra)])


def _cvxopt_step(norm, x0, x, b, c, r):
    """``(feasible, delta)``: ``min ||x + delta - x0||_p`` s.t. ``b . delta = c``,
    ``||delta||_2 <= r`` and the box, as a cone program over ``d = x + delta - x0``; where the
    hyperplane is out of reach, ``max sign(c) b . delta`` over the trust region and the box."""
    x0, x, b = (np.asarray(v, float) for v in (x0, x, b))
    n = len(x0)
    p, eye = x - x0, np.eye(n)
    target = float(c) + b @ p
    box_g, box_h = np.vstack([eye, -eye]), np.concatenate([1.0 - x0, x0])
    # z = (d, t): t the objective's epigraph variable (a vector for L1)
    pad, last, eq = _epigraph(n, 1)
    status, z = _conelp(last, pad(box_g), box_h, [(last, 0.0, pad(eye), p)], eq(b), target)
    if not (status == "optimal" and z[-1] <= r):  # the closest point of the hyperplane is too far
        side = 1.0 if target >= b @ p else -1.0
        status, d = _conelp(-side * b, box_g, box_h, [(np.zeros(n), float(r), eye, p)])
        assert status == "optimal"
        return False, d - p
    pad, last, eq = _epigraph(n, n if norm == "l1" else 1)
    region = (np.zeros(len(last)), float(r), pad(eye), p)
    if norm == "l2":
        cost, lin_g, lin_h = last, pad(box_g), box_h
        cones = [(last, 0.0, pad(eye), np.zeros(n)), region]
    elif norm == "linf":
        ones = np.ones((n, 1))
        lin_g = np.vstack([np.hstack([eye, -ones]), np.hstack([-eye, -ones]), pad(box_g)])
        cost, lin_h, cones = last, np.concatenate([np.zeros(2 * n), box_h]), [region]
    else:
        cost = np.concatenate([np.zeros(n), np.ones(n)])
        lin_g = np.vstack([np.hstack([eye, -eye]), np.hstack([-eye, -eye]), pad(box_g)])
        lin_h, cones = np.concatenate([np.zeros(2 * n), box_h]), [region]
    status, z = _conelp(cost, lin_g, lin_h, cones, eq(b), target)
    assert status == "optimal"
    return True, z[:n] - p


@pytest.fixture(scope="module")
def instances():
    """Random small subproblems: trust regions from tight (out of reach) to loose, and two
    hyperplanes that miss the box."""
    rng = np.random.default_rng(0)
    m, n = 24, 10
    x0 = rng.uniform(0, 1, (m, n))
    x = np.clip(x0 + rng.uniform(-0.3, 0.3, (m, n)), 0, 1)
    b = rng.normal(size=(m, n)) * rng.uniform(0.2, 3, (m, 1))
    c = rng.uniform(-0.6, 0.6, m)
    r = np.where(np.arange(m) % 4 == 0, rng.uniform(0.005, 0.05, m), rng.uniform(0.05, 1.2, m))
    c[:2] = [40.0, -40.0]
    return x0, x, b, c, r


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_step_solves_the_subproblem_as_cvxopt_does(norm, instances):
    x0, x, b, c, r = instances
    solve = jax.jit(SOLVE[norm])  # one instance at a time: compiles faster than a vmap
    ours = [
        np.asarray(solve(*(jnp.asarray(v, jnp.float32) for v in a)), float)
        for a in zip(*instances, strict=True)
    ]
    # the L1 solver's documented excess (r^2 / 200) is an upper bound; measured: < 1e-4
    atol = 2e-4 if norm == "l1" else 2e-5
    kinds = []
    for i in range(len(c)):
        feasible, ref = _cvxopt_step(norm, x0[i], x[i], b[i], c[i], r[i])
        kinds.append(feasible)
        delta, b_norm = ours[i], np.linalg.norm(b[i])
        assert np.all(x[i] + delta >= -1e-6) and np.all(x[i] + delta <= 1 + 1e-6)
        assert np.linalg.norm(delta) <= r[i] * (1 + 1e-4) + 1e-6
        if feasible:
            np.testing.assert_allclose(b[i] @ delta, c[i], atol=1e-4 * b_norm)
            found = np.linalg.norm(x[i] + delta - x0[i], ORD[norm])
            best = np.linalg.norm(x[i] + ref - x0[i], ORD[norm])
            np.testing.assert_allclose(found, best, rtol=1e-4, atol=atol)
        else:  # as far towards the hyperplane as cvxopt gets, never past it
            side = np.sign(c[i])
            np.testing.assert_allclose(side * b[i] @ delta, side * b[i] @ ref, atol=1e-4 * b_norm)
            assert side * b[i] @ delta <= abs(c[i]) + 1e-6
    assert 4 <= sum(kinds) <= len(kinds) - 4  # both cases, several times


def test_start_paths_run_from_the_clean_point_to_the_start():
    delta = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (3, 4, 4, 1)), jnp.float32)
    for norm in ("linf", "l2", "l1"):
        path, top = _start_path(delta, norm)
        np.testing.assert_allclose(path(top), delta, atol=1e-7)
        np.testing.assert_array_equal(path(jnp.zeros_like(top)), jnp.zeros_like(delta))
        norms = [lp_norm(path(top * t), norm) for t in np.linspace(0, 1, 9)]
        assert jnp.all(jnp.diff(jnp.stack(norms), axis=0) >= 0)


# ----------------------------------------------------------------- the attack on a linear model


def _model_fn(v, x):
    return x.reshape(x.shape[0], -1) @ v["w"] + v["b"]


@pytest.fixture(scope="module")
def linear():
    """A two-class linear model (one hyperplane, so B&B's boundary walk can reach the global
    minimum) with a bias that puts half the points on each side."""
    rng = np.random.default_rng(0)
    n, side = 12, 6
    w = rng.normal(size=(side * side, 2))
    x = rng.uniform(0.3, 0.7, (n, side, side, 1))
    scores = np.sort(x.reshape(n, -1) @ (w[:, 0] - w[:, 1]))
    variables = {
        "w": jnp.asarray(w, jnp.float32),
        "b": jnp.asarray([-(scores[n // 2 - 1] + scores[n // 2]) / 2, 0.0], jnp.float32),
    }
    x = jnp.asarray(x, jnp.float32)
    logits = np.asarray(_model_fn(variables, x), float)
    y = logits.argmax(-1)
    # the weights that move the margin f_y - f_other, and the margin
    wd = np.where(y[:, None] == 0, 1.0, -1.0) * (w[:, 0] - w[:, 1])[None]
    margin = np.abs(logits[:, 0] - logits[:, 1])
    keys = jax.random.split(jax.random.key(0), n)
    return variables, x, jnp.asarray(y), keys, wd, margin


def _greedy_l1(wd, x, margin):
    """The minimal L1 distance to the hyperplane within the box: move the coordinates with the
    largest ``|w_i|`` to their box limits in turn (a fractional knapsack) until the margin is
    spent; ``margin / max |w_i|`` when the first coordinate suffices."""
    room = np.where(wd > 0, x, 1.0 - x)  # how far each coordinate can lower the margin
    cost, left = 0.0, margin
    for i in np.argsort(-np.abs(wd)):
        if abs(wd[i]) * room[i] >= left:
            return cost + left / abs(wd[i])
        cost, left = cost + room[i], left - abs(wd[i]) * room[i]
    return np.inf


def _run_twice(norm, eps, linear):
    """The attack jitted once, run on the batch and on a permutation of it (per-example keys:
    the same results permuted, and no second trace)."""
    variables, x, y, keys, *_ = linear
    attack = attacks.brendel_bethge(eps, step_size=1e-2, steps=200, norm=norm)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(variables, x, y, keys):
        return attack.run(_model_fn, variables, x, y, keys)

    result = run(variables, x, y, keys)
    perm = jnp.asarray(np.random.default_rng(2).permutation(x.shape[0]))
    permuted = run(variables, x[perm], y[perm], keys[perm])
    chex.assert_trees_all_close(permuted, jax.tree.map(lambda a: a[perm], result), atol=1e-5)
    return result


def _check_result(result, exact, eps, norm, linear):
    variables, x, y, *_ = linear
    found = np.asarray(-result.loss)
    assert np.all(found >= exact * (1 - 1e-4))  # never below the optimum
    np.testing.assert_allclose(found, exact, rtol=0.01)
    # min-norm convention: success iff the smallest adversarial is within eps (in the norm)
    np.testing.assert_array_equal(result.success, found <= eps)
    assert 0 < int(result.success.sum()) < len(found)
    broken = np.asarray(jnp.argmax(_model_fn(variables, result.x_adv), -1) != y)
    np.testing.assert_array_equal(broken, result.success)
    dist = np.asarray(lp_norm(result.x_adv - x, norm))
    assert np.all(dist <= eps * (1 + 1e-6))


def test_l2_finds_the_closed_form_distance_of_a_linear_model(linear):
    *_, wd, margin = linear
    exact = margin / np.linalg.norm(wd, axis=1)
    room = np.minimum(linear[1], 1 - linear[1]).reshape(len(exact), -1)
    # the box does not bind: the minimal perturbation exact * w / ||w|| stays inside it
    assert np.all(exact[:, None] * np.abs(wd) / np.linalg.norm(wd, axis=1)[:, None] < room)
    eps = float(np.median(exact))
    _check_result(_run_twice("l2", eps, linear), exact, eps, "l2", linear)


def test_l1_finds_the_greedy_closed_form_of_a_linear_model(linear):
    _, x, _, _, wd, margin = linear
    flat = np.asarray(x, float).reshape(len(margin), -1)
    exact = np.array([_greedy_l1(w, xi, m) for w, xi, m in zip(wd, flat, margin, strict=True)])
    one_coordinate = margin / np.max(np.abs(wd), axis=1)
    free = np.isclose(exact, one_coordinate)
    assert 2 <= free.sum() <= len(exact) - 2  # points where the box binds, and where it does not
    eps = float(np.median(exact))
    _check_result(_run_twice("l1", eps, linear), exact, eps, "l1", linear)


def test_bad_norm():
    with pytest.raises(ValueError, match="norm"):
        attacks.brendel_bethge(norm="l0")
    assert attacks.brendel_bethge().norm == "linf"  # the default stays Linf
