"""FAB-T: exact hyperplane ∩ box projections (vs LP/QP solvers and the reference), closed forms
on a linear model, the eps convention, jit/vmap/scan equivalences, errors, and torchattacks."""

import functools

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog, minimize_scalar

from advjax.attacks.adaptive_boundary import PROJECTIONS, fab, fab_t
from advjax.threats import lp_norm
from tests.conftest import linear_model_fn

NORMS = ("linf", "l2", "l1")
DUAL = {"linf": 1, "l2": 2, "l1": np.inf}  # dual exponent of the attack norm

# --- projections -------------------------------------------------------------------------------


def _optimal_norm(norm: str, t: np.ndarray, w: np.ndarray, b: float) -> float | None:
    """min ||d||_p s.t. <w, t + d> = b, 0 <= t + d <= 1, by scipy (None when infeasible)."""
    dim, rhs = len(t), b - w @ t
    if norm == "l2":  # reachability by an LP, then the value of the concave dual (Lagrange in mu)
        if _optimal_norm("l1", t, w, b) is None:
            return None

        def minus_dual(mu):
            d = np.clip(-mu * w, -t, 1 - t)
            return -(0.5 * d @ d + mu * (w @ d - rhs))

        best = minimize_scalar(
            minus_dual, bounds=(-1e4, 1e4), method="bounded", options={"xatol": 1e-12}
        )
        return float(np.sqrt(max(-2 * best.fun, 0.0)))
    if norm == "linf":  # variables (d, s): min s, -s <= d_i <= s
        eye, ones = np.eye(dim), np.ones((dim, 1))
        res = linprog(
            np.r_[np.zeros(dim), 1.0],
            A_ub=np.block([[eye, -ones], [-eye, -ones]]),
            b_ub=np.zeros(2 * dim),
            A_eq=np.r_[w, 0.0][None],
            b_eq=[rhs],
            bounds=[(-ti, 1 - ti) for ti in t] + [(0, None)],
            method="highs",
        )
    else:  # d = p - n with p, n >= 0: min sum(p + n)
        res = linprog(
            np.ones(2 * dim),
            A_eq=np.r_[w, -w][None],
            b_eq=[rhs],
            bounds=[(0, 1 - ti) for ti in t] + [(0, ti) for ti in t],
            method="highs",
        )
    return float(res.fun) if res.status == 0 else None


def _corner(t, w, b):
    """The box corner that moves <w, .> furthest towards b (returned when b is unreachable)."""
    towards = -np.sign(w) * np.sign(w @ t - b if w @ t - b != 0 else 1.0)
    return np.where(towards > 0, 1 - t, np.where(towards < 0, -t, 0.0))


def _project(norm, t, w, b):
    d = PROJECTIONS[norm](
        jnp.asarray(t, jnp.float32), jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)
    )
    return np.asarray(d, np.float64)


def _check_projection(norm, t, w, b, d):
    assert np.all(t + d >= -1e-6) and np.all(t + d <= 1 + 1e-6)
    assert np.all(d[w == 0] == 0)
    optimum = _optimal_norm(norm, t, w, b)
    if optimum is None:
        np.testing.assert_allclose(d, _corner(t, w, b), atol=1e-6)
        return False
    scale = max(1.0, float(np.abs(w).sum()))
    assert abs(w @ (t + d) - b) <= 1e-5 * scale
    got = np.linalg.norm(d, {"linf": np.inf, "l2": 2, "l1": 1}[norm])
    np.testing.assert_allclose(got, optimum, rtol=1e-4, atol=1e-6)
    return True


def _random_cases(seed, n=60, dim=12):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, (n, dim))
    t[rng.uniform(size=t.shape) < 0.15] = 0.0
    t[rng.uniform(size=t.shape) < 0.15] = 1.0
    w = rng.normal(size=(n, dim)) * rng.choice([0.01, 1.0, 30.0], (n, 1))
    w[rng.uniform(size=w.shape) < 0.2] = 0.0
    # Hyperplanes through a random box point, scaled away from t: on either side, some of them
    # out of the box's reach.
    target = np.sum(w * rng.uniform(0, 1, (n, dim)), axis=1)
    b = np.sum(w * t, axis=1) + (target - np.sum(w * t, axis=1)) * rng.choice([0.3, 1.0, 4.0], n)
    w[-2:] = 0.0  # degenerate: w = 0 (stay where you are)
    b[-4:-2] = np.sum(w[-4:-2] * t[-4:-2], axis=1)  # already on the hyperplane
    return t, w, b


@pytest.mark.parametrize("norm", NORMS)
def test_projection_is_feasible_and_optimal(norm):
    t, w, b = _random_cases(0)
    d = _project(norm, t, w, b)
    reachable = [_check_projection(norm, t[i], w[i], b[i], d[i]) for i in range(len(t))]
    assert 10 < sum(reachable) < len(t)  # both regimes were exercised
    np.testing.assert_array_equal(d[-2:], 0.0)
    np.testing.assert_allclose(d[-4:-2], 0.0, atol=1e-6)


def _f32(lo: float, hi: float):
    return st.floats(lo, hi, width=32, allow_subnormal=False)


@settings(max_examples=20, deadline=None)
@given(
    # float32-representable normals: XLA:CPU flushes float32 subnormals to zero, the float64
    # reference does not (w = 1.4e-45 once failed for that reason alone).
    t=hnp.arrays(np.float64, 5, elements=st.sampled_from([0.0, 0.25, 0.5, 1.0]) | _f32(0, 1)),
    w=hnp.arrays(np.float64, 5, elements=st.sampled_from([0.0, -1.0, 2.0]) | _f32(-5, 5)),
    u=_f32(-2, 2),
    norm=st.sampled_from(NORMS),
)
def test_projection_edge_cases(t, w, u, norm):
    # t and w are exactly representable in float32 (edges, zeros, ties) or rounded to it.
    t, w = np.float32(t).astype(np.float64), np.float32(w).astype(np.float64)
    b = float(np.float32(w @ t + u))
    _check_projection(norm, t, w, b, _project(norm, t[None], w[None], np.array([b]))[0])


def test_linf_root_without_a_sort_matches_the_sorted_closed_form():
    """The bisection + Newton root of the Linf projection equals the exact sort-based one on
    MNIST-like rows (many pixels at 0 or 1, values on the 1/255 grid: tied breakpoints)."""
    from advjax.attacks import adaptive_boundary as ab

    rng = np.random.default_rng(3)
    t = np.round(rng.uniform(size=(64, 784)) * 255) / 255
    t[:, :300], t[:, 300:400] = 0.0, 1.0
    w = rng.normal(size=(64, 784)) * rng.choice([1e-3, 1.0, 30.0], (64, 1))
    b = np.sum(w * t, axis=1) + rng.normal(size=64) * np.abs(w).sum(1) * 0.05
    w, c, cap = ab._orient(*(jnp.asarray(v, jnp.float32) for v in (t, w, b)))
    args = (jnp.where(w != 0, cap, 0.0), jnp.abs(w), jnp.abs(w) * cap, c)
    exact, feasible = ab._piecewise_root(*args)
    fast, feasible_fast = ab._bounded_piecewise_root(*args, upper=1.0)
    np.testing.assert_array_equal(feasible, feasible_fast)
    assert 0 < int(feasible.sum())
    np.testing.assert_allclose(fast[feasible], exact[feasible], rtol=1e-5, atol=1e-7)


@pytest.fixture
def torch():
    """torch on one thread (tiny ops; its thread pool only contends with the other jobs)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


def test_projections_match_the_reference_code(torch):
    fab_module = pytest.importorskip("torchattacks.attacks.fab")
    t, w, b = _random_cases(1, n=80, dim=16)
    w[np.abs(w) < 1e-8] = 0.0
    for norm in NORMS:
        ours = _project(norm, t, w, b)
        ref = getattr(fab_module, f"projection_{norm}")(
            torch.tensor(t, dtype=torch.float64),
            torch.tensor(w, dtype=torch.float64),
            torch.tensor(b, dtype=torch.float64),
        ).numpy()
        np.testing.assert_allclose(ours, ref, atol=2e-5, err_msg=norm)


# --- the attack on a linear model ---------------------------------------------------------------


def _linear_problem(num=8):
    k_w, k_b = jax.random.split(jax.random.key(0))
    variables = {
        "w": jax.random.normal(k_w, (64, 10)),
        "b": 0.1 * jax.random.normal(k_b, (10,)),
    }
    x = jax.random.uniform(jax.random.key(1), (num, 8, 8, 1), minval=0.2, maxval=0.8)
    y = jnp.argmax(linear_model_fn(variables, x), axis=-1)
    return variables, x, y


def _distances(variables, x, y, norm):
    """[B, K] minimal Lp distance from x to each half-space {z_j >= z_y} (inf for j = y).

    Closed forms where the minimiser stays inside the box (asserted for the nearest class),
    scipy's LP / dual QP otherwise.
    """
    w, z = np.asarray(variables["w"], np.float64), np.asarray(linear_model_fn(variables, x))
    xs = np.asarray(x, np.float64).reshape(len(x), -1)
    out = np.full(z.shape, np.inf)
    closed = np.zeros(z.shape, bool)
    for i, yi in enumerate(np.asarray(y)):
        for j in range(z.shape[1]):
            if j == yi:
                continue
            u, margin = w[:, yi] - w[:, j], z[i, yi] - z[i, j]
            dist = margin / np.linalg.norm(u, DUAL[norm])
            # The minimiser: x - margin u / ||u||_2^2 (L2), x - d sign(u) (Linf), or x moved
            # along the largest |u_k| only (L1).
            if norm == "l2":
                step = margin * u / (u @ u)
            elif norm == "linf":
                step = dist * np.sign(u)
            else:
                step = np.where(np.arange(len(u)) == np.argmax(np.abs(u)), dist * np.sign(u), 0)
            closed[i, j] = np.all((xs[i] - step >= 0) & (xs[i] - step <= 1))
            out[i, j] = dist if closed[i, j] else _optimal_norm(norm, xs[i], u, u @ xs[i] - margin)
    assert np.all(closed[np.arange(len(xs)), out.argmin(1)])
    return out


@functools.cache
def _fab_on_linear(norm, targeted=True):
    variables, x, y = _linear_problem()
    optimum = _distances(variables, x, y, norm).min(axis=1)
    eps = float(np.median(optimum))  # some examples inside the budget, some outside
    attack = (fab_t if targeted else fab)(eps, norm=norm, steps=10)
    result = jax.jit(attack.run, static_argnums=0)(
        linear_model_fn, variables, x, y, jax.random.key(0)
    )
    return variables, x, y, optimum, eps, result


@pytest.mark.parametrize("norm", NORMS)
def test_fab_t_finds_the_closed_form_minimal_distance(norm):
    variables, x, y, optimum, eps, result = _fab_on_linear(norm)
    found = -np.asarray(result.loss)
    # A linearisation of a linear model is exact; eta = 1.05 with the bias towards x leaves
    # FAB about 0.5% above the boundary.
    assert np.all(found >= optimum * (1 - 1e-5))
    assert np.all(found <= optimum * 1.02)
    ok = np.asarray(result.success)
    np.testing.assert_array_equal(ok, found <= eps)
    assert 0 < ok.sum() < len(ok)
    delta_norm = np.asarray(lp_norm(result.x_adv - x, norm))
    np.testing.assert_allclose(delta_norm[ok], found[ok], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(result.x_adv)[~ok], np.asarray(x)[~ok])
    pred = jnp.argmax(linear_model_fn(variables, result.x_adv), -1)
    assert bool(jnp.all((pred != y) == result.success))
    assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1


def _mlp(variables, x):
    hidden = jax.nn.relu(x.reshape(x.shape[0], -1) @ variables["w1"] + variables["b1"])
    return hidden @ variables["w2"]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_matches_torchattacks_multitargeted_fab_on_an_mlp(norm, torch):
    torchattacks = pytest.importorskip("torchattacks")
    k1, k2, k3 = jax.random.split(jax.random.key(5), 3)
    variables = {
        "w1": jax.random.normal(k1, (64, 32)) / 8,
        "b1": 0.1 * jax.random.normal(k3, (32,)),
        "w2": jax.random.normal(k2, (32, 10)) / 5,
    }
    x = jax.random.uniform(jax.random.key(1), (8, 8, 8, 1))
    y = jnp.argmax(_mlp(variables, x), axis=-1)
    eps = {"linf": 0.03, "l2": 0.2}[norm]  # about half the examples within the budget
    model = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(64, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 10, bias=False),
    ).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(np.asarray(variables["w1"]).T))
        model[1].bias.copy_(torch.tensor(np.asarray(variables["b1"])))
        model[3].weight.copy_(torch.tensor(np.asarray(variables["w2"]).T))
    images = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2))  # C = 1: same flattening order
    attack = torchattacks.FAB(
        model,
        norm={"linf": "Linf", "l2": "L2"}[norm],
        eps=eps,
        steps=30,
        multi_targeted=True,
        n_classes=10,
    )
    adv = attack(images, torch.tensor(np.asarray(y))).numpy().transpose(0, 2, 3, 1)
    ours = jax.jit(fab_t(eps, 30, norm=norm).run, static_argnums=0)(
        _mlp, variables, x, y, jax.random.key(0)
    )
    # Same targets, same deterministic iterations: the same points (x where beyond eps). (The
    # reference keeps the first target that succeeds, advjax the smallest norm over targets;
    # they agree here.)
    assert 0 < int(ours.success.sum()) < len(y)
    np.testing.assert_allclose(adv, ours.x_adv, atol=1e-3)
    np.testing.assert_allclose(
        lp_norm(jnp.asarray(adv) - x, norm), lp_norm(ours.x_adv - x, norm), rtol=1e-3, atol=1e-6
    )


def test_untargeted_fab_finds_the_closed_form_distance():
    _, _, _, optimum, eps, result = _fab_on_linear("l2", targeted=False)
    found = -np.asarray(result.loss)
    assert np.all((found >= optimum * (1 - 1e-5)) & (found <= optimum * 1.02))
    np.testing.assert_array_equal(result.success, found <= eps)


def test_untargeted_fab_matches_torchattacks(torch):
    torchattacks = pytest.importorskip("torchattacks")
    variables, x, y, _, eps, ours = _fab_on_linear("l2", targeted=False)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(np.asarray(variables["w"]).T))
        model[1].bias.copy_(torch.tensor(np.asarray(variables["b"])))
    attack = torchattacks.FAB(model, norm="L2", eps=eps, steps=10, n_classes=10)
    images = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2))  # C = 1: same flattening order
    adv = attack(images, torch.tensor(np.asarray(y))).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(adv, ours.x_adv, atol=1e-4)


def test_targets_are_the_runner_up_classes_in_order():
    # Three classes; class 1 has the 2nd-highest logit but its boundary is far (small
    # ||w_0 - w_1||), class 2 has the lowest logit but the nearest boundary. w_0 - w_2 is
    # orthogonal to w_0 - w_1, so moving towards one boundary does not cross the other.
    rng = np.random.default_rng(0)
    g = rng.normal(size=(64, 3))
    g1 = g[:, 1]
    g2 = g[:, 2] - (g[:, 2] @ g1) / (g1 @ g1) * g1
    w = np.stack([g[:, 0], g[:, 0] + 0.2 * g1, g[:, 0] + 3 * g2], axis=1)
    b = np.array([0.0, -0.5 - 0.2 * g1.sum() / 2, -1.0 - 3 * g2.sum() / 2])
    variables = {"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
    x = jnp.asarray(0.5 + 0.01 * rng.uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
    y = jnp.zeros(4, jnp.int32)
    z = linear_model_fn(variables, x)
    assert bool(jnp.all((z[:, 0] > z[:, 1]) & (z[:, 1] > z[:, 2])))
    dist = _distances(variables, x, y, "l2")
    assert np.all(dist[:, 2] < 0.5 * dist[:, 1])
    for n_targets, expected in [(1, dist[:, 1]), (2, dist[:, 2])]:
        # Two targets run in parallel (vmap) and the nearer one is kept.
        attack = fab_t(100.0, 10, norm="l2", num_targets=n_targets, parallel=n_targets > 1)
        result = jax.jit(attack.run, static_argnums=0)(
            linear_model_fn, variables, x, y, jax.random.key(0)
        )
        found = -np.asarray(result.loss)
        assert np.all((found >= expected * (1 - 1e-5)) & (found <= expected * 1.02)), n_targets


def test_jit_eager_and_other_batches_agree_and_compile_once():
    variables, x, y = _linear_problem(6)
    y = y.at[0].set((y[0] + 1) % 10)  # misclassified already: success at zero distance
    attack = fab_t(0.5, 3, norm="l2", num_targets=2, restarts=2)
    keys = jax.random.split(jax.random.key(3), x.shape[0])
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(variables, x, y, keys):
        return attack.run(linear_model_fn, variables, x, y, keys)

    jitted = run(variables, x, y, keys)
    eager = attack.run(linear_model_fn, variables, x, y, keys)
    np.testing.assert_allclose(eager.x_adv, jitted.x_adv, atol=1e-6)
    np.testing.assert_allclose(eager.loss, jitted.loss, rtol=1e-5)
    np.testing.assert_array_equal(eager.success, jitted.success)
    assert bool(jitted.success[0]) and float(jitted.loss[0]) == 0.0
    np.testing.assert_array_equal(jitted.x_adv[0], x[0])
    assert np.all(np.isfinite(jitted.loss))
    # Per-example keys: rows 0-2 moved and the other rows replaced give the same rows 0-2.
    _, fresh, fresh_y = _linear_problem(9)
    order = jnp.array([2, 0, 1, 6, 7, 8])
    other = run(
        variables,
        jnp.concatenate([x, fresh])[order],
        jnp.concatenate([y, fresh_y])[order],
        jnp.concatenate([keys, keys[:3]])[order],
    )
    np.testing.assert_allclose(other.x_adv[:3], jitted.x_adv[jnp.array([2, 0, 1])], atol=1e-6)
    np.testing.assert_allclose(other.loss[:3], jitted.loss[jnp.array([2, 0, 1])], rtol=1e-5)


def test_random_restarts_start_inside_the_ball():
    _, x, _ = _linear_problem(4)
    keys = jax.random.split(jax.random.key(0), x.shape[0])
    start = jax.jit(
        lambda k, x: [fab_t(0.05, norm=n, restarts=2).random_start(k, x) for n in NORMS]
    )
    both = zip(NORMS, start(keys, x), start(keys[::-1], x[::-1]), strict=True)
    for norm, starts, flipped in both:
        # at distance eps / 2 before clipping to the box (interior x: no clipping here)
        np.testing.assert_allclose(lp_norm(starts - x, norm), 0.025, rtol=1e-5)
        # per-example keys: an example's draw does not depend on its position in the batch
        np.testing.assert_allclose(flipped, starts[::-1], atol=1e-7)
        assert not np.allclose(starts[0], starts[1] - x[1] + x[0])


def test_bad_arguments_give_clear_errors():
    variables, x, y = _linear_problem(2)
    with pytest.raises(ValueError, match="valid norms"):
        fab_t(0.1, norm="l3")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        fab_t(-0.1)
    with pytest.raises(ValueError, match="steps must be an integer"):
        fab_t(0.1, steps=2.5)
    with pytest.raises(ValueError, match="restarts must be an integer >= 1"):
        fab_t(0.1, restarts=0)
    with pytest.raises(ValueError, match="alpha_max"):
        fab_t(0.1, alpha_max=1.5)
    with pytest.raises(ValueError, match="beta"):
        fab_t(0.1, beta=0.0)
    with pytest.raises(ValueError, match="at most the number of classes minus one"):
        fab_t(0.1, 1, num_targets=10).run(linear_model_fn, variables, x, y, jax.random.key(0))
    with pytest.raises(TypeError, match="labels must be integers"):
        fab_t(0.1, 1).run(linear_model_fn, variables, x, y.astype(jnp.float32), jax.random.key(0))
