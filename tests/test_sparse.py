"""Sparse attacks: JSMA (vs torchattacks, a brute-force saliency map) and the point-wise attack."""

import dataclasses
import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks import sparse
from tests.conftest import linear_model_fn


@functools.partial(jax.jit, static_argnums=(0, 1))
def jit_run(attack, model_fn, variables, x, y, key):
    return attack.run(model_fn, variables, x, y, key)


def mlp_fn(variables, x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ variables["w1"] + variables["b1"])
    return h @ variables["w2"] + variables["b2"]


def onehot_decision_fn(variables, x):
    """The linear model reduced to its decision: one-hot of the predicted class."""
    return jax.nn.one_hot(jnp.argmax(linear_model_fn(variables, x), -1), 10)


@pytest.fixture(scope="module")
def problem():
    """A centred linear model and 5 images near the prototypes of classes 0-4 (margins ~0.8), so
    that several features must change to flip a decision."""
    w = jax.random.normal(jax.random.key(0), (64, 10)) * 0.1
    variables = {"w": w, "b": -0.5 * jnp.sum(w, axis=0)}  # z = (x - 0.5) @ w
    noise = jax.random.uniform(jax.random.key(1), (5, 64), minval=-0.1, maxval=0.1)
    x = (0.5 + 0.15 * jnp.sign(w[:, :5].T) + noise).reshape(5, 8, 8, 1)  # in [0.25, 0.75]
    y = jnp.argmax(linear_model_fn(variables, x), -1)
    assert [int(c) for c in y] == [0, 1, 2, 3, 4]
    return variables, x, y


@pytest.fixture(scope="module")
def mlp():
    k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
    variables = {
        "w1": jax.random.normal(k1, (64, 16)) * 0.5,
        "b1": jnp.zeros(16),
        "w2": jax.random.normal(k2, (16, 10)),
        "b2": 0.1 * jax.random.normal(k3, (10,)),
    }
    x = jax.random.uniform(jax.random.key(8), (4, 8, 8, 1), minval=0.1, maxval=0.9)
    y = jnp.argmax(mlp_fn(variables, x), -1)
    return variables, x, y


# ------------------------------------------------------------------------------------------- JSMA


@pytest.mark.parametrize("chunk_elements", [10, 20, 2**18])  # 1 row, 2 rows + padding, all rows
def test_best_pair_matches_brute_force(chunk_elements):
    rng = np.random.default_rng(0)
    n = 7
    g_t = rng.normal(size=(6, n)).astype(np.float32)
    g_o = rng.normal(size=(6, n)).astype(np.float32)
    domain = rng.random((6, n)) < 0.8
    g_t[0, :2], g_o[0, :2] = 1.0, -1.0  # a tie: pairs (0, 1) and (1, 0) first
    domain[1] = False  # no admissible pair
    domain[2] = [True] + [False] * (n - 1)  # a single feature left
    for increase in (True, False):
        p, q, found = sparse.best_pair(
            jnp.asarray(g_t), jnp.asarray(g_o), jnp.asarray(domain), increase, chunk_elements
        )
        for b in range(6):
            best, arg = -np.inf, None
            for i, j in itertools.product(range(n), range(n)):
                a, c = g_t[b, i] + g_t[b, j], g_o[b, i] + g_o[b, j]
                ok = i != j and domain[b, i] and domain[b, j]
                ok &= (a > 0 and c < 0) if increase else (a < 0 and c > 0)
                if ok and -a * c > best:
                    best, arg = -a * c, (i, j)
            assert bool(found[b]) == (arg is not None), (b, increase)
            if arg is not None:
                assert (int(p[b]), int(q[b])) == arg, (b, increase, chunk_elements)
    assert not bool(found[1]) and not bool(found[2])


@functools.partial(jax.jit, static_argnums=3)
def all_targets(logits, y, key, modes=sparse.TARGET_MODES):
    return {mode: sparse.choose_targets(logits, y, mode, key) for mode in modes}


def test_choose_targets(problem):
    variables, x, y = problem
    logits = linear_model_fn(variables, x)
    keys = jax.random.split(jax.random.key(0), x.shape[0])
    chosen = all_targets(logits, y, keys)
    np.testing.assert_array_equal(chosen["second"], jnp.argsort(logits, -1)[:, -2])  # y is top
    np.testing.assert_array_equal(chosen["least"], jnp.argmin(logits, -1))
    np.testing.assert_array_equal(chosen["next"], (y + 1) % 10)
    for targets in chosen.values():
        assert bool(jnp.all(targets != y))
    many = jax.random.split(jax.random.key(1), 100)
    random = all_targets(jnp.zeros((100, 10)), jnp.arange(100) % 10, many)["random"]
    assert bool(jnp.all(random != jnp.arange(100) % 10))
    assert bool(jnp.all((random >= 0) & (random < 10)))
    assert len(set(np.asarray(random).tolist())) == 10  # every class is drawn
    with pytest.raises(ValueError, match="valid modes: second, least, random, next"):
        sparse.choose_targets(logits, y, "most", keys)


def test_jsma_matches_torchattacks(mlp):
    torch = pytest.importorskip("torch")
    torchattacks = pytest.importorskip("torchattacks")
    variables, x, y = mlp
    targets = (y + 1) % 10  # torchattacks' default target, pursued until reached
    attack = sparse.jsma(gamma=0.5, targeted=True)  # 16 iterations: floor = ceil for 64 features
    result = jit_run(attack, mlp_fn, variables, x, targets, jax.random.key(0))

    class TorchMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            params = {
                k: torch.nn.Parameter(torch.tensor(np.asarray(v))) for k, v in variables.items()
            }
            self.params = torch.nn.ParameterDict(params)

        def forward(self, images):  # NCHW with C = 1 flattens like NHWC
            h = torch.tanh(
                images.reshape(images.shape[0], -1) @ self.params["w1"] + self.params["b1"]
            )
            return h @ self.params["w2"] + self.params["b2"]

    peer = torchattacks.JSMA(TorchMLP(), theta=1.0, gamma=0.5)
    images = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2))
    expected = peer(images, torch.tensor(np.asarray(y))).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(result.x_adv, expected, atol=1e-6)
    assert int(sparse.l0_norm(result.x_adv, x).min()) >= 4  # several iterations were needed
    pred = jnp.argmax(mlp_fn(variables, result.x_adv), -1)
    np.testing.assert_array_equal(result.success, pred == targets)


@pytest.mark.parametrize("theta", [1.0, -1.0])
def test_jsma_budget_direction_and_success(problem, theta):
    variables, x, y = problem
    attack = sparse.jsma(step_size=theta, gamma=0.5)  # untargeted: most likely wrong class
    result = jit_run(attack, linear_model_fn, variables, x, y, jax.random.key(0))
    changed = result.x_adv != x
    l0 = sparse.l0_norm(result.x_adv, x)
    assert int(l0.max()) <= 2 * attack.max_iterations(64) == 32
    bound = 1.0 if theta > 0 else 0.0  # theta = +-1 moves a feature straight to the bound
    assert bool(jnp.all(jnp.where(changed, result.x_adv == bound, True)))
    assert bool(jnp.all((result.x_adv >= 0) & (result.x_adv <= 1)))
    assert bool(jnp.all(result.success))  # the linear model is broken within 32 features
    assert int(l0.min()) >= 4 and int(l0.max()) >= 10
    logits = linear_model_fn(variables, result.x_adv)
    assert bool(jnp.all(jnp.argmax(logits, -1) != y))
    # The reported loss is the C&W margin at x_adv (positive: misclassified).
    margin = jnp.max(logits - 1e9 * jax.nn.one_hot(y, 10), -1)
    margin -= jnp.take_along_axis(logits, y[:, None], 1)[:, 0]
    np.testing.assert_allclose(result.loss, margin, rtol=1e-5)
    # A tight budget: floor(0.05 * 64 / 2) = 1 iteration, at most 2 features.
    tight = jit_run(
        sparse.jsma(step_size=theta, gamma=0.05),
        linear_model_fn,
        variables,
        x,
        y,
        jax.random.key(0),
    )
    assert int(sparse.l0_norm(tight.x_adv, x).max()) <= 2
    assert not bool(jnp.any(tight.success))


def test_jsma_jit_eager_keys_and_no_retrace(problem):
    variables, x, y = problem
    attack = sparse.jsma(gamma=0.25, target="random")
    keys = jax.random.split(jax.random.key(3), x.shape[0])

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(variables, x, y, key):
        return attack.run(linear_model_fn, variables, x, y, key)

    whole = run(variables, x, y, keys)
    chex.assert_trees_all_close(attack.run(linear_model_fn, variables, x, y, keys), whole)
    perm = jnp.array([4, 2, 0, 1, 3])
    permuted = run(variables, x[perm], y[perm], keys[perm])
    chex.assert_trees_all_close(permuted, jax.tree.map(lambda a: a[perm], whole))
    swap = jnp.array([0, 0, 2, 3, 4])
    mixed = run(variables, x[swap], y[swap], keys[swap])
    chex.assert_trees_all_close(mixed, jax.tree.map(lambda a: a[swap], whole))


# ------------------------------------------------------------------------------------ point-wise


UNBOUNDED = np.float32(np.inf)


@pytest.fixture(scope="module")
def pointwise_run(problem):
    variables, x, y = problem
    y = y.at[4].set((y[4] + 3) % 10)  # a clean mistake: its own adversarial, L0 = 0
    attack = sparse.pointwise(steps=8, init_steps=20)
    keys = jax.random.split(jax.random.key(0), x.shape[0])

    @jax.jit
    @chex.assert_max_traces(n=1)  # reused with other batches and budgets: never retraced
    def run(variables, x, y, key, eps):  # a traced L0 budget (inf: unbounded)
        return dataclasses.replace(attack, eps=eps).run_with_history(
            linear_model_fn, variables, x, y, key
        )

    result, history = run(variables, x, y, keys, UNBOUNDED)
    return attack, run, x, y, keys, result, history


def test_pointwise_returns_one_minimal_adversarials(problem, pointwise_run):
    variables, *_ = problem
    _, _, x, y, _, result, history = pointwise_run
    assert bool(jnp.all(result.success))
    assert bool(jnp.all(jnp.argmax(linear_model_fn(variables, result.x_adv), -1) != y))
    l0 = sparse.l0_norm(result.x_adv, x)
    np.testing.assert_array_equal(result.loss, -l0.astype(jnp.float32))
    assert int(l0[4]) == 0 and bool(jnp.all(l0[:4] >= 2))
    # Salt and pepper changes whole pixels to 0 or 1; resets only restore clean values.
    changed = result.x_adv != x
    assert bool(jnp.all(jnp.where(changed, (result.x_adv == 0) | (result.x_adv == 1), True)))
    # Converged (fewer passes than the cap): no single changed feature can be reset.
    flat, clean = result.x_adv.reshape(5, 64), x.reshape(5, 64)
    resets = jnp.where(jnp.eye(64, dtype=bool)[None], clean[:, None], flat[:, None])  # [5, 64, 64]
    still = jnp.argmax(linear_model_fn(variables, resets.reshape(-1, 8, 8, 1)), -1).reshape(5, 64)
    assert not bool(jnp.any((still != y[:, None]) & changed.reshape(5, 64)))
    # L0 after the start and after every pass never increases.
    assert history.shape == (9, 5)
    assert bool(jnp.all(history[1:] <= history[:-1]))
    np.testing.assert_array_equal(history[-1], l0)
    assert bool(jnp.all(history[0, :4] > history[-1, :4]))


def test_pointwise_is_decision_based_and_batch_independent(problem, pointwise_run):
    variables, *_ = problem
    attack, run, x, y, keys, result, _ = pointwise_run
    decision, _ = jax.jit(attack.run_with_history, static_argnums=0)(
        onehot_decision_fn, variables, x, y, keys
    )
    chex.assert_trees_all_close(decision, result)
    perm = jnp.array([3, 4, 0, 2, 1])
    permuted, _ = run(variables, x[perm], y[perm], keys[perm], UNBOUNDED)
    swap = jnp.array([1, 1, 2, 3, 4])
    mixed, _ = run(variables, x[swap], y[swap], keys[swap], UNBOUNDED)
    chex.assert_trees_all_close(mixed, jax.tree.map(lambda a: a[swap], result))
    chex.assert_trees_all_close(permuted, jax.tree.map(lambda a: a[perm], result))
    chex.assert_trees_all_close(attack.run(linear_model_fn, variables, x, y, keys), result)  # eager


def test_pointwise_budget_and_refinement(problem, pointwise_run):
    variables, *_ = problem
    attack, run, x, y, keys, result, _ = pointwise_run
    l0 = sparse.l0_norm(result.x_adv, x)
    budget = int(jnp.sort(l0)[2])
    bounded, _ = run(variables, x, y, keys, np.float32(budget))
    np.testing.assert_array_equal(bounded.success, l0 <= budget)
    np.testing.assert_array_equal(
        bounded.x_adv, jnp.where((l0 <= budget)[:, None, None, None], result.x_adv, x)
    )
    assert bool(jnp.all(jnp.where(bounded.success, bounded.loss == -l0, bounded.loss == -jnp.inf)))
    # Foolbox's binary searches move changed features towards the clean values (L2 shrinks).
    refined = dataclasses.replace(attack, refine_steps=2, binary_search_steps=6)
    refined = jit_run(refined, linear_model_fn, variables, x, y, keys)
    assert bool(jnp.all(refined.success))
    assert bool(jnp.all(jnp.argmax(linear_model_fn(variables, refined.x_adv), -1) != y))
    assert bool(jnp.all(sparse.l0_norm(refined.x_adv, x) <= l0))
    l2 = lambda z: jnp.linalg.norm((z - x).reshape(5, -1), axis=1)  # noqa: E731
    assert bool(jnp.all(l2(refined.x_adv) <= l2(result.x_adv) + 1e-6))
    assert bool(jnp.any(l2(refined.x_adv) < l2(result.x_adv) - 1e-3))
    inside = (jnp.minimum(x, result.x_adv) <= refined.x_adv) & (
        refined.x_adv <= jnp.maximum(x, result.x_adv)
    )
    assert bool(jnp.all(inside))


def test_pointwise_uniform_init_and_failure(problem, pointwise_run):
    variables, x, y = problem
    uniform = sparse.pointwise(steps=3, init="uniform", init_steps=10)
    result = jit_run(uniform, linear_model_fn, variables, x, y, jax.random.key(1))
    assert bool(jnp.all(result.success))
    assert bool(jnp.all(jnp.argmax(linear_model_fn(variables, result.x_adv), -1) != y))
    # A model that always predicts class 0: no noise level fools it on label 0.
    _, run, *_ = pointwise_run
    constant = {"w": jnp.zeros_like(variables["w"]), "b": jnp.zeros(10).at[0].set(1.0)}
    keys = jax.random.split(jax.random.key(1), x.shape[0])
    failed, history = run(constant, x, jnp.zeros_like(y), keys, UNBOUNDED)
    assert not bool(jnp.any(failed.success))
    np.testing.assert_array_equal(failed.x_adv, x)
    assert bool(jnp.all(failed.loss == -jnp.inf)) and not bool(jnp.any(history))


# ---------------------------------------------------------------------------------------- errors


def test_errors(problem):
    variables, x, y = problem
    with pytest.raises(ValueError, match="step_size must satisfy 0 < |step_size| <= 1"):
        sparse.jsma(step_size=0.0)
    with pytest.raises(ValueError, match="step_size"):
        sparse.jsma(step_size=2.0)
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\]"):
        sparse.jsma(gamma=0.0)
    with pytest.raises(ValueError, match="valid modes: second, least, random, next"):
        sparse.jsma(target="most")
    with pytest.raises(ValueError, match="eps .* must be None or >= 0"):
        sparse.pointwise(eps=-1)
    with pytest.raises(ValueError, match="valid inits: salt_and_pepper, uniform"):
        sparse.pointwise(init="gaussian")
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        sparse.pointwise(steps=-1)
    with pytest.raises(ValueError, match="init_steps must be an integer >= 1"):
        sparse.pointwise(init_steps=2.5)
    with pytest.raises(ValueError, match=r"integer labels y of shape \[B\]"):
        sparse.jsma()(linear_model_fn, variables, x, (y, y), jax.random.key(0))
    with pytest.raises(TypeError, match="labels must be integers"):
        sparse.pointwise()(linear_model_fn, variables, x, y.astype(jnp.float32), jax.random.key(0))
    with pytest.raises(ValueError, match=r"one per example \(shape \[5\]\)"):
        sparse.pointwise()(linear_model_fn, variables, x, y, jax.random.split(jax.random.key(0), 3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sparse.jsma()(linear_model_fn, variables, x * 255, y, jax.random.key(0))
