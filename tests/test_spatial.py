"""Spatial threat models and attacks: exact warps, gradients, brute-force grid search, bounds."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import losses
from advjax.attacks import spatial as attacks
from advjax.threats import spatial
from tests.conftest import linear_model_fn

H = W = 8
# The tests compile many small programs: XLA:CPU's backend optimisation (LLVM -O2) triples the
# compile time and buys nothing for programs this small. Results do not depend on it.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(scope="module")
def model_and_data():
    """A linear template-matching model on 8x8x1 images of noisy smooth templates; the labels are
    its clean predictions, so every clean example is correctly classified."""
    rng = np.random.default_rng(7)
    coarse = rng.normal(size=(10, 4, 4))
    templates = np.kron(coarse, np.ones((2, 2)))  # 8x8, blocky but spatially smooth
    templates = (templates + np.roll(templates, 1, 1) + np.roll(templates, 1, 2)) / 3
    variables = {
        "w": jnp.asarray(templates.reshape(10, H * W).T, jnp.float32),
        "b": jnp.zeros(10),
    }
    x = np.clip(0.5 + 0.15 * templates[:6, :, :, None] + 0.1 * rng.normal(size=(6, H, W, 1)), 0, 1)
    x = jnp.asarray(x, jnp.float32)
    y = jnp.argmax(linear_model_fn(variables, x), axis=-1)
    return variables, x, y


def _ramp(h=9, w=9, c=1):
    return jnp.asarray(np.random.default_rng(0).uniform(size=(2, h, w, c)), jnp.float32)


# ----------------------------------------------------------------------------------------- warp

_warp = fast_jit(spatial.warp, static_argnums=2)
_apply = fast_jit(lambda threat, params, x: threat.apply(params, x), static_argnums=0)


def test_identity_is_exact():
    x = _ramp(7, 9, 3)
    for padding in spatial.PADDINGS:
        np.testing.assert_array_equal(_warp(x, spatial.identity_grid(7, 9), padding), x)
    eye = np.tile(np.eye(2, 3, dtype=np.float32)[None], (2, 1, 1))
    np.testing.assert_array_equal(spatial.affine_grid(eye, 7, 9)[0], spatial.identity_grid(7, 9))
    integrated = spatial.IntegratedSet(0.1, 0.1, "reflect")
    for threat in [
        spatial.RotationTranslation(padding="edge"),
        spatial.AffineSet(0.1),
        spatial.FlowSet(0.1),
        integrated,
    ]:
        np.testing.assert_array_equal(_apply(threat, threat.identity(x), x), x)
    # A random flow does move the image (the identity test above could not pass trivially).
    flow = np.random.default_rng(0).uniform(-0.1, 0.1, size=(2, 7, 9, 2)).astype(np.float32)
    params = spatial.SpatialParams(flow, np.zeros((2, 6), np.float32))
    assert float(jnp.max(jnp.abs(_apply(integrated, params, x) - x))) > 1e-2


def test_integer_translation_and_rotation():
    x = _ramp()
    threat = spatial.RotationTranslation(90.0)
    moved = _apply(threat, jnp.array([[0.0, 2.0, 1.0]] * 2), x)
    # Content moves 2 pixels right (tx) and 1 pixel down (ty); uncovered pixels are zero.
    np.testing.assert_allclose(moved[:, 1:, 2:], x[:, :-1, :-2], atol=1e-5)
    np.testing.assert_allclose(moved[:, :1], 0.0, atol=1e-5)
    np.testing.assert_allclose(moved[:, :, :2], 0.0, atol=1e-5)
    rotated = _apply(threat, jnp.array([[90.0, 0.0, 0.0]] * 2), x)
    expected = np.rot90(np.asarray(x), k=1, axes=(1, 2))  # counter-clockwise as displayed
    np.testing.assert_allclose(rotated, expected, atol=1e-5)
    assert not np.allclose(expected, np.rot90(np.asarray(x), k=-1, axes=(1, 2)), atol=1e-2)


def test_padding_modes():
    x = _ramp(6, 6)
    grid = spatial.identity_grid(6, 6).at[..., 1].add(-2.0)  # sample 2 columns to the left
    zeros = _warp(x, grid, "zeros")
    edge = _warp(x, grid, "edge")
    reflect = _warp(x, grid, "reflect")
    np.testing.assert_array_equal(zeros[:, :, :2], 0.0)
    np.testing.assert_array_equal(edge[:, :, :2], jnp.repeat(x[:, :, :1], 2, axis=2))
    # Mirror about the centre of column 0: column -2 reads column 2, column -1 reads column 1.
    np.testing.assert_array_equal(reflect[:, :, 0], x[:, :, 2])
    np.testing.assert_array_equal(reflect[:, :, 1], x[:, :, 1])
    for out in (zeros, edge, reflect):
        np.testing.assert_array_equal(out[:, :, 2:], x[:, :, :-2])
    # Far outside, and a half-pixel outside the right border.
    far = jnp.full((6, 6, 2), -50.0)
    np.testing.assert_array_equal(_warp(x, far, "zeros"), 0.0)
    np.testing.assert_array_equal(_warp(x, far, "edge"), jnp.broadcast_to(x[:, :1, :1], x.shape))
    half = jnp.broadcast_to(jnp.array([2.0, 5.5]), (6, 6, 2))
    np.testing.assert_allclose(_warp(x, half, "zeros")[:, 0, 0], 0.5 * x[:, 2, 5])
    np.testing.assert_allclose(_warp(x, half, "edge")[:, 0, 0], x[:, 2, 5])
    np.testing.assert_allclose(  # column 6 mirrors to column 4
        _warp(x, half, "reflect")[:, 0, 0], 0.5 * (x[:, 2, 5] + x[:, 2, 4]), atol=1e-7
    )
    # Reflection is periodic with period 2 (size - 1) = 10.
    np.testing.assert_allclose(
        _warp(x, half.at[..., 1].add(10.0), "reflect"), _warp(x, half, "reflect"), atol=1e-6
    )


@pytest.mark.parametrize("padding", ["zeros", "edge", "reflect"])
def test_warp_matches_torch_grid_sample(padding):
    torch = pytest.importorskip("torch")
    x = _ramp(7, 9, 2)
    matrices = jnp.array(
        [[[0.9, -0.4, 0.3], [0.35, 1.1, -0.2]], [[1.3, 0.2, -0.5], [-0.1, 0.7, 0.6]]]
    )
    grid = spatial.affine_grid(matrices, 7, 9)
    ours = spatial.warp(x, grid, padding)
    theta = torch.tensor(np.asarray(matrices))
    t_grid = torch.nn.functional.affine_grid(theta, (2, 2, 7, 9), align_corners=True)
    t_x = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2)
    mode = {"zeros": "zeros", "edge": "border", "reflect": "reflection"}[padding]
    theirs = torch.nn.functional.grid_sample(
        t_x, t_grid, mode="bilinear", padding_mode=mode, align_corners=True
    )
    np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), atol=1e-5)


@pytest.mark.parametrize("padding", spatial.PADDINGS)
def test_warp_gradients_match_finite_differences(padding):
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(2, 6, 5, 2))
    grid = np.asarray(spatial.identity_grid(6, 5)) + rng.uniform(-2.3, 2.3, size=(2, 6, 5, 2))
    weights = rng.normal(size=(2, 6, 5, 2))
    with jax.enable_x64(True):

        def f(images, g):
            return jnp.sum(weights * spatial.warp(images, g, padding))

        value, grad = fast_jit(f), fast_jit(jax.grad(f, argnums=(0, 1)))
        g_img, g_grid = map(np.asarray, grad(x, grid))
        h = 1e-6
        for _ in range(3):
            d_img, d_grid = rng.normal(size=x.shape), rng.normal(size=grid.shape)
            fd_img = (value(x + h * d_img, grid) - value(x - h * d_img, grid)) / (2 * h)
            fd_grid = (value(x, grid + h * d_grid) - value(x, grid - h * d_grid)) / (2 * h)
            np.testing.assert_allclose(np.vdot(g_img, d_img), fd_img, rtol=1e-6)
            np.testing.assert_allclose(np.vdot(g_grid, d_grid), fd_grid, rtol=1e-6)
        # A flat image has exactly zero gradient w.r.t. the sampling points (no rounding residue
        # whose sign a sign-gradient step would follow); with zero padding only inside.
        flat_grad = np.asarray(fast_jit(jax.grad(f, argnums=1))(np.full(x.shape, 0.7), grid))
        inside = np.all((grid > 0.5) & (grid < np.array([4.5, 3.5])), axis=-1)
        assert np.all(flat_grad[inside if padding == "zeros" else ...] == 0.0)
        # At the identity grid the derivative w.r.t. a row coordinate is the forward difference
        # x[i + 1] - x[i] (also on the border row 0, where edge padding clamps).
        identity = np.broadcast_to(np.asarray(spatial.identity_grid(6, 5), np.float64), grid.shape)
        at_identity = np.asarray(grad(x, identity)[1])
        forward = np.sum(weights[:, :-1] * (x[:, 1:] - x[:, :-1]), axis=-1)
        np.testing.assert_allclose(at_identity[:, :-1, :, 0], forward, rtol=1e-12, atol=1e-12)


def test_parameter_gradients_match_finite_differences():
    x = np.random.default_rng(2).uniform(size=(1, 9, 9, 1))
    weights = np.random.default_rng(3).normal(size=x.shape)
    cases = [  # (no sampling point on an integer coordinate, where the warp has a kink)
        (spatial.RotationTranslation(padding="edge"), np.array([[7.3, 0.37, -1.21]])),
        (spatial.AffineSet(0.3), np.array([[0.0513, -0.1127, 0.0731, 0.1319, -0.0417, 0.0213]])),
    ]
    with jax.enable_x64(True):
        for threat, params in cases:

            def f(p, threat=threat):
                return jnp.sum(weights * threat.apply(p, x))

            value, grad = fast_jit(f), np.asarray(fast_jit(jax.grad(f))(params))
            for i in range(params.shape[1]):
                e = np.zeros_like(params)
                e[0, i] = 1e-6
                fd = (value(params + e) - value(params - e)) / 2e-6
                np.testing.assert_allclose(grad[0, i], fd, rtol=1e-5, atol=1e-9)


def test_units_of_affine_and_flow_translations_agree():
    h, w = 7, 11
    sy, sx = spatial.pixel_scale(h, w)
    w_rt = jnp.zeros((1, 6)).at[0, 2].set(0.2).at[0, 5].set(-0.1)
    flow = jnp.zeros((1, h, w, 2)).at[..., 1].set(0.2).at[..., 0].set(-0.1)
    by_affine = spatial.integrated_grid(w_rt, jnp.zeros((1, h, w, 2)))
    by_flow = spatial.integrated_grid(jnp.zeros((1, 6)), flow)
    np.testing.assert_allclose(by_affine, by_flow, atol=1e-5)
    shift = jnp.array([-0.1 * sy, 0.2 * sx])
    np.testing.assert_allclose(
        by_flow[0] - spatial.identity_grid(h, w), jnp.broadcast_to(shift, (h, w, 2)), atol=1e-6
    )
    np.testing.assert_allclose(
        spatial.flow_grid(spatial.flow_to_pixels(flow, h, w)), by_flow, atol=1e-6
    )


def test_smoothness_closed_form():
    h, w, eps = 4, 5, 1e-8
    constant = jnp.ones((1, h, w, 2)) * 0.3
    pairs = (h - 1) * w + h * (w - 1)
    np.testing.assert_allclose(spatial.smoothness(constant), 2 * pairs * np.sqrt(eps), rtol=1e-5)
    cols = jnp.arange(w, dtype=jnp.float32)[None, None, :, None]
    ramp = jnp.concatenate([jnp.zeros((1, h, w, 1)), 0.5 * cols * jnp.ones((1, h, w, 1))], -1)
    expected = 2 * ((h - 1) * w * np.sqrt(eps) + h * (w - 1) * np.sqrt(0.25 + eps))
    np.testing.assert_allclose(spatial.smoothness(ramp), expected, rtol=1e-6)


# -------------------------------------------------------------------------------- search


def _jit_run(attack):
    return fast_jit(attack.run_params, static_argnums=0)


@pytest.mark.parametrize(
    "threat",
    [
        spatial.RotationTranslation(),
        spatial.AffineSet(0.1),
        spatial.FlowSet(0.05),
        spatial.IntegratedSet(0.05, 0.1),
    ],
    ids=lambda t: type(t).__name__,
)
def test_init_sample_and_project(threat):
    x = jnp.full((16, 5, 4, 1), 0.5)
    keys = jax.random.split(jax.random.key(0), 16)

    @fast_jit
    def draws(keys):
        return threat.init(keys[0], x), threat.init(keys, x), threat.init(keys[3], x[:1])

    shared, per_example, one = draws(keys)
    assert jax.tree.map(jnp.shape, shared) == jax.tree.map(jnp.shape, threat.identity(x))
    for params in (shared, per_example):
        assert bool(jnp.all(threat.contains(params, atol=0.0)))
        # Uniform in the box: the draws come close to both ends of every bound.
        for leaf in jax.tree.leaves(params):
            assert float(jnp.max(leaf)) > 0.5 * float(jnp.max(jnp.abs(leaf)))
            assert float(jnp.min(leaf)) < -0.5 * float(jnp.max(jnp.abs(leaf)))
    # Per-example keys give the draw of a batch of one with that key.
    chex.assert_trees_all_equal(
        jax.tree.map(lambda a: a[3], per_example), jax.tree.map(lambda a: a[0], one)
    )
    far = jax.tree.map(lambda a: a + 100.0, per_example)
    assert bool(jnp.all(threat.contains(threat.project(far), atol=0.0)))
    assert not bool(jnp.any(threat.contains(far)))


def test_default_grids_are_the_published_ones():
    grid = np.asarray(attacks.grid_adv().grid())
    assert grid.shape == (775, 3)
    np.testing.assert_allclose(np.unique(grid[:, 0]), np.linspace(-30, 30, 31), atol=1e-5)
    np.testing.assert_allclose(np.unique(grid[:, 1]), [-3, -1.5, 0, 1.5, 3], atol=1e-6)
    t_grid = np.asarray(attacks.grid_adv(mode="t").grid())
    r_grid = np.asarray(attacks.grid_adv(mode="r").grid())
    assert t_grid.shape == (25, 3) and np.all(t_grid[:, 0] == 0)
    assert r_grid.shape == (31, 3) and np.all(r_grid[:, 1:] == 0)
    # Random draws of the .T / .R variants keep only their part.
    x = jnp.zeros((8, 4, 4, 1))
    t_draw = attacks.worst_of_k(mode="t").draw(jax.random.key(0), x)
    r_draw = attacks.rand_adv(mode="r").draw(jax.random.key(0), x)
    assert np.all(t_draw[:, 0] == 0) and np.all(t_draw[:, 1:] != 0)
    assert np.all(r_draw[:, 1:] == 0) and np.all(r_draw[:, 0] != 0)


@pytest.mark.parametrize("early_stop", [False, True])
def test_grid_adv_equals_brute_force(model_and_data, early_stop):
    variables, x, y = model_and_data
    attack = attacks.grid_adv(
        max_angle=12.0,
        max_translation=1.0,
        num_angles=5,
        num_translations=3,
        chunk_size=7,
        early_stop=early_stop,
    )
    params, result = _jit_run(attack)(linear_model_fn, variables, x, y, jax.random.key(0))

    @fast_jit
    def evaluate(t):
        logits = linear_model_fn(variables, attack.threat.apply(jnp.broadcast_to(t, (6, 3)), x))
        return losses.cross_entropy(logits, y), jnp.argmax(logits, -1) != y

    best_t = best_score = best_ok = None
    for t in np.asarray(attack.grid()):  # 45 transforms; 45 % 7 != 0 exercises the padding
        score, ok = map(np.asarray, evaluate(t))
        if best_t is None:
            best_t, best_score, best_ok = np.tile(t, (x.shape[0], 1)), score, ok
            continue
        take = (ok & ~best_ok) | ((ok == best_ok) & (score > best_score))
        best_t = np.where(take[:, None], t, best_t)
        best_score, best_ok = np.where(take, score, best_score), np.where(take, ok, best_ok)
    np.testing.assert_array_equal(result.success, best_ok)
    assert 0 < int(result.success.sum()) < x.shape[0]  # both branches of the selection
    # Early stopping keeps, for a broken example, the first chunk's misclassifying transform; the
    # search on robust examples is the full one.
    same = ~best_ok if early_stop else np.ones_like(best_ok)
    np.testing.assert_array_equal(np.asarray(params)[same], best_t[same])
    np.testing.assert_allclose(np.asarray(result.loss)[same], best_score[same], rtol=1e-5)
    assert bool(jnp.all(attack.threat.contains(params)))
    np.testing.assert_allclose(result.x_adv, attack.threat.apply(params, x), atol=1e-6)


def test_worst_of_k_is_never_better_for_the_defender(model_and_data):
    variables, x, y = model_and_data
    keys = jax.random.split(jax.random.key(4), x.shape[0])
    rand_params, rand = _jit_run(attacks.rand_adv())(linear_model_fn, variables, x, y, keys)
    wok_run = _jit_run(attacks.worst_of_k(steps=6))
    wok_params, wok = wok_run(linear_model_fn, variables, x, y, keys)
    assert np.all(np.asarray(wok.success) >= np.asarray(rand.success))
    same = np.asarray(wok.success == rand.success)
    assert np.all(np.asarray(wok.loss)[same] >= np.asarray(rand.loss)[same] - 1e-6)
    assert np.any(np.asarray(wok.success) & ~np.asarray(rand.success))  # k draws do help here
    for params, result in ((rand_params, rand), (wok_params, wok)):
        assert bool(jnp.all(spatial.RotationTranslation().contains(params)))
        np.testing.assert_allclose(result.x_adv, _apply(spatial.RotationTranslation(), params, x))
        np.testing.assert_array_equal(
            result.success, jnp.argmax(linear_model_fn(variables, result.x_adv), -1) != y
        )
    # Per-example keys: an example's result does not depend on the rest of the batch.
    part = wok_run(linear_model_fn, variables, x[2:5], y[2:5], keys[2:5])
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[2:5], (wok_params, wok)), part)


# ------------------------------------------------------------------------------------ PGD

PGD_ATTACKS = {
    "rt": attacks.rt_pgd(steps=3),
    "affine": attacks.affine_pgd(0.1, steps=3),
    "flow": attacks.flow_pgd(0.05, steps=3),
    "flow_tau": attacks.flow_pgd(0.05, steps=3, tau=0.05, padding="reflect"),
    "integrated": attacks.integrated_spatial(0.05, 0.1, steps=3, padding="edge"),
}
_PGD_RESULTS = {}


def _pgd_result(name, variables, x, y):
    """Runs (once per module) the PGD attack ``name`` with the margin loss from the identity."""
    if name not in _PGD_RESULTS:
        attack = dataclasses.replace(PGD_ATTACKS[name], loss="margin", random_init=False)
        _PGD_RESULTS[name] = (
            attack,
            _jit_run(attack)(linear_model_fn, variables, x, y, jax.random.key(1)),
        )
    return _PGD_RESULTS[name]


def test_worst_of_k_on_a_kl_objective_runs_under_shard_map(model_and_data):
    """KLR's adversary (Worst-of-k maximising the KL to the clean prediction) inside the training
    step's ``shard_map``: success is a constant (no labels) while the scores vary over devices,
    and the search's carries must still have one type. The result equals the unsharded run."""
    from advjax.train import make_mesh

    variables, x, _ = model_and_data
    reference = jax.lax.stop_gradient(linear_model_fn(variables, x))
    attack = attacks.worst_of_k(steps=4, loss="kl_from_reference")
    key = jax.random.key(8)
    mesh = make_mesh()

    def run(x, reference):
        return attack.run(linear_model_fn, variables, x, reference, key).x_adv

    sharded = fast_jit(
        jax.shard_map(
            run, mesh=mesh, in_specs=(jax.P("batch"), jax.P("batch")), out_specs=jax.P("batch")
        )
    )
    np.testing.assert_allclose(sharded(x, reference), fast_jit(run)(x, reference), atol=1e-6)


@pytest.mark.parametrize("name", list(PGD_ATTACKS))
def test_pgd_bounds_objective_and_progress(model_and_data, name):
    variables, x, y = model_and_data
    # Margin loss from the identity: success <=> margin > 0, so the kept best iterate (success
    # first, then objective) never has a lower objective than the clean point (iterate 0).
    attack, (params, result) = _pgd_result(name, variables, x, y)
    assert bool(jnp.all(attack.threat.contains(params, atol=1e-6)))
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    np.testing.assert_allclose(result.x_adv, _apply(attack.threat, params, x), atol=1e-6)
    logits = linear_model_fn(variables, result.x_adv)
    np.testing.assert_array_equal(result.success, jnp.argmax(logits, -1) != y)
    objective, clean = losses.margin(logits, y), losses.margin(linear_model_fn(variables, x), y)
    if attack.tau:
        penalty = spatial.smoothness
        objective = objective - attack.tau * penalty(attack.threat.flow_pixels(params))
        clean = clean - attack.tau * penalty(attack.threat.flow_pixels(attack.threat.identity(x)))
    np.testing.assert_allclose(result.loss, objective, rtol=1e-4, atol=1e-4)
    # (With tau, a successful iterate may pay more smoothness than the clean point.)
    assert np.all(
        np.asarray(result.success) | (np.asarray(result.loss) >= np.asarray(clean) - 1e-5)
    )
    assert float(jnp.mean(result.loss - clean)) > (0.01 if attack.tau else 0.1)


def test_flow_smoothness_penalty_smooths_the_flow(model_and_data):
    variables, x, y = model_and_data
    _, (rough, _) = _pgd_result("flow", variables, x, y)
    _, (smooth, _) = _pgd_result("flow_tau", variables, x, y)
    pixels = spatial.FlowSet(0.05).flow_pixels
    assert float(jnp.mean(spatial.smoothness(pixels(smooth)))) < 0.8 * float(
        jnp.mean(spatial.smoothness(pixels(rough)))
    )


# ------------------------------------------------------------------ jit, vmap, keys, traces


def test_jit_equals_eager_and_no_recompilation(model_and_data):
    variables, x, y = model_and_data
    attack = attacks.rand_adv()
    keys = jax.random.split(jax.random.key(2), x.shape[0])
    eager = attack.run_params(linear_model_fn, variables, x, y, keys)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(variables, x, y, key):
        return attack.run_params(linear_model_fn, variables, x, y, key)

    chex.assert_trees_all_close(eager, run(variables, x, y, keys), atol=1e-6)
    for i in range(2):
        run(variables, x * (1.0 - 0.1 * i), y, jax.random.split(jax.random.key(i), x.shape[0]))


def test_per_example_keys_and_vmap(model_and_data):
    variables, x, y = model_and_data
    attack = PGD_ATTACKS["integrated"]  # edge padding, random start
    keys = jax.random.split(jax.random.key(2), x.shape[0])
    run = _jit_run(attack)
    whole = run(linear_model_fn, variables, x, y, keys)
    # An example's result does not depend on the rest of the batch ...
    part = run(linear_model_fn, variables, x[2:5], y[2:5], keys[2:5])
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[2:5], whole), part, atol=1e-5)
    # ... and vmapping single-example runs over the batch gives the batched result.
    one_by_one = fast_jit(
        jax.vmap(
            lambda xi, yi, k: attack.run_params(linear_model_fn, variables, xi[None], yi[None], k)
        )
    )(x, y, keys)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[:, 0], one_by_one), whole, atol=1e-5)


def test_scaled_budget():
    attack = attacks.integrated_spatial(0.05, 0.1, steps=4).scaled(0.5)
    assert attack.threat.eps_flow == 0.025 and attack.threat.eps_affine == 0.05
    np.testing.assert_allclose(attack.step_size, (0.015625, 0.03125))
    grid = attacks.grid_adv().scaled(0.5).grid()
    np.testing.assert_allclose(jnp.max(grid, axis=0), [15.0, 1.5, 1.5])


def test_errors(model_and_data):
    variables, x, y = model_and_data
    with pytest.raises(ValueError, match="eps must be >= 0"):
        spatial.FlowSet(-0.1)
    with pytest.raises(ValueError, match="eps_affine must be >= 0"):
        attacks.integrated_spatial(0.1, -0.1)
    with pytest.raises(ValueError, match="max_angle must be >= 0"):
        attacks.grid_adv(max_angle=-1.0)
    with pytest.raises(ValueError, match="valid paddings: zeros, edge, reflect"):
        spatial.warp(x, spatial.identity_grid(H, W), "wrap")
    with pytest.raises(ValueError, match="valid paddings"):
        attacks.rt_pgd(padding="mirror")
    with pytest.raises(ValueError, match="valid modes: rt, t, r"):
        attacks.rand_adv(mode="tr")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        attacks.worst_of_k(steps=0)
    with pytest.raises(ValueError, match="num_angles must be a positive integer"):
        attacks.grid_adv(num_angles=0)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        attacks.flow_pgd(0.1, step_size=0.01, steps=-1)
    with pytest.raises(ValueError, match="takes 2 step size"):
        dataclasses.replace(attacks.rt_pgd(steps=3), step_size=0.1)
    with pytest.raises(ValueError, match="tau"):
        dataclasses.replace(attacks.affine_pgd(0.1, 0.01, 3), tau=0.1)
    with pytest.raises(ValueError, match="grid must be"):
        spatial.warp(x, jnp.zeros((2, H, W, 2)))
    with pytest.raises(ValueError, match="hw="):
        spatial.FlowSet(0.1).sample(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="untargeted"):
        attacks.rand_adv().run(linear_model_fn, variables, x, (y, y), jax.random.key(0))
