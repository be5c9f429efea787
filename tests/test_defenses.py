"""The defense core: terms over shared views, compositions of existing parts, warm-up, state."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from advjax import attacks, defenses, losses
from advjax.attacks import AttackResult
from advjax.data import load_dataset, train_batches
from advjax.defenses import Adversary, Defense, FromState, MovingAverage
from advjax.defenses.terms import CrossEntropy
from advjax.experiment import build_model, initial_state
from advjax.models import get_model, init_variables, make_model_fn
from advjax.sharding import make_mesh, replicate, shard_batch
from advjax.train.state import create_train_state
from advjax.train.step import sharded_train_step
from configs import mnist
from tests.stateful_config import ema_weighted_at


@pytest.fixture(scope="module")
def setup():
    model = get_model("mnist_cnn4")
    variables = init_variables(model, jax.random.key(0), (28, 28, 1))
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    batch = {"image": x, "label": jnp.arange(4)}
    keys = jax.random.split(jax.random.key(2), 4)
    return model, variables, batch, keys


def test_natural_is_clean_cross_entropy(setup):
    model, variables, batch, keys = setup
    loss, aux = defenses.natural()(model, variables, batch, keys)
    logits = make_model_fn(model)(variables, batch["image"])
    expected = jnp.mean(losses.cross_entropy(logits, batch["label"]))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert aux["batch_stats"] == {} and aux["statistics"] == {}
    assert {"clean_accuracy", "clean_loss"} <= set(aux["metrics"])


@dataclasses.dataclass(frozen=True)
class CountingAttack(attacks.Attack):
    """Wraps an attack and counts how often it is traced (Python side effect at trace time)."""

    attack: attacks.Attack
    calls: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    def run(self, model_fn, variables, x, y, key) -> AttackResult:
        self.calls.append(1)
        return self.attack.run(model_fn, variables, x, y, key)


def test_terms_share_one_adversary_and_sum_with_their_weights(setup):
    model, variables, batch, keys = setup
    pgd = CountingAttack(attacks.pgd(0.3, 0.05, 5, keep_best=False))
    both = Defense(
        (CrossEntropy("clean", weight=0.5, name="clean"), CrossEntropy("adv", weight=2.0)),
        (Adversary(pgd),),
        monitors=(defenses.terms.JacobianNorm("adv", name="jac_norm"),),
    )
    total, aux = both(model, variables, batch, keys)
    assert len(pgd.calls) == 1  # generated once, read by a term and a monitor
    clean, _ = defenses.natural()(model, variables, batch, keys)
    adv, _ = defenses.pgd_at(pgd.attack)(model, variables, batch, keys)
    assert float(adv) > float(clean)
    np.testing.assert_allclose(total, 0.5 * clean + 2.0 * adv, rtol=1e-6)
    assert {"clean_loss", "ce_loss", "jac_norm", "adv_accuracy"} <= set(aux["metrics"])
    np.testing.assert_allclose(aux["metrics"]["ce_loss"], adv, rtol=1e-6)


def test_eps_warmup_ramps_the_attack_budget(setup):
    model, variables, batch, keys = setup
    spec = dict(name="fast_at", attack=dict(name="fgsm_rs", eps=0.3), eps_warmup_epochs=2)
    defense = defenses.build(spec, steps_per_epoch=10)  # full eps from step 20 on
    model_fn = make_model_fn(model)

    @jax.jit
    def budget_used(step):
        attack = defense.attacks[0].scaled(defense.ramp(step))
        x_adv = attack(model_fn, variables, batch["image"], batch["label"], keys)
        return jnp.max(jnp.abs(x_adv - batch["image"]))

    used = [float(budget_used(jnp.int32(s))) for s in (0, 5, 20, 40)]
    np.testing.assert_allclose(used, [0.0, 0.075, 0.3, 0.3], atol=1e-6)
    # Step 0: no perturbation, so the adversarial CE is the clean CE.
    at_zero, _ = defense(model, variables, batch, keys, step=jnp.int32(0))
    clean, _ = defenses.natural()(model, variables, batch, keys)
    np.testing.assert_allclose(at_zero, clean, rtol=1e-6)


def test_unknown_hyperparameters_and_views_are_named():
    with pytest.raises(ValueError, match="'trades' has no hyperparameter 'lam'; valid: attack"):
        defenses.build(dict(name="trades", lam=1.0, attack=dict(name="fgsm_rs", eps=0.1)))
    with pytest.raises(ValueError, match="cannot be named 'clean'"):
        Adversary(attacks.fgsm(0.1), name="clean")
    with pytest.raises(ValueError, match="adversary names must be unique"):
        Defense((CrossEntropy(),), (Adversary(attacks.fgsm(0.1)), Adversary(attacks.fgsm(0.2))))
    with pytest.raises(ValueError, match="valid values: all, labeled"):
        CrossEntropy(rows="unlabeled")


# -- compositions: config variants made of existing parts only ---------------------------------

COMPOSITIONS = ("ave_at", "max_at", "flow_at", "rt_at", "at_plus", "srt_plus")


def _short(spec):
    """The spec with every attack cut to 1 step (tests: the composition, not the attacks)."""
    if isinstance(spec, dict):
        out = {k: _short(v) for k, v in spec.items()}
        if "name" in out and "steps" in out:
            out["steps"] = 1
        return out
    if isinstance(spec, list):
        return [_short(v) for v in spec]
    return spec


def _direct_loss(defense_name, defense, model, variables, x, y, keys):
    """The composition's loss from its definition, attacks called by hand with the keys the core
    documents (the first adversary gets the step's keys, the i-th ``fold_in(keys, 100 + i)``)."""
    model_fn = make_model_fn(model)  # mnist_cnn4 has no BatchNorm: training mode = inference
    predicted = jnp.argmax(model_fn(variables, x), -1)
    per_adversary = []
    for i, adversary in enumerate(defense.adversaries):
        k = keys if i == 0 else jax.vmap(jax.random.fold_in, (0, None))(keys, 100 + i)
        target = predicted if adversary.target == "predicted" else y
        x_adv = adversary.attack(model_fn, variables, x, target, k)
        per_adversary.append(losses.cross_entropy(model_fn(variables, x_adv), target))
    ce = jnp.stack(per_adversary)  # [adversaries, batch]
    if defense_name == "ave_at":
        return jnp.mean(jnp.mean(ce, axis=1))
    if defense_name == "max_at":
        return jnp.mean(jnp.max(ce, axis=0))
    if defense_name == "srt":  # every row labeled here
        return jnp.mean(losses.cross_entropy(model_fn(variables, x), y)) + 0.2 * jnp.mean(ce[0])
    return jnp.mean(ce[0])


@pytest.mark.parametrize("variant", COMPOSITIONS)
def test_composed_variants_train_and_match_their_definition(variant):
    config = mnist.get_config(variant)
    config.defense = _short(config.defense.to_dict())
    defense = defenses.build(config.defense)
    assert config.defense.name in defenses.DEFENSES and config.model.name == "mnist_cnn4"
    model = build_model(config)
    state, tx, schedule = initial_state(config, model, (28, 28, 1), 10, defense.init_state())
    state = jax.device_get(state)
    mesh = make_mesh(jax.devices()[:1])
    step_fn = sharded_train_step(model, defense, tx, schedule, mesh)
    x = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1), minval=0.1, maxval=0.9)
    y = jnp.arange(8) % 10
    batch = shard_batch({"image": np.asarray(x)[None], "label": np.asarray(y)[None]}, mesh)

    # The train step's keys for step 0 (advjax.train.step): example i gets fold_in(key_0, i),
    # the defense fold_in(., 2).
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 0)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(step_key, jnp.arange(8))
    keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 2)
    expected = jax.jit(lambda v: _direct_loss(config.defense.name, defense, model, v, x, y, keys))(
        state.variables
    )

    device_state = replicate(state, mesh)
    history = []
    for _ in range(3):
        device_state, metrics = step_fn(device_state, batch)
        history.append(float(metrics["loss"]))
    np.testing.assert_allclose(history[0], expected, rtol=1e-5)
    assert all(np.isfinite(history)) and int(device_state.step) == 3
    moved = jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))),
        jax.device_get(device_state.params),
        state.params,
    )
    assert max(jax.tree.leaves(moved)) > 0


# -- defense state --------------------------------------------------------------------------------


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(10)(x.reshape((x.shape[0], -1)))


def test_moving_average_state_matches_numpy_over_20_steps():
    """A toy stateful defense (``tests/stateful_config.py``): the clean CE weighted by the
    moving average of the adversarial CE. The state after each step, and the weight each step
    used, follow the NumPy recursion over the per-step (device-averaged) adversarial losses."""
    model = Linear()
    defense = ema_weighted_at(attacks.fgsm_rs(0.1), decay=0.8)
    assert defense.init_state() == {"adv": 0.0}
    ds = load_dataset("synthetic", "train", num_examples=128)
    variables = init_variables(model, jax.random.key(0), ds.image_shape)
    tx = optax.sgd(0.1)
    mesh = make_mesh(jax.devices()[:1])
    step_fn = sharded_train_step(model, defense, tx, optax.constant_schedule(0.1), mesh)
    state = replicate(
        create_train_state(variables, tx, jax.random.key(3), defense.init_state()), mesh
    )
    batches = train_batches(ds, 32, seed=0)
    adv_losses, weights, states = [], [], []
    for _ in range(20):
        state, metrics = step_fn(state, shard_batch(next(batches), mesh))
        adv_losses.append(float(metrics["adv_loss"]))
        weights.append(float(metrics["clean_weight"]))
        states.append(float(state.defense_state["adv"]))
    m, expected_states, expected_weights = 0.0, [], []
    for loss in adv_losses:
        expected_weights.append(m)
        m = 0.8 * m + 0.2 * loss
        expected_states.append(m)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(states, expected_states, rtol=1e-6)
    assert expected_states[-1] > 0.5  # the weight did move


def test_state_rule_and_weights_read_the_state(setup):
    model, variables, batch, keys = setup
    defense = ema_weighted_at(attacks.fgsm_rs(0.1))
    loss0, aux = defense(model, variables, batch, keys, state={"adv": jnp.float32(0.0)})
    loss2, _ = defense(model, variables, batch, keys, state={"adv": jnp.float32(2.0)})
    clean, _ = defenses.natural()(model, variables, batch, keys)
    np.testing.assert_allclose(loss2 - loss0, 2.0 * clean, rtol=1e-5)
    np.testing.assert_allclose(aux["statistics"]["adv"], aux["metrics"]["adv_loss"])
    assert defense.update_state({"adv": 1.0}, {"adv": 3.0}) == {"adv": pytest.approx(1.2)}
    with pytest.raises(ValueError, match="decay"):
        MovingAverage(("adv",), decay=1.0)
    assert FromState("adv", 2.0)(defenses.StepContext(0, 1.0, {"adv": 3.0})) == 6.0


# -- features and BatchNorm modes -----------------------------------------------------------------


class BNNet(nn.Module):
    """Dense -> BatchNorm -> tanh -> Dense, recording its hidden layer as ``penultimate``."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(16)(x.reshape((x.shape[0], -1)))
        h = jnp.tanh(nn.BatchNorm(use_running_average=not train, momentum=0.9)(h))
        self.sow("intermediates", "penultimate", h)
        return nn.Dense(10)(h)


@dataclasses.dataclass(frozen=True)
class FeatureDistance:
    """A latent-space term (what ADR builds on): ``mean ||z(x') - z(x)||^2`` of a named feature."""

    feature: str = "penultimate"
    weight: float = 1.0
    name: str = "latent"
    jacobian_views = ()
    reads_unlabeled_labels = False
    views = ("clean", "adv")

    @property
    def features(self):
        return {"clean": (self.feature,), "adv": (self.feature,)}

    def __call__(self, views):
        diff = views.features("adv", self.feature) - views.features("clean", self.feature)
        return jnp.mean(jnp.sum(diff**2, -1)), {}


def test_terms_read_named_features_and_adversaries_can_use_train_mode_batchnorm():
    from advjax.models import forward

    model = BNNet()
    variables = init_variables(model, jax.random.key(0), (4, 4, 1))
    x = jax.random.uniform(jax.random.key(1), (6, 4, 4, 1))
    batch = {"image": x, "label": jnp.arange(6)}
    keys = jax.random.split(jax.random.key(2), 6)
    attack = attacks.pgd(0.2, 0.05, 3, keep_best=False)
    spec = dict(name="pgd_at", attack=dict(name="pgd", eps=0.2, step_size=0.05, steps=3))
    spec["attack"]["keep_best"] = False
    for bn_mode, train in (("inference", False), ("train", True)):
        defense = defenses.build({**spec, "adversary_bn_mode": bn_mode})
        latent = Defense(
            (CrossEntropy("adv"), FeatureDistance()), defense.adversaries, name="latent"
        )
        loss, aux = jax.jit(lambda v, d=latent: d(model, v, batch, keys))(variables)
        # By hand: the adversary from the model in the given BatchNorm mode, then the training-mode
        # passes, clean first, the adversarial one on the clean pass's running statistics.
        x_adv = attack(make_model_fn(model, train=train), variables, x, batch["label"], keys)
        clean = forward(model, variables, x, train=True, features="penultimate")
        adv = forward(
            model,
            {**variables, "batch_stats": clean.batch_stats},
            x_adv,
            train=True,
            features="penultimate",
        )
        ce = jnp.mean(losses.cross_entropy(adv.logits, batch["label"]))
        dist = jnp.mean(
            jnp.sum((adv.features["penultimate"] - clean.features["penultimate"]) ** 2, -1)
        )
        np.testing.assert_allclose(loss, ce + dist, rtol=1e-5)
        np.testing.assert_allclose(aux["metrics"]["latent_loss"], dist, rtol=1e-5)
        if train:
            x_inference = attack(make_model_fn(model), variables, x, batch["label"], keys)
            assert float(jnp.max(jnp.abs(x_adv - x_inference))) > 1e-4  # the flag matters
    with pytest.raises(ValueError, match="valid values: inference, train"):
        defenses.build({**spec, "adversary_bn_mode": "eval"})
