"""Regularised objectives: TRADES, MART, zero-step JAC, ATLAS (-l, -g), TradesJac, KLR.

Values are checked against NumPy on a one-hidden-layer tanh MLP whose Jacobian has a closed form,
``J_b = W2^T diag(1 - h_b^2) W1^T``; the Jacobian-norm estimator against ``jax.jacrev``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from advjax import attacks, defenses, losses
from advjax.defenses import core
from advjax.models import apply_train, init_variables, make_model_fn

K = 5  # classes
B = 6  # batch
EPS = 0.1


class MLP(nn.Module):
    """``logits = W2^T tanh(W1^T vec(x) + b1) + b2``, optionally with BatchNorm before tanh."""

    num_classes: int = K
    hidden: int = 12
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        h = nn.Dense(self.hidden, name="dense1")(x.reshape((x.shape[0], -1)))
        if self.batch_norm:
            h = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(h)
        h = jnp.tanh(h)
        logits = nn.Dense(self.num_classes, name="dense2")(h)
        return (logits, h) if return_features else logits


@pytest.fixture(scope="module")
def setup():
    model = MLP()
    variables = init_variables(model, jax.random.key(0), (4, 4, 1))
    # Larger weights than the default init, so that the terms are far from trivial.
    variables = jax.tree.map(lambda w: 3.0 * w, variables)
    x = jax.random.uniform(jax.random.key(1), (B, 4, 4, 1), minval=0.2, maxval=0.8)
    y = jnp.arange(B) % K
    keys = jax.random.split(jax.random.key(2), B)
    return model, variables, {"image": x, "label": y}, keys


# -- NumPy reference ---------------------------------------------------------------------------


def np_forward(variables, x):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    h = np.tanh(
        np.asarray(x, np.float64).reshape(x.shape[0], -1) @ p["dense1"]["kernel"]
        + p["dense1"]["bias"]
    )
    return h @ p["dense2"]["kernel"] + p["dense2"]["bias"], h


def np_jacobians(variables, x):
    """``[B, K, D]``: the exact per-example Jacobians of the tanh MLP."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    _, h = np_forward(variables, x)
    w1, w2 = p["dense1"]["kernel"], p["dense2"]["kernel"]
    return np.einsum("dj,bj,jk->bkd", w1, 1.0 - h**2, w2)


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kl(p_logits, q_logits):
    lp, lq = np_log_softmax(p_logits), np_log_softmax(q_logits)
    return np.sum(np.exp(lp) * (lp - lq), -1)


def np_ce(z, y):
    return -np_log_softmax(z)[np.arange(len(y)), y]


def np_bce(z, y):
    p = np.exp(np_log_softmax(z))
    other = np.where(np.eye(z.shape[1], dtype=bool)[y], 0.0, p).max(-1)
    return np_ce(z, y) - np.log(1.0 - other + 1e-12)


def np_jac_estimate(variables, x, keys, num_projections):
    """``K ||v_b^T J_b||^2`` with the defense's documented projection keys and vectors."""
    jac_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, core.JACOBIAN_KEY)
    v = np.asarray(defenses.projection_vectors(jac_keys, K, num_projections), np.float64)
    vj = np.einsum("pbk,bkd->pbd", v, np_jacobians(variables, x))
    return K * np.mean(np.sum(vj**2, -1), 0)


def np_objective(name, variables, x, x_adv, y, alpha, beta, kl_base, keys, num_projections):
    """The published loss of each objective, in NumPy, given the adversary ``x_adv``."""
    y = np.asarray(y)
    zc, _ = np_forward(variables, x)
    za, _ = np_forward(variables, x_adv)
    kl_clean, kl_adv = np_kl(zc, za), np_kl(za, zc)  # KL(p(x)||p(x')), KL(p(x')||p(x))
    kl = kl_clean if kl_base == "clean" else kl_adv
    jac_x = np_jac_estimate(variables, x, keys, num_projections)
    jac_adv = np_jac_estimate(variables, x_adv, keys, num_projections)
    p_true = np.exp(np_log_softmax(zc))[np.arange(len(y)), y]
    per_example = {
        "trades": np_ce(zc, y) + beta * kl,
        "mart": np_bce(za, y) + beta * kl * (1 - p_true),
        "mart_thesis": np_bce(zc, y) + beta * kl * (1 - p_true),
        "jac": np_ce(zc, y) + alpha * jac_x,
        "atlas": np_ce(za, y) + alpha * jac_adv + beta * kl,
        "atlas_l": np_ce(za, y) + alpha * jac_adv,
        "atlas_g": np_ce(za, y) + beta * kl,
        "trades_jac": np_ce(zc, y) + alpha * jac_x + beta * kl,
    }[name]
    return np.mean(per_example), np.mean(jac_adv)


# -- Objective values --------------------------------------------------------------------------

ONE_STEP = dict(name="fgsm_rs", eps=EPS)  # step 1.25 eps
PGD3 = dict(name="pgd", eps=EPS, step_size=0.04, steps=3, keep_best=False)
CASES = {
    # name: (defense spec, expected KL base); build() gives KL adversaries their KL loss.
    "trades": (dict(name="trades", beta=2.0, attack=PGD3), "clean"),
    "trades_adv_base": (dict(name="trades", beta=2.0, kl_base="adv", attack=ONE_STEP), "adv"),
    "mart": (dict(name="mart", beta=2.0, attack=PGD3), "clean"),
    "mart_thesis": (dict(name="mart", beta=2.0, variant="thesis", attack=ONE_STEP), "clean"),
    "jac": (dict(name="jac", alpha=0.5), None),
    "atlas": (dict(name="atlas", alpha=0.5, beta=2.0, num_projections=3, attack=ONE_STEP), "adv"),
    "atlas_l": (dict(name="atlas_l", alpha=0.5, attack=ONE_STEP), None),
    "atlas_g": (dict(name="atlas_g", beta=2.0, attack=PGD3), "adv"),
    "trades_jac": (dict(name="trades_jac", alpha=0.5, beta=2.0, attack=ONE_STEP), "clean"),
    # KLR: TRADES whose adversary is a spatial worst-of-k search maximising the same KL.
    "klr": (dict(name="klr", beta=2.0, attack=dict(name="worst_of_k", steps=4)), "clean"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_objective_matches_numpy(setup, case):
    model, variables, batch, keys = setup
    fields, kl_base = CASES[case]
    defense = defenses.build(fields)
    x, y = batch["image"], batch["label"]

    @jax.jit
    def run(variables):
        x_adv = x
        for adversary in defense.adversaries:  # the same adversary with the same keys
            model_fn = make_model_fn(model)
            target = model_fn(variables, x) if adversary.target == "clean_logits" else y
            x_adv = adversary.attack(model_fn, variables, x, target, keys)
        return defense(model, variables, batch, keys), x_adv

    (loss, aux), x_adv = run(variables)
    if defense.adversaries and case != "klr":
        assert float(jnp.max(jnp.abs(x_adv - x))) == pytest.approx(EPS, rel=1e-5)
    name = {"mart_thesis": "mart_thesis", "klr": "trades"}.get(case, fields["name"])
    expected, jac_adv = np_objective(
        name,
        variables,
        x,
        x_adv,
        y,
        fields.get("alpha", 0.0),
        fields.get("beta", 0.0),
        kl_base,
        keys,
        fields.get("num_projections", 1),
    )
    np.testing.assert_allclose(loss, expected, rtol=2e-5)
    # jac_norm: the estimate of ||J(x')||_F^2 at the adversary (at x for zero-step JAC).
    np.testing.assert_allclose(aux["metrics"]["jac_norm"], jac_adv, rtol=2e-5)
    assert aux["batch_stats"] == {}


def test_kl_directions_are_named_correctly(setup):
    model, variables, batch, _ = setup
    za = make_model_fn(model)(variables, jnp.clip(batch["image"] + 0.1, 0, 1))
    zc = make_model_fn(model)(variables, batch["image"])
    clean_base = defenses.kl_term(zc, za, "clean")
    adv_base = defenses.kl_term(zc, za, "adv")
    np.testing.assert_allclose(clean_base, np_kl(np.asarray(zc), np.asarray(za)), rtol=1e-4)
    np.testing.assert_allclose(adv_base, np_kl(np.asarray(za), np.asarray(zc)), rtol=1e-4)
    assert np.max(np.abs(np.asarray(clean_base) - np.asarray(adv_base))) > 1e-3
    # The attack maximises the KL of the loss, with the clean logits as its target.
    assert defenses.kl_attack_loss("clean") == "kl_from_reference"
    assert defenses.kl_attack_loss("adv") == "kl_to_reference"
    np.testing.assert_allclose(losses.kl_from_reference(za, zc), clean_base, rtol=1e-6)
    attack = attacks.pgd(EPS, 0.04, 2, loss="kl_to_reference", keep_best=False)
    assert defenses.trades(attack, kl_base="adv").attacks[0].loss == "kl_to_reference"
    assert defenses.atlas(attacks.fgsm_rs(EPS)).terms[-1].base == "adv"  # ATLAS Eq. 13-14


def test_bad_settings_raise():
    ce_attack = attacks.fgsm_rs(EPS)
    kl_attack = attacks.fgsm_rs(EPS, loss="kl_from_reference")
    with pytest.raises(ValueError, match="unknown kl_base 'nat'; valid values: clean, adv"):
        defenses.trades(kl_attack, kl_base="nat")
    with pytest.raises(ValueError, match="beta must be >= 0"):
        defenses.trades(kl_attack, beta=-1.0)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        defenses.atlas(ce_attack, alpha=-0.1)
    with pytest.raises(ValueError, match="must maximise the same KL, loss='kl_to_reference'"):
        defenses.trades(kl_attack, kl_base="adv")
    with pytest.raises(ValueError, match="must maximise the same KL"):
        defenses.trades(ce_attack)
    with pytest.raises(ValueError, match="needs the clean logits"):
        defenses.atlas(kl_attack)
    with pytest.raises(ValueError, match="valid values: original, thesis"):
        defenses.mart(ce_attack, variant="wang")
    with pytest.raises(ValueError, match="reads view 'adv'.*its views: clean"):
        defenses.Defense((defenses.terms.KLDivergence(),))
    with pytest.raises(ValueError, match="num_projections"):
        defenses.jac(num_projections=0)
    with pytest.raises(ValueError, match="'atlas_l' has no hyperparameter 'beta'"):
        defenses.build(dict(name="atlas_l", attack=ONE_STEP, alpha=1.0, beta=1.0))
    with pytest.raises(ValueError, match="'atlas_g' has no hyperparameter 'alpha'"):
        defenses.build(dict(name="atlas_g", attack=ONE_STEP, alpha=1.0))
    with pytest.raises(ValueError, match="valid values: original, thesis"):
        defenses.build(dict(name="mart", attack=ONE_STEP, variant="x"))
    with pytest.raises(ValueError, match="unknown defense 'madry'; valid defenses: natural"):
        defenses.build(dict(name="madry"))
    with pytest.raises(ValueError, match="not both"):
        defenses.build(dict(name="natural", eps_warmup_epochs=1, eps_warmup_steps=2))


def test_specs_build_the_adversary_the_objective_needs():
    one = defenses.build(dict(name="trades", beta=1.0, attack=ONE_STEP))
    (attack,) = one.attacks
    assert (attack.steps, attack.step_size) == (1, pytest.approx(1.25 * EPS))
    assert attack.loss == "kl_from_reference" and attack.threat.eps == EPS
    assert one.adversaries[0].target == "clean_logits"
    multi = defenses.build(dict(name="mart", attack=dict(PGD3, steps=7)))
    assert (multi.attacks[0].steps, multi.attacks[0].loss, multi.attacks[0].keep_best) == (
        7,
        "ce",
        False,
    )
    assert isinstance(multi.terms[0], defenses.terms.BoostedCrossEntropy)
    assert multi.terms[0].view == "adv"
    thesis = defenses.build(dict(name="mart", variant="thesis", kl_base="adv", attack=PGD3))
    assert thesis.attacks[0].loss == "kl_to_reference" and thesis.terms[0].view == "clean"
    atlas = defenses.build(dict(name="atlas", attack=ONE_STEP, eps_warmup_epochs=2), 5)
    assert atlas.eps_warmup_steps == 10 and atlas.attacks[0].loss == "ce"
    assert [t.weight for t in atlas.terms] == [1.0, core.WarmupScaled(2e-4), core.WarmupScaled(5.0)]
    klr = defenses.build(dict(name="klr"))
    assert isinstance(klr.attacks[0], attacks.RandomSearch) and klr.terms[1].weight == 1.0
    assert (klr.attacks[0].steps, klr.attacks[0].loss) == (10, "kl_from_reference")
    wok = defenses.build(dict(name="pgd_at", attack=dict(name="worst_of_k")))
    assert isinstance(wok.attacks[0], attacks.RandomSearch) and wok.attacks[0].loss == "ce"
    tj = defenses.build(dict(name="trades_jac", attack=ONE_STEP))
    assert [t.weight for t in tj.terms] == [1.0, core.WarmupScaled(2e-4), core.WarmupScaled(0.5)]
    assert tj.terms[1].view == "clean" and tj.attacks[0].loss == "kl_from_reference"


# -- ATLAS with alpha = beta = 0 is one-step ADV -----------------------------------------------


def test_atlas_without_penalties_is_fast_at_with_batchnorm():
    model = MLP(batch_norm=True)
    variables = init_variables(model, jax.random.key(3), (4, 4, 1))
    x = jax.random.uniform(jax.random.key(4), (B, 4, 4, 1))
    batch = {"image": x, "label": jnp.arange(B) % K}
    keys = jax.random.split(jax.random.key(5), B)
    fields = dict(attack=ONE_STEP, eps_warmup_epochs=1)
    atlas = defenses.build(dict(name="atlas", alpha=0.0, beta=0.0, **fields), 10)
    fast = defenses.build(dict(name="fast_at", **fields), 10)
    assert atlas.attacks == fast.attacks

    def value_and_grad(defense, step):
        def loss_fn(params):
            variables_ = {**variables, "params": params}
            return defense(model, variables_, batch, keys, step=step)

        return jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])

    step = jnp.int32(7)  # mid warm-up: eps_t = 0.7 eps
    (loss_a, aux_a), grad_a = jax.jit(lambda s: value_and_grad(atlas, s))(step)
    (loss_f, aux_f), grad_f = jax.jit(lambda s: value_and_grad(fast, s))(step)
    np.testing.assert_allclose(loss_a, loss_f, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grad_a, grad_f
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
        aux_a["batch_stats"],
        aux_f["batch_stats"],
    )
    np.testing.assert_allclose(aux_a["metrics"]["adv_accuracy"], aux_f["metrics"]["adv_accuracy"])
    assert float(aux_a["metrics"]["jac_norm"]) > 0  # monitored, without changing the gradient


def test_batchnorm_statistics_chain_clean_then_adversarial_pass():
    model = MLP(batch_norm=True)
    variables = init_variables(model, jax.random.key(3), (4, 4, 1))
    x = jax.random.uniform(jax.random.key(4), (B, 4, 4, 1))
    batch = {"image": x, "label": jnp.arange(B) % K}
    keys = jax.random.split(jax.random.key(5), B)
    defense = defenses.trades(attacks.fgsm_rs(EPS, loss="kl_from_reference"), beta=1.0)
    model_fn = make_model_fn(model)

    @jax.jit
    def run(variables):
        _, aux = defense(model, variables, batch, keys)
        x_adv = defense.attacks[0](model_fn, variables, x, model_fn(variables, x), keys)
        _, clean_stats = apply_train(model, variables, x)
        _, expected = apply_train(model, {**variables, "batch_stats": clean_stats}, x_adv)
        return aux, clean_stats, expected

    aux, clean_stats, expected = run(variables)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), aux["batch_stats"], expected
    )
    changed = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), expected, clean_stats)
    assert min(jax.tree.leaves(changed)) > 0  # the adversarial pass did update the statistics


# -- Warm-up -----------------------------------------------------------------------------------


def test_warmup_scales_alpha_beta_with_eps(setup):
    model, variables, batch, keys = setup
    atlas = defenses.build(
        dict(name="atlas", alpha=0.3, beta=2.0, attack=ONE_STEP, eps_warmup_epochs=2), 10
    )
    trades = defenses.build(dict(name="trades", beta=2.0, attack=ONE_STEP, eps_warmup_epochs=2), 10)
    model_fn = make_model_fn(model)

    def at(defense, step):
        loss, aux = defense(model, variables, batch, keys, step=step)
        attack = defense.attacks[0].scaled(defense.ramp(step))  # the step's CE attack
        x_adv = attack(model_fn, variables, batch["image"], batch["label"], keys)
        return loss, aux["metrics"], jnp.max(jnp.abs(x_adv - batch["image"]))

    steps = (0, 5, 20, 40)
    ramp = np.array([0.0, 0.25, 1.0, 1.0])  # eps_t / eps with 20 warm-up steps
    run = jax.jit(lambda s: at(atlas, s))
    out = [run(jnp.int32(s)) for s in steps]
    np.testing.assert_allclose([o[1]["jac_weight"] for o in out], 0.3 * ramp, rtol=1e-6)
    np.testing.assert_allclose([o[1]["kl_weight"] for o in out], 2.0 * ramp, rtol=1e-6)
    np.testing.assert_allclose([o[2] for o in out], EPS * ramp, rtol=1e-5, atol=1e-7)
    # Step 0: eps = 0, so x' = x and the weights vanish: plain CE on the clean batch.
    clean_ce = jnp.mean(losses.cross_entropy(model_fn(variables, batch["image"]), batch["label"]))
    np.testing.assert_allclose(out[0][0], clean_ce, rtol=1e-6)
    # TRADES ramps the budget only (its beta is not part of the ATLAS rule).
    trades_metrics = jax.jit(lambda s: trades(model, variables, batch, keys, step=s)[1]["metrics"])
    assert trades.terms[1].weight == 2.0 and "kl_weight" not in trades_metrics(jnp.int32(5))
    scaled = trades.attacks[0].scaled(trades.ramp(jnp.int32(5)))
    assert float(scaled.threat.eps) == pytest.approx(0.25 * EPS)


# -- The Jacobian-norm estimator ---------------------------------------------------------------


def test_jacobian_estimate_is_unbiased(setup):
    model, variables, batch, _ = setup
    x = batch["image"][:3]
    model_fn = make_model_fn(model)

    def logits_fn(z):
        return model_fn(variables, z)

    n = 2000

    @jax.jit
    def estimates():
        def exact_one(z):
            return jnp.sum(jax.jacrev(lambda u: logits_fn(u[None])[0])(z) ** 2)

        def single(k):
            return defenses.jacobian_norm_estimate(logits_fn, x, k)

        keys = jax.random.split(jax.random.key(9), 3)
        return (
            jax.vmap(exact_one)(x),
            jax.vmap(single)(jax.random.split(jax.random.key(7), n)),  # [n, 3]
            defenses.jacobian_norm_estimate(logits_fn, x, keys),
            defenses.jacobian_norm_estimate(logits_fn, x[1:], keys[1:]),
        )

    exact, single, full, part = estimates()
    np.testing.assert_allclose(exact, np.sum(np_jacobians(variables, x) ** 2, (1, 2)), rtol=1e-4)
    mean, se = np.mean(single, 0), np.std(single, 0) / np.sqrt(n)
    assert np.all(np.abs(mean - exact) < 4 * se), (mean, exact, se)
    assert np.all(np.std(single, 0) > 0.05 * exact)  # a random estimate, not the exact value
    # Per-example keys: an example's estimate depends on its own key and input only.
    np.testing.assert_allclose(full[1:], part, rtol=1e-6)


def _dot_flops(jaxpr) -> float:
    """Multiply-adds of every ``dot_general`` in a jaxpr, sub-jaxprs included."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in lhs_contract])
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += _dot_flops(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += _dot_flops(sub)
    return total


def test_jacobian_estimate_cost_does_not_grow_with_classes():
    d, hidden = 1024, 16
    x = jnp.ones((2, 32, 32, 1))

    def flops(num_classes, estimator):
        w1 = jnp.ones((d, hidden))
        w2 = jnp.ones((hidden, num_classes))

        def logits_fn(z):
            return jnp.tanh(z.reshape(z.shape[0], -1) @ w1) @ w2

        return _dot_flops(jax.make_jaxpr(lambda z: estimator(logits_fn, z))(x).jaxpr)

    def one_vjp(logits_fn, z):
        return defenses.jacobian_norm_estimate(logits_fn, z, jax.random.key(0))

    def jacrev(logits_fn, z):
        return jnp.sum(jax.jacrev(logits_fn)(z) ** 2)

    # One VJP: the input-layer backward pass (d x hidden) is done once, whatever K.
    assert flops(200, one_vjp) < 1.5 * flops(2, one_vjp)
    # The exact Jacobian repeats it per class (the check above can fail).
    assert flops(200, jacrev) > 20 * flops(2, jacrev)


# -- Under jit, through a real train step ------------------------------------------------------


def test_train_step_with_atlas_jits_and_learns():
    from advjax.sharding import make_mesh, replicate, shard_batch
    from advjax.train.state import create_train_state
    from advjax.train.step import sharded_train_step

    model = MLP(batch_norm=True)
    variables = init_variables(model, jax.random.key(3), (4, 4, 1))
    cfg = ml_collections.ConfigDict(
        dict(name="atlas", attack=ONE_STEP, alpha=0.05, beta=1.0, eps_warmup_epochs=1)
    )
    defense = defenses.build(cfg, steps_per_epoch=2)
    tx = optax.sgd(0.5)
    mesh = make_mesh(jax.devices()[:1])
    step_fn = sharded_train_step(model, defense, tx, optax.constant_schedule(0.5), mesh)
    state = replicate(create_train_state(variables, tx, jax.random.key(0)), mesh)
    x = jax.random.uniform(jax.random.key(4), (1, 8, 4, 4, 1))
    batch = shard_batch({"image": x, "label": jnp.arange(8)[None] % K}, mesh)
    initial_stats = jax.device_get(variables["batch_stats"])  # the state buffers are donated
    history = []
    for _ in range(6):
        state, metrics = step_fn(state, batch)
        history.append(jax.device_get(metrics))
    assert int(state.step) == 6
    assert {"ce_loss", "kl_loss", "jac_loss", "jac_norm", "adv_accuracy"} <= set(history[0])
    assert [float(m["kl_weight"]) for m in history[:3]] == [0.0, 0.5, 1.0]  # 2 warm-up steps
    assert all(np.isfinite(float(m["loss"])) for m in history)
    assert float(history[-1]["ce_loss"]) < float(history[2]["ce_loss"])
    stats = jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))),
        jax.device_get(state.batch_stats),
        initial_stats,
    )
    assert min(jax.tree.leaves(stats)) > 0
