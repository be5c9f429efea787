"""UDR's toy 2-D experiment (thesis App. E; spec ``thesis_ch5_6.md`` Sec. 6.6) as a CPU test, and
the ``domain`` option that lets attacks take inputs that are not images.

Setup, as the spec states it: class A ~ N((-2, 0), Sigma), class B a mixture of B1 ~ N((2, 0),
Sigma) and B2 ~ N((6, 0), Sigma), densities 10% / 50% / 40%, 10k training and 2k test points,
no [0, 1] clipping (``domain="features"``); the MLP 2 -> ReLU FC(10) x 3 -> FC(2); Adam, lr 1e-3,
30 epochs; training adversary Linf {k=20, eps=1.0, eta=0.1}; evaluation PGD {k=200, eps=2.0,
eta=0.1} (random start, best iterate). Thesis: robust accuracy UDR-PGD 82.6% vs PGD-AT 74.5%.

Training is the library's: ``pgd_at`` / ``udr_pgd`` defenses run by ``advjax.train.train_step``
under ``shard_map`` on a one-device mesh (what ``sharded_train_step`` jits), scanned over the
steps of an epoch and over the epochs inside one ``jax.jit``, and vmapped over ``SEEDS = 3``
initialisations, the same for both defenses (one compilation per defense). The experiment
layer's loop is not used: it takes uint8 image datasets. Batch size 128 (the thesis does not
state it). Both defenses have the thesis's loss ``CE(f(x), y) + CE(f(x'), y)`` (spec Sec. 5.1).

Schedule: 15 epochs instead of the thesis's 30 (``ADVJAX_TOY_EPOCHS=30`` runs those). The work
is compute-bound (a larger batch is no faster), and 30 epochs made this file take about 50 s on
the 2 cores it was written on, shared with 3 other jobs; with 15 it takes 30-40 s there
(compilation about 12 s of it, the training programs with LLVM at -O1: half the compile time,
the same run time). Both models have converged by then: ``lambda`` reaches its equilibrium
within 5 epochs, and the accuracies below match.

Readings chosen (the spec leaves them open):

* ``Sigma = 0.5 I`` is the covariance (std 0.707), the thesis's literal ``Sigma``.
* UDR's adversary: the released code's squared-hinge pull (spec Sec. 4.4) with ``tau = 2 eta``
  (the thesis's rule, Sec. 5.2 and App. E), ``lambda_0 = 1``, ``lr_lambda = 0.02``, period 10.
* ``lambda`` rule: Eq. 19 with the pull's own cost (``statistic="squared_hinge"``, Danskin's
  gradient for the cost the attack uses). ``lambda`` settles near 0.22, where the squared excess
  over the ball balances ``eps``: the adversary ends about 0.45 beyond the ball per coordinate.

Measured (robust accuracy, PGD-200 eps 2; ``run_toy(seed)`` for seeds 0-6, 3 initialisations
each, so 21 runs per defense):

=========  ==========================  ==========================
epochs     PGD-AT median (range)       UDR-PGD median (range)
=========  ==========================  ==========================
15         77.4 (75.0-78.7; one 84.3)  82.9 (81.2-84.6; one 92.1)
30         77.7 (74.2-78.8; one 84.6)  83.1 (81.5-84.9; one 91.1)
=========  ==========================  ==========================

UDR-PGD is ahead in all 21 pairs at both lengths. The outliers are one initialisation (seed 5)
whose PGD-AT boundary closes around cluster A. Seed 0, this test (15 epochs): PGD-AT 77.8,
UDR-PGD 83.4 (medians). PGD-AT's 77-78 is what the robust-optimal vertical boundary gives
(``x_1 = -Sigma ln(5) / 2``: 78.6% at eps 2); the thesis's 74.5 is 3 points lower.

Other readings, 4-8 initialisations each, 30 epochs (PGD-AT 78.8 on those): the code's statistic
(``"mean_abs"``: lambda wanders to 0.3-0.6 and UDR-PGD has 79.3 with ``tau = 2 eta``, 80.0 with
``tau = eta``), and the thesis's smoothed cost Eq. 16 with its ``"soft"`` statistic (``tau = 2
eta``; Linf ground cost 78.7, L2 79.1) do not separate the two. The squared-hinge statistic with
``tau = eta`` gives 82.4. With ``Sigma`` read as the std (0.5), PGD-AT has 77.3 and UDR-PGD 82.8
(``tau = 2 eta``; 80.5 with ``tau = eta``), with PGD-AT ahead for one initialisation of 8.
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from advjax import attacks, validation
from advjax.defenses import pgd_at
from advjax.defenses.udr import udr_pgd
from advjax.models.functional import make_model_fn
from advjax.sharding import AXIS, make_mesh
from advjax.threats import LpBall, lp_norm
from advjax.train import create_train_state, train_step

THESIS = {"pgd_at": 0.745, "udr_pgd": 0.826}
TOLERANCE = 0.05
COVARIANCE = 0.5  # Sigma = 0.5 I
MEANS = ((-2.0, 0.0), (2.0, 0.0), (6.0, 0.0))  # A, B1, B2
DENSITIES = (0.1, 0.5, 0.4)
TRAIN_SIZE, TEST_SIZE = 10_000, 2_000
# The thesis trains 30 epochs; 15 give the same accuracies (module docstring) in half the time.
# ADVJAX_TOY_EPOCHS=30 runs the thesis's schedule.
EPOCHS = int(os.environ.get("ADVJAX_TOY_EPOCHS", "15"))
BATCH, LEARNING_RATE = 128, 1e-3
EPS, STEP, STEPS = 1.0, 0.1, 20  # training adversary
EVAL_EPS, EVAL_STEP, EVAL_STEPS = 2.0, 0.1, 200
SEEDS = 3
UNROLL = 1  # the training attacks' step loops stay a lax.scan (faster to compile)
# LLVM at -O1: half the compile time of the training programs, about the same run time.
FAST_COMPILE = {"xla_backend_optimization_level": 1}


class ToyMLP(nn.Module):
    """Input -> ReLU(FC(10)) -> ReLU(FC(10)) -> ReLU(FC(10)) -> FC(2) (App. E; softmax in the
    loss)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        for _ in range(3):
            x = nn.relu(nn.Dense(10)(x))
        return nn.Dense(2)(x)


@functools.partial(jax.jit, static_argnums=1)
def toy_data(key: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """``size`` points ``[size, 2]`` of the three clusters and their labels (A: 0, B: 1)."""
    k_cluster, k_noise = jax.random.split(key)
    cluster = jax.random.choice(k_cluster, 3, (size,), p=jnp.asarray(DENSITIES))
    noise = jnp.sqrt(COVARIANCE) * jax.random.normal(k_noise, (size, 2))
    return jnp.asarray(MEANS)[cluster] + noise, (cluster > 0).astype(jnp.int32)


def defenses() -> dict[str, object]:
    pgd = attacks.pgd(EPS, STEP, STEPS, keep_best=False, unroll=UNROLL, domain="features")
    udr = attacks.udr(EPS, STEP, STEPS, tau=2 * STEP, unroll=UNROLL, domain="features")
    return {
        "pgd_at": pgd_at(pgd, clean_weight=1.0),
        "udr_pgd": udr_pgd(udr, statistic="squared_hinge"),
    }


def train(defense, x: jax.Array, y: jax.Array, keys: jax.Array):
    """Trains one model per key (vmapped) with ``train_step``; returns the parameters
    ``[seeds, ...]`` and the defense's ``udr_lambda`` at the end of each epoch (0 without)."""
    model = ToyMLP()
    tx = optax.adam(LEARNING_RATE)
    step = jax.shard_map(
        functools.partial(
            train_step, model=model, defense=defense, tx=tx, schedule=lambda _: LEARNING_RATE
        ),
        mesh=make_mesh(jax.devices()[:1]),
        in_specs=(P(), P(AXIS)),
        out_specs=(P(), P()),
    )
    steps = x.shape[0] // BATCH

    def one_seed(key):
        k_init, k_state, k_order = jax.random.split(key, 3)
        variables = model.init(k_init, x[:1])
        state = create_train_state(dict(variables), tx, k_state, defense.init_state())

        def epoch(state, k):
            order = jax.random.permutation(k, x.shape[0])[: steps * BATCH].reshape(steps, BATCH)

            def body(state, rows):
                state, metrics = step(state, {"image": x[rows], "label": y[rows]})
                return state, metrics.get("udr_lambda", jnp.zeros(()))

            state, lam = jax.lax.scan(body, state, order)
            return state, lam[-1]

        state, lam = jax.lax.scan(epoch, state, jax.random.split(k_order, EPOCHS))
        return state.params, lam

    return jax.jit(jax.vmap(one_seed), compiler_options=FAST_COMPILE)(keys)


def robust_accuracy(params, x: jax.Array, y: jax.Array, key: jax.Array):
    """Clean and PGD-200 (eps 2.0, eta 0.1) accuracy for parameters with leading axes
    ``[methods, seeds]``."""
    model_fn = make_model_fn(ToyMLP())
    attack = attacks.pgd(EVAL_EPS, EVAL_STEP, EVAL_STEPS, domain="features")

    def one(p):
        variables = {"params": p}
        x_adv = attack(model_fn, variables, x, y, key)
        clean = jnp.mean(jnp.argmax(model_fn(variables, x), -1) == y)
        return clean, jnp.mean(jnp.argmax(model_fn(variables, x_adv), -1) == y)

    return jax.jit(jax.vmap(jax.vmap(one)), compiler_options=FAST_COMPILE)(params)


def run_toy(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Data, training of both defenses from the same ``SEEDS`` initialisations, evaluation."""
    k_train, k_test, k_eval, k_seeds = jax.random.split(jax.random.key(seed), 4)
    x_train, y_train = toy_data(k_train, TRAIN_SIZE)
    x_test, y_test = toy_data(k_test, TEST_SIZE)
    keys = jax.random.split(k_seeds, SEEDS)  # the same initialisations for both defenses
    names, params, lams = [], [], {}
    for name, defense in defenses().items():
        p, lam = train(defense, x_train, y_train, keys)
        names.append(name)
        params.append(p)
        lams[name] = np.asarray(lam)
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *params)
    clean, robust = robust_accuracy(stacked, x_test, y_test, k_eval)
    return {
        name: {"clean": np.asarray(clean[i]), "robust": np.asarray(robust[i]), "lam": lams[name]}
        for i, name in enumerate(names)
    }


def check_toy_results(results) -> None:
    """The issue's claim: UDR-PGD's robust accuracy above PGD-AT's (mean over the seeds, and for
    most initialisations, paired), each within 5 points of the thesis (median over the seeds:
    about one initialisation in twenty lands PGD-AT in a boundary around cluster A, robust
    accuracy 84%, and UDR-PGD at 91%)."""
    pgd, udr = results["pgd_at"], results["udr_pgd"]
    report = {n: np.round(r["robust"], 4).tolist() for n, r in results.items()}
    assert udr["robust"].mean() > pgd["robust"].mean(), report
    assert np.mean(udr["robust"] > pgd["robust"]) > 0.5, report
    for name, result in results.items():
        assert abs(np.median(result["robust"]) - THESIS[name]) <= TOLERANCE, (name, report)
        assert result["clean"].mean() > 0.95, (name, result["clean"])


def test_toy_2d_udr_pgd_beats_pgd_at():
    # One test (no shared fixture): pytest-xdist would train once per worker that asks for it.
    results = run_toy(0)
    check_toy_results(results)
    # Eq. 19 with the squared-hinge cost: lambda falls from 1 and settles where the adversary's
    # squared excess over the ball balances eps (about 0.22 here), never at 0.
    lam = results["udr_pgd"]["lam"]  # [seeds, epochs]
    assert np.all(lam[:, -1] < 0.5) and np.all(lam[:, -1] > 0.05), lam[:, -1]
    assert np.all(np.abs(lam[:, -1] - lam[:, -5]) < 0.1), lam[:, -5:]


# ----------------------------------------------------------------------------------------------
# The option itself: attacks on inputs that are not images


def _linear(variables, x):
    return x @ variables


@pytest.fixture
def points():
    x = 3.0 * jax.random.normal(jax.random.key(1), (16, 2))  # values far outside [0, 1]
    y = (x[:, 0] > 0).astype(jnp.int32)
    return x, y, jnp.asarray([[-1.0, 1.0], [0.5, -0.5]])


@pytest.mark.parametrize(
    "attack",
    [attacks.pgd(1.0, 0.1, 10), attacks.udr(1.0, 0.1, 10), attacks.fgsm(0.5)],
    ids=["pgd", "udr", "fgsm"],
)
def test_points_need_the_features_domain(points, attack):
    x, y, w = points
    assert validation.domain_of(attack) == validation.IMAGES
    with pytest.raises(ValueError, match=r"rank-4 input in NHWC.*domain='features'"):
        attack(_linear, w, x, y, jax.random.key(0))
    with pytest.raises(ValueError, match=r"rank-4 input in NHWC.*domain='features'"):
        jax.jit(attack, static_argnums=0)(_linear, w, x, y, jax.random.key(0))


@pytest.mark.parametrize("factory", ["pgd", "udr"])
def test_features_domain_runs_unbounded(points, factory):
    x, y, w = points
    build = getattr(attacks, factory)
    attack = build(1.0, 0.2, 10, unroll=1, domain="features")
    assert validation.domain_of(attack) == validation.FEATURES
    x_adv = jax.jit(attack, static_argnums=0)(_linear, w, x, y, jax.random.key(0))
    assert x_adv.shape == x.shape
    # No [0, 1] clip: the points keep their values, and the hard ball (udr's lambda = 1 is
    # PGD's projection) holds.
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 1.0 + 1e-5
    assert float(jnp.max(jnp.abs(x_adv))) > 2.0
    if factory == "udr":
        # Same as Linf PGD on the same key (tau = eta, lambda = 1: the projection).
        pgd = attacks.pgd(1.0, 0.2, 10, keep_best=False, unroll=1, domain="features")
        np.testing.assert_array_equal(x_adv, pgd(_linear, w, x, y, jax.random.key(0)))
        # A soft ball lets points leave the ball (steady-state excess tau / lam - eta = 0.2).
        soft = attacks.udr(1.0, 0.2, 10, lam=0.5, unroll=1, domain="features")
        excess = jnp.max(jnp.abs(soft(_linear, w, x, y, jax.random.key(0)) - x)) - 1.0
        assert 0.1 < float(excess) <= 0.2 + 1e-5


def test_features_domain_with_bounds_and_value_checks(points):
    x, y, w = points
    domain = validation.Domain("features", (-2.0, 2.0))
    attack = attacks.pgd(1.0, 0.2, 10, unroll=1, domain=domain)
    with pytest.raises(ValueError, match=r"must lie in the domain's bounds \[-2, 2\]"):
        attack(_linear, w, x, y, jax.random.key(0))
    inside = jnp.clip(x, -2.0, 2.0)
    x_adv = attack(_linear, w, inside, y, jax.random.key(0))
    assert float(jnp.min(x_adv)) >= -2.0 and float(jnp.max(x_adv)) <= 2.0
    assert float(jnp.max(jnp.abs(x_adv - inside))) <= 1.0 + 1e-5
    # Unbounded inputs must still be finite.
    bad = x.at[3, 1].set(jnp.nan)
    with pytest.raises(ValueError, match="NaN or infinite value"):
        attacks.pgd(1.0, 0.1, 5, unroll=1, domain="features")(_linear, w, bad, y, jax.random.key(0))


def test_domain_specs_and_combinators(points):
    x, y, w = points
    assert validation.as_domain({"kind": "features", "bounds": None}) == validation.FEATURES
    assert validation.as_domain({"kind": "features", "bounds": [-1, 1]}).bounds == (-1.0, 1.0)
    spec = {"name": "pgd", "eps": 1.0, "step_size": 0.1, "steps": 5, "domain": "features"}
    built = attacks.build(spec)
    assert built.domain == validation.FEATURES and built.threat.bounds is None
    with pytest.raises(ValueError, match="unknown input kind"):
        validation.Domain("pixels")
    with pytest.raises(ValueError, match="unknown domain"):
        attacks.pgd(1.0, 0.1, 5, domain="vector")
    with pytest.raises(ValueError, match="differs from the domain"):
        attacks.GradientAttack(
            threat=attacks.pgd(1.0, 0.1, 5).threat,
            step_size=0.1,
            steps=5,
            loss="ce",
            targeted=False,
            random_init=True,
            momentum=0.0,
            keep_best=True,
            unroll=1,
            domain=validation.FEATURES,
        )
    # The unbounded L2 and L1 projections are onto the ball alone.
    balls = [LpBall(norm, 1.0, bounds=None) for norm in ("l2", "l1")]
    projected = jax.jit(lambda v: [ball.project(v + 5.0, v) for ball in balls])(x)
    for ball, p in zip(balls, projected, strict=True):
        assert np.all(np.asarray(ball.contains(p, x)))
        np.testing.assert_allclose(lp_norm(p - x, ball.norm), 1.0, rtol=1e-4)
    # A combinator takes its attack's domain.
    restarted = attacks.restarts(attacks.pgd(1.0, 0.1, 3, unroll=1, domain="features"), 2)
    assert validation.domain_of(restarted) == validation.FEATURES
    traced = jax.eval_shape(functools.partial(restarted, _linear), w, x, y, jax.random.key(0))
    assert traced.shape == x.shape
