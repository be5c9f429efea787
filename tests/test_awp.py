"""AWP (Wu et al. 2020; spec thesis_ch5_6.md Sec. 5.5): the perturbation's bound and closed form
(``v_l = ||w_l|| g_l / ||g_l||``), the gradient taken at ``w + gamma v`` and applied to ``w``,
``gamma = 0`` and the warm-up as the plain defense, UDR-AWP-AT's hard-ball limit, one
compilation of the train step, ensembles, and the spec path with its errors."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from advjax import attacks, defenses, losses
from advjax.defenses import AWP, awp_at, with_awp
from advjax.defenses.awp import weight_direction
from advjax.defenses.core import StepContext, Views, for_model
from advjax.defenses.terms import CrossEntropy
from advjax.defenses.udr_state import LAMBDA
from advjax.models import Ensemble, forward, init_variables
from advjax.train import create_train_state, make_mesh, replicate, shard_batch
from advjax.train.step import train_step

EPS, ETA, GAMMA = 0.1, 0.02, 0.05
PGD = {"name": "pgd", "eps": EPS, "step_size": ETA, "steps": 2, "keep_best": False}
UDR = {"name": "udr", "eps": EPS, "step_size": ETA, "steps": 2}


class _Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        del train
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


class _ConvBN(nn.Module):
    """Conv (kernel, bias) -> BatchNorm (scale, bias) -> Dense (kernel, bias)."""

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.Conv(4, (3, 3))(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        return nn.Dense(3)(nn.relu(h).reshape(x.shape[0], -1))


class _DeadBranch(nn.Module):
    """A layer whose kernel gets an exactly zero gradient (``g_l = 0``)."""

    @nn.compact
    def __call__(self, x, train=False):
        del train
        flat = x.reshape(x.shape[0], -1)
        return nn.Dense(3)(flat) + 0.0 * nn.Dense(3, name="dead")(flat)


def _data(batch=8):
    x = jax.random.uniform(jax.random.key(1), (batch, 4, 4, 1))
    return {"image": x, "label": jnp.arange(batch) % 3}, jax.random.split(jax.random.key(2), batch)


def _setup(model_cls=_Linear):
    model = model_cls()
    variables = jax.jit(lambda key: init_variables(model, key, (4, 4, 1)))(jax.random.key(0))
    batch, keys = _data()
    return model, variables, batch, keys


def _perturbation(defense, model, variables, batch, keys):
    """(the step's inputs, ``delta = gamma v``, metrics) as ``Defense.__call__`` computes them
    (jitted: a tiny model's eager passes cost more than their compilation)."""

    @jax.jit
    def run(variables):
        state = defense.init_state()
        views = Views(defense, model, variables, batch, keys, 1.0, state, 0)
        context = StepContext(step=0, ramp=1.0, state=state)
        delta, metrics = defense.weight_perturbation(model, variables, views, context)
        return views.inputs, delta, metrics

    return run(variables)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jit_loss_and_grads(defense, model, variables, batch, keys, step, state):
    def loss_fn(p):
        return defense(model, {**variables, "params": p}, batch, keys, step=step, state=state)

    return jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])


def _loss_and_grads(defense, model, variables, batch, keys, step=0, state=None):
    """``(loss, aux), grads`` of ``defense`` with respect to the parameters (jitted, the step
    traced: one compilation per defense)."""
    return _jit_loss_and_grads(defense, model, variables, batch, keys, jnp.asarray(step), state)


@pytest.fixture(scope="module")
def conv():
    """AWP-AT on a conv + BatchNorm model: its perturbation, loss and gradient (shared)."""
    model, variables, batch, keys = _setup(_ConvBN)
    defense = defenses.build({"name": "awp_at", "attack": PGD, "gamma": GAMMA})
    inputs, delta, perturbation_metrics = _perturbation(defense, model, variables, batch, keys)
    (loss, aux), grads = _loss_and_grads(defense, model, variables, batch, keys)
    return dict(
        model=model,
        variables=variables,
        batch=batch,
        keys=keys,
        defense=defense,
        inputs=inputs,
        delta=delta,
        perturbation_metrics=perturbation_metrics,
        loss=loss,
        aux=aux,
        grads=grads,
    )


def _norm(a):
    return float(jnp.sqrt(jnp.sum(jnp.square(a))))


def _plus(params, delta):
    return jax.tree.map(jnp.add, params, delta)


def test_perturbation_has_relative_size_gamma_and_leaves_biases_and_batchnorm(conv):
    variables, delta, metrics = conv["variables"], conv["delta"], conv["perturbation_metrics"]
    flat_w = dict(jax.tree_util.tree_flatten_with_path(variables["params"])[0])
    flat_d = dict(jax.tree_util.tree_flatten_with_path(delta)[0])
    perturbed = []
    for path, w in flat_w.items():
        d = flat_d[path]
        assert d.shape == w.shape and bool(jnp.all(jnp.isfinite(d)))
        if w.ndim > 1:  # conv and dense kernels: ||gamma v_l|| = gamma ||w_l||
            assert _norm(d) == pytest.approx(GAMMA * _norm(w), rel=1e-5)
            perturbed.append(jax.tree_util.keystr(path))
        else:  # biases, BatchNorm scale and bias
            assert not bool(jnp.any(d))
    assert sorted(perturbed) == ["['Conv_0']['kernel']", "['Dense_0']['kernel']"]
    assert float(metrics["awp_relative_norm"]) == pytest.approx(GAMMA, rel=1e-5)
    assert np.isfinite(float(metrics["awp_objective"]))


def test_perturbation_is_the_closed_form_of_one_proxy_ascent_step():
    # Linear model: v = ||w|| g / ||g|| with g = grad_w CE(f_w(x^a), y), computed by hand, and
    # equally the normalised difference after one SGD step (lr 0.01) ascending the CE.
    model, variables, batch, keys = _setup()
    defense = awp_at(attacks.pgd(EPS, ETA, 2), gamma=GAMMA)
    inputs, delta, metrics = _perturbation(defense, model, variables, batch, keys)
    x_adv, y, params = inputs["adv"], batch["label"], variables["params"]

    def ce(p):
        return jnp.mean(losses.cross_entropy(model.apply({"params": p}, x_adv), y))

    g = jax.grad(ce)(params)
    w, g_w = params["Dense_0"]["kernel"], g["Dense_0"]["kernel"]
    expected = jnp.linalg.norm(w) * g_w / jnp.linalg.norm(g_w)
    np.testing.assert_allclose(delta["Dense_0"]["kernel"], GAMMA * expected, rtol=1e-5, atol=1e-8)
    proxy = w + 0.01 * g_w  # one plain SGD step maximising the CE: the rate cancels
    from_proxy = jnp.linalg.norm(w) * (proxy - w) / jnp.linalg.norm(proxy - w)
    np.testing.assert_allclose(delta["Dense_0"]["kernel"], GAMMA * from_proxy, rtol=1e-3, atol=1e-6)
    assert not bool(jnp.any(delta["Dense_0"]["bias"]))
    assert float(metrics["awp_objective"]) == pytest.approx(float(ce(params)), rel=1e-5)
    # The ascent direction: the CE grows at w + gamma v.
    assert float(ce(_plus(params, delta))) > float(ce(params))


def test_zero_gradient_gives_no_perturbation_and_no_nan():
    model, variables, batch, keys = _setup(_DeadBranch)
    defense = awp_at(attacks.pgd(EPS, ETA, 2), gamma=GAMMA)
    _, delta, metrics = _perturbation(defense, model, variables, batch, keys)
    assert not bool(jnp.any(delta["dead"]["kernel"]))
    kernel, w = delta["Dense_0"]["kernel"], variables["params"]["Dense_0"]["kernel"]
    assert _norm(kernel) == pytest.approx(GAMMA * _norm(w), rel=1e-5)
    relative = float(metrics["awp_relative_norm"])
    assert np.isfinite(relative) and 0.0 < relative < GAMMA
    # The direction itself: 0 for g = 0, ||w|| for a gradient too small to square in float32.
    w = jnp.arange(1.0, 7.0).reshape(2, 3)
    assert not bool(jnp.any(weight_direction(w, jnp.zeros_like(w))))
    tiny = weight_direction(w, jnp.full_like(w, 1e-30))
    assert _norm(tiny) == pytest.approx(_norm(w), rel=1e-6)


def test_gradient_is_taken_at_the_perturbed_weights_and_not_through_the_perturbation(conv):
    model, variables, delta = conv["model"], conv["variables"], conv["delta"]
    x_adv, y, params = conv["inputs"]["adv"], conv["batch"]["label"], variables["params"]
    loss, aux, grads = conv["loss"], conv["aux"], conv["grads"]

    def ce_at(p):  # L(f_p(x^a), y) with x^a fixed, training mode
        out = forward(model, {**variables, "params": p}, x_adv, train=True)
        return jnp.mean(losses.cross_entropy(out.logits, y)), out.batch_stats

    ce_and_grad = jax.jit(jax.value_and_grad(ce_at, has_aux=True))
    (expected, batch_stats), expected_grads = ce_and_grad(_plus(params, delta))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    # (atol: the conv bias before BatchNorm has a zero gradient up to rounding)
    chex.assert_trees_all_close(grads, expected_grads, rtol=1e-5, atol=1e-6)
    # The running statistics: the loss pass's at w + gamma v (the proxy's are discarded).
    chex.assert_trees_all_close(aux["batch_stats"], batch_stats, rtol=1e-6, atol=1e-7)
    _, unperturbed = ce_and_grad(params)
    leaves = zip(jax.tree.leaves(grads), jax.tree.leaves(unperturbed), strict=True)
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in leaves) > 1e-4
    assert float(aux["metrics"]["awp_relative_norm"]) == pytest.approx(GAMMA, rel=1e-5)
    assert {"adv_accuracy", "adv_loss", "awp_objective"} <= set(aux["metrics"])


def test_gamma_zero_and_the_warmup_are_the_plain_defense_bit_for_bit(conv):
    model, variables, batch, keys = (conv[k] for k in ("model", "variables", "batch", "keys"))
    plain = defenses.pgd_at(attacks.pgd(EPS, ETA, 2))
    (loss, aux), grads = _loss_and_grads(plain, model, variables, batch, keys)
    zero = with_awp(plain, gamma=0.0)
    warm = with_awp(plain, gamma=GAMMA, warmup_steps=3)
    for defense, step in [(zero, 0), (warm, 0), (warm, 2)]:
        (got, got_aux), got_grads = _loss_and_grads(defense, model, variables, batch, keys, step)
        assert float(got) == float(loss)
        chex.assert_trees_all_equal(got_grads, grads)
        chex.assert_trees_all_equal(got_aux["batch_stats"], aux["batch_stats"])
        assert float(got_aux["metrics"]["awp_relative_norm"]) == 0.0
    (after, after_aux), _ = _loss_and_grads(warm, model, variables, batch, keys, 3)
    assert float(after) == pytest.approx(float(conv["loss"]), rel=1e-6)  # awp_at after warm-up
    assert float(after) > float(loss)
    assert float(after_aux["metrics"]["awp_relative_norm"]) == pytest.approx(GAMMA, rel=1e-5)


def test_udr_awp_at_in_the_hard_ball_limit_equals_awp_at(conv):
    # Theorem 1: lambda = 1 and tau = eta make the UDR attack PGD, so the perturbation, the loss
    # and its gradient are AWP-AT's.
    model, variables, batch, keys = (conv[k] for k in ("model", "variables", "batch", "keys"))
    ours = defenses.build({"name": "udr_awp_at", "attack": UDR, "gamma": GAMMA})
    theirs = conv["defense"]
    assert ours.name == "udr_awp_at" and ours.weight_perturbation == theirs.weight_perturbation
    state = ours.init_state()
    assert float(state[LAMBDA]) == 1.0

    (loss, aux), grads = _loss_and_grads(ours, model, variables, batch, keys, state=state)
    expected, expected_aux, expected_grads = conv["loss"], conv["aux"], conv["grads"]
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    chex.assert_trees_all_close(grads, expected_grads, rtol=1e-5, atol=1e-7)
    for name in ("awp_relative_norm", "awp_objective"):
        assert float(aux["metrics"][name]) == pytest.approx(
            float(expected_aux["metrics"][name]), rel=1e-6
        )
    assert float(aux["metrics"]["udr_lambda"]) == 1.0


def test_train_step_compiles_once_and_logs_the_perturbation():
    model, variables, batch, _ = _setup(_ConvBN)
    defense = defenses.build(
        {"name": "udr_awp_at", "attack": UDR, "gamma": GAMMA, "lambda_period": 1}
    )
    tx = optax.sgd(0.1)
    state = create_train_state(variables, tx, jax.random.key(3), defense.init_state())
    traced = chex.assert_max_traces(n=1)(
        lambda s, b: train_step(
            s, b, model=model, defense=defense, tx=tx, schedule=optax.constant_schedule(0.1)
        )
    )
    mesh = make_mesh()
    step = jax.jit(jax.shard_map(traced, mesh=mesh, in_specs=(jax.P(), jax.P("batch")),
                                 out_specs=jax.P()))  # fmt: skip
    state = replicate(state, mesh)
    devices = len(mesh.devices.flat)
    local = {k: np.asarray(v).reshape(devices, -1, *v.shape[1:]) for k, v in batch.items()}
    initial = jax.device_get(state.params)
    lambdas = []
    for _ in range(3):
        state, metrics = step(state, shard_batch(local, mesh))
        assert float(metrics["awp_relative_norm"]) == pytest.approx(GAMMA, rel=1e-4)
        assert np.isfinite(float(metrics["loss"])) and float(metrics["awp_objective"]) > 0
        lambdas.append(float(metrics["udr_lambda"]))
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), initial, state.params)
    assert all(np.isfinite(v) for v in jax.tree.leaves(moved)) and max(jax.tree.leaves(moved)) > 0
    assert int(state.step) == 3 and len(set(lambdas)) > 1


_TWO_DEVICES = """
from advjax import host

host.configure()
import json

import flax.linen as nn
import jax
import numpy as np
import optax

from advjax import attacks, defenses
from advjax.models import init_variables
from advjax.train import create_train_state, make_mesh, replicate, shard_batch
from advjax.train.step import sharded_train_step


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


model = Linear()
variables = jax.device_get(init_variables(model, jax.random.key(0), (4, 4, 1)))
x = np.asarray(jax.random.uniform(jax.random.key(1), (8, 4, 4, 1)))
batch = {"image": x, "label": np.arange(8) % 3}
defense = defenses.awp_at(attacks.pgd(0.1, 0.02, 2), gamma=0.05)
tx = optax.sgd(0.1)
params, norms = [], []
for devices in (jax.devices()[:1], jax.devices()):
    mesh = make_mesh(devices)
    step = sharded_train_step(model, defense, tx, optax.constant_schedule(0.1), mesh)
    state = replicate(create_train_state(variables, tx, jax.random.key(3)), mesh)
    local = {k: v.reshape(len(devices), -1, *v.shape[1:]) for k, v in batch.items()}
    state, metrics = step(state, shard_batch(local, mesh))
    params.append(jax.device_get(state.params))
    norms.append(float(metrics["awp_relative_norm"]))
diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), *params)
print(json.dumps({"devices": jax.device_count(), "max_param_diff": max(jax.tree.leaves(diffs)),
                  "norms": norms}))
"""


def test_two_devices_perturb_by_the_global_batch_v_as_one_device():
    # The proxy gradient is pmean-ed: every device perturbs by the global batch's v, so a step
    # on 2 devices equals the step on 1 (up to float summation order).
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=str(repo), XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run(
        [sys.executable, "-c", _TWO_DEVICES], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2
    assert result["max_param_diff"] < 1e-6, result
    assert result["norms"] == pytest.approx([GAMMA, GAMMA], rel=1e-5), result


def test_any_defense_gets_awp_and_ensemble_members_are_perturbed_on_their_own():
    model, variables, batch, keys = _setup()
    pgd = attacks.pgd(EPS, ETA, 2)
    kl = attacks.pgd(EPS, ETA, 2, loss="kl_from_reference")
    # TRADES with Wu et al.'s AWP-TRADES objective, its own loss (both views, a KL adversary).
    trades = defenses.trades(kl, monitor_jacobian=False)
    defense = with_awp(trades, GAMMA, objective="loss")
    assert defense.name == "awp_trades" and defense.weight_perturbation.terms == trades.terms
    (loss, aux), grads = _loss_and_grads(defense, model, variables, batch, keys)
    assert np.isfinite(float(loss)) and float(aux["metrics"]["awp_objective"]) > 0
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(aux["metrics"]["awp_relative_norm"]) == pytest.approx(GAMMA, rel=1e-5)
    assert with_awp(defenses.mart(pgd)).weight_perturbation.terms == (
        CrossEntropy("adv", name="awp"),
    )
    # IndependentMembers: each member trains with its own perturbation.
    ensemble = Ensemble(_Linear(), 2)
    stacked = init_variables(ensemble, jax.random.key(5), (4, 4, 1))
    defense = awp_at(pgd, gamma=GAMMA)
    independent = for_model(defense, ensemble)
    loss, aux = jax.jit(lambda v: independent(ensemble, v, batch, keys))(stacked)
    assert np.isfinite(float(loss))
    assert float(aux["metrics"]["awp_relative_norm"]) == pytest.approx(GAMMA, rel=1e-5)
    members = stacked["params"]["members"]
    # A coupled ensemble: one v per member over its own slice; the stacked biases untouched.
    coupled = dataclasses.replace(defense, couples_members=True)
    _, delta, _ = _perturbation(coupled, ensemble, stacked, batch, keys)
    kernel, w = delta["members"]["Dense_0"]["kernel"], members["Dense_0"]["kernel"]
    for m in range(2):
        assert _norm(kernel[m]) == pytest.approx(GAMMA * _norm(w[m]), rel=1e-5)
    assert not bool(jnp.any(delta["members"]["Dense_0"]["bias"]))


def test_spec_path_and_errors():
    defense = defenses.build(
        {"name": "awp_at", "attack": PGD, "gamma": 0.01, "awp_warmup_epochs": 2},
        steps_per_epoch=5,
    )
    assert defense.name == "awp_at" and defense.state_rule is None
    assert defense.weight_perturbation == AWP(0.01, 10, (CrossEntropy("adv", name="awp"),))
    assert defenses.DEFENSES["awp_at"] is awp_at
    default = defenses.build({"name": "udr_awp_at", "attack": UDR})
    assert (
        default.weight_perturbation.gamma == 0.01 and default.weight_perturbation.warmup_steps == 0
    )
    with pytest.raises(ValueError, match="no hyperparameter 'gama'"):
        defenses.build({"name": "awp_at", "attack": PGD, "gama": 0.01})
    for bad in (-0.01, float("nan"), "0.01", True):
        with pytest.raises(ValueError, match="gamma must be"):
            defenses.build({"name": "awp_at", "attack": PGD, "gamma": bad})
    with pytest.raises(ValueError, match="warmup_steps must be an integer"):
        awp_at(attacks.pgd(EPS, ETA, 2), awp_warmup_steps=-1)
    with pytest.raises(ValueError, match="UDR attack"):
        defenses.build({"name": "udr_awp_at", "attack": PGD})
    with pytest.raises(ValueError, match="already perturbs"):
        with_awp(defense)
    with pytest.raises(ValueError, match="unknown AWP objective"):
        with_awp(defenses.pgd_at(attacks.pgd(EPS, ETA, 2)), objective="los")
    with pytest.raises(ValueError, match="reads view 'other'"):
        with_awp(defenses.pgd_at(attacks.pgd(EPS, ETA, 2)), objective=(CrossEntropy("other"),))
    # The objective's labels count for the unlabeled-batch check (SRT reads none of them).
    srt = defenses.srt(attacks.pgd(EPS, ETA, 2))
    assert srt.supports_unlabeled and not with_awp(srt).supports_unlabeled
    assert with_awp(srt, objective="loss").supports_unlabeled
