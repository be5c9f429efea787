"""Training-loop features and semi-supervised robust training.

ATLAS App. B validation-guided schedule (plateau rule, its optimiser scale, exact resume, early
stop), ATLAS App. E catastrophic-overfitting monitor (detector, random-projection Jacobian
estimate), step timing, the labeled/unlabeled split of SRT Sec. 4, and the RT / SRT / fast SRT
objectives (SRT Eq. 6, 9-11, App. J).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from advjax import attacks, defenses, models
from advjax.data import (
    UNLABELED,
    Dataset,
    labeled_part,
    labeled_per_batch,
    train_batches,
    with_labeled_subset,
)
from advjax.experiment import load_splits, train_and_evaluate
from advjax.sharding import make_mesh, masked_mean, replicate, shard_batch
from advjax.train import monitor
from advjax.train.checkpoint import Checkpointer
from advjax.train.metrics import read_metrics
from advjax.train.optim import make_optimizer, make_schedule
from advjax.train.schedules import Plateau, initial_plateau_state, plateau_update
from advjax.train.state import create_train_state
from advjax.train.step import sharded_train_step
from configs import mnist
from tests.train_configs import tiny_config

# -- validation-guided schedule (ATLAS App. B) ---------------------------------------------------


def _trace(rule, metrics):
    state, out = initial_plateau_state(), []
    for m in metrics:
        state = plateau_update(state, m, rule)
        out.append(
            (
                float(state.lr_scale),
                float(state.best),
                int(state.since_best),
                int(state.wait),
                int(state.reductions),
                rule.should_stop(state),
            )
        )
    return out


def test_plateau_rule_step_by_step():
    rule = Plateau(patience=2, factor=5.0, stop_patience=5)
    metrics = [0.1, 0.2, 0.2, 0.15, 0.2, 0.19, 0.25, 0.1, 0.1, 0.1, 0.1, 0.1]
    f = np.float32
    expected = [
        (1.0, f(0.1), 0, 0, 0, False),  # the first value always improves on -inf
        (1.0, f(0.2), 0, 0, 0, False),
        (1.0, f(0.2), 1, 1, 0, False),  # equal is not an improvement
        (0.2, f(0.2), 2, 0, 1, False),  # 2 without improvement: divide by 5, wait restarts
        (0.2, f(0.2), 3, 1, 1, False),
        (0.04, f(0.2), 4, 0, 2, False),
        (0.04, f(0.25), 0, 0, 2, False),  # improvement: counters reset, LR stays reduced
        (0.04, f(0.25), 1, 1, 2, False),
        (0.008, f(0.25), 2, 0, 3, False),
        (0.008, f(0.25), 3, 1, 3, False),
        (0.0016, f(0.25), 4, 0, 4, False),
        (0.0016, f(0.25), 5, 1, 4, True),  # 5 evaluations since the best: stop
    ]
    got = _trace(rule, metrics)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g[:2], e[:2], rtol=1e-6)
        assert g[2:] == e[2:]


def test_plateau_defaults_are_atlas_app_b():
    # "decrease the learning rate by five" after 2 epochs without improvement (B.1: plt2), "if
    # the robust accuracy does not improve for ten consecutive epochs, we terminate".
    got = _trace(Plateau(), [0.5] + [0.4] * 10)
    assert [g[4] for g in got] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert [g[5] for g in got] == [False] * 10 + [True]
    np.testing.assert_allclose(got[-1][0], 5.0**-5, rtol=1e-6)
    capped = _trace(Plateau(patience=1, max_reductions=2, stop_patience=0), [0.5] + [0.1] * 6)
    assert [g[4] for g in capped] == [0, 1, 2, 2, 2, 2, 2] and not any(g[5] for g in capped)
    delta = _trace(Plateau(patience=1, min_delta=0.05), [0.5, 0.54, 0.56])
    assert [g[2] for g in delta] == [0, 1, 0] and delta[-1][1] == pytest.approx(0.56)


def test_plateau_settings_are_validated():
    for bad in (dict(patience=0), dict(factor=1.0), dict(stop_patience=-1), dict(min_delta=-1)):
        with pytest.raises(ValueError, match="plateau"):
            Plateau(**bad)
    with pytest.raises(ValueError, match="unknown plateau settings.*valid: enabled, metric"):
        Plateau.from_config({"patiense": 3})
    assert Plateau.from_config({"patience": 3, "metric": "", "enabled": True}).patience == 3
    with pytest.raises(ValueError, match="finite"):
        plateau_update(initial_plateau_state(), float("nan"))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_plateau_scale_multiplies_the_learning_rate(optimizer):
    """The train step multiplies the optimiser's updates by ``schedule_state.lr_scale``."""
    cfg = ml_collections.ConfigDict(
        dict(
            optimizer=optimizer,
            learning_rate=0.1,
            schedule="constant",
            epochs=1,
            momentum=0.9,
            weight_decay=1e-2,
        )
    )
    tx, schedule = make_optimizer(cfg, 10)
    model = Linear()
    variables = models.init_variables(model, jax.random.key(0), (8, 8, 1))
    mesh = make_mesh(jax.devices()[:1])
    step_fn = sharded_train_step(model, defenses.natural(), tx, schedule, mesh)
    batch = shard_batch(
        {"image": np.full((1, 4, 8, 8, 1), 0.5, np.float32), "label": np.arange(4)[None]}, mesh
    )
    params = {}
    for scale in (1.0, 0.2):
        plateau = initial_plateau_state()._replace(lr_scale=np.float32(scale))
        state = create_train_state(variables, tx, jax.random.key(1), schedule_state=plateau)
        state, metrics = step_fn(replicate(jax.device_get(state), mesh), batch)
        params[scale] = jax.device_get(state.params)
        assert float(metrics["learning_rate"]) == pytest.approx(0.1 * scale)
    moved = {
        scale: jax.tree.map(lambda a, b: a - b, params[scale], variables["params"])
        for scale in params
    }
    for u, p in zip(jax.tree.leaves(moved[0.2]), jax.tree.leaves(moved[1.0]), strict=True):
        np.testing.assert_allclose(u, 0.2 * p, rtol=2e-5, atol=1e-7)
    assert not create_train_state(variables, tx, jax.random.key(1)).schedule_state


# -- catastrophic-overfitting monitor (ATLAS App. E) ---------------------------------------------


def test_overfitting_detector():
    det = monitor.OverfitDetector(drop=0.1, jac_factor=10.0)
    state, flags, ratios = monitor.OverfitState(), [], []
    for robust, jac in [(0.4, 1.0), (0.45, 2.0), (0.36, 2.5), (0.30, 3.0), (0.44, 40.0)]:
        state, m = monitor.co_update(state, robust, jac, det)
        flags.append(m["catastrophic_overfitting"])
        ratios.append(m.get("co_jac_ratio"))
    # 0.09 below the best is not "more than 0.1"; 0.15 is; a x13 Jacobian jump is.
    assert flags == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert ratios[0] is None and ratios[1:] == pytest.approx([2.0, 1.25, 1.2, 40.0 / 3.0])
    assert state.best_robust == pytest.approx(0.45) and state.last_jac == 40.0
    off = monitor.OverfitDetector(drop=0.0, jac_factor=0.0)
    state, _ = monitor.co_update(monitor.OverfitState(), 0.9, 1.0, off)
    state, m = monitor.co_update(state, 0.0, 1e6, off)
    assert m["catastrophic_overfitting"] == 0.0 and m["co_robust_drop"] == pytest.approx(0.9)
    _, m = monitor.co_update(monitor.OverfitState(0.5, np.nan, False), 0.2, None, det)
    assert m["catastrophic_overfitting"] == 1.0 and "co_jac_ratio" not in m  # accuracy alone
    with pytest.raises(ValueError, match="co_jac_factor"):
        monitor.OverfitDetector(jac_factor=0.5)


def test_random_projection_jacobian_estimate_is_unbiased(linear_model):
    # logits = vec(x) W + b: J = W^T for every x, ||J||_F^2 = ||W||_F^2.
    model_fn, variables = linear_model
    exact = float(jnp.sum(variables["w"] ** 2))
    x = jnp.full((1000, 8, 8, 1), 0.5)
    keys = jax.random.split(jax.random.key(3), x.shape[0])
    estimate = jax.jit(monitor.jacobian_norm_sq, static_argnums=0)
    per_example = estimate(model_fn, variables, x, keys)
    assert per_example.shape == (1000,)
    # Each estimate is K ||W v||^2 with |v| = 1: between K s_min^2 and K s_max^2.
    s = np.linalg.svd(np.asarray(variables["w"]), compute_uv=False)
    assert np.all(per_example <= 10 * s.max() ** 2 * (1 + 1e-5))
    assert np.all(per_example >= 10 * s.min() ** 2 * (1 - 1e-5))
    np.testing.assert_allclose(float(jnp.mean(per_example)), exact, rtol=0.05)
    one_key = monitor.jacobian_norm_sq(model_fn, variables, x[:5], jax.random.key(0))
    assert one_key.shape == (5,)


def test_step_timer_counts_only_timed_steps(monkeypatch):
    clock = iter([10.0, 13.0, 20.0, 22.0, 22.0, 25.0, 25.0])
    monkeypatch.setattr(monitor.time, "perf_counter", lambda: next(clock))
    timer = monitor.StepTimer()
    timer.start()  # 10: after the compiling first step
    timer.step(), timer.step()
    timer.pause()  # 13: 3 s for 2 steps, then validation (not timed)
    timer.start()  # 20
    timer.step()
    assert timer.read() == pytest.approx((3.0 + 2.0) / 3)  # 22
    assert timer.read() is None  # no step since


def test_one_warmup_ramp_for_every_defense():
    ramped = defenses.pgd_at(attacks.fgsm(0.1), eps_warmup_steps=10)
    assert [float(ramped.ramp(s)) for s in (0, 5, 10, 30)] == [0.0, 0.5, 1.0, 1.0]
    assert defenses.natural().ramp(0) == 1.0


# -- labeled / unlabeled data (SRT Sec. 4) --------------------------------------------------------


def _ids_dataset(n: int) -> Dataset:
    """Image i holds i (as two uint8 pixels), label i % 10: batches reveal their examples."""
    images = np.stack([np.full((2, 1, 1), 0, np.uint8) for _ in range(n)])
    images[:, 0, 0, 0], images[:, 1, 0, 0] = np.arange(n) // 256, np.arange(n) % 256
    return Dataset(images, (np.arange(n) % 10).astype(np.int32), 10, "ids")


def _ids(batch) -> np.ndarray:
    pixels = np.rint(batch["image"] * 255).astype(int).reshape(-1, 2)
    return pixels[:, 0] * 256 + pixels[:, 1]


def test_labeled_subset_is_seeded_and_exact():
    ds = _ids_dataset(100)
    a = with_labeled_subset(ds, 30, seed=1)
    assert a.num_labeled == 30 and a.labeled.dtype == bool and len(a) == 100
    np.testing.assert_array_equal(a.labeled, with_labeled_subset(ds, 30, seed=1).labeled)
    assert not np.array_equal(a.labeled, with_labeled_subset(ds, 30, seed=2).labeled)
    np.testing.assert_array_equal(a.labels, ds.labels)  # the dataset keeps the true labels
    assert with_labeled_subset(ds, 0, seed=1) is ds and with_labeled_subset(ds, 100, 1) is ds
    assert a.take(np.arange(10)).labeled.shape == (10,) and "labeled=30" in repr(a)
    with pytest.raises(ValueError, match=r"num_labeled must be an integer in \[0, 100\]"):
        with_labeled_subset(ds, 101, seed=1)
    with pytest.raises(ValueError, match="bool mask"):
        Dataset(ds.images, ds.labels, 10, "x", labeled=np.ones(3, bool))


def test_stratified_batches_mix_in_proportion_hide_labels_and_resume():
    ds = with_labeled_subset(_ids_dataset(100), 30, seed=0)
    # m = 16: 16 * 30/100 = 4.8 -> 5 labeled, 11 unlabeled per batch; 30 // 5 = 70 // 11 = 6
    # batches per pass over either set, and 100 // 16 = 6 steps an epoch.
    assert labeled_per_batch(30, 100, 16) == 5
    kw = dict(global_batch_size=16, seed=3, process_index=0, process_count=1, local_device_count=2)
    stream = [next(it) for it in [train_batches(ds, **kw)] for _ in range(14)]
    for b in stream:
        assert b["labeled"].shape == (2, 8) and b["labeled"].dtype == bool
        assert b["labeled"].sum() == 5  # every batch: m |D_L| / |D| (rounded), SRT Sec. 4
        ids, labeled = _ids(b), b["labeled"].reshape(-1)
        np.testing.assert_array_equal(labeled, ds.labeled[ids])
        labels = b["label"].reshape(-1)
        np.testing.assert_array_equal(labels[labeled], ds.labels[ids[labeled]])
        assert np.all(labels[~labeled] == UNLABELED)
    for epoch in range(2):  # within an epoch no example repeats
        ids = np.concatenate([_ids(b) for b in stream[6 * epoch : 6 * epoch + 6]])
        assert len(set(ids.tolist())) == 96
    assert not np.array_equal(_ids(stream[0]), _ids(stream[6]))  # epochs reshuffle
    assert stream[0]["labeled"].reshape(-1)[:5].sum() < 5  # positions mixed, not sorted
    for k in (1, 6, 9):  # resume mid-epoch and at an epoch boundary
        resumed = train_batches(ds, start_step=k, **kw)
        for b in stream[k:]:
            np.testing.assert_array_equal(_ids(b), _ids(next(resumed)))
    halves = [
        next(train_batches(ds, 16, 3, process_index=p, process_count=2, local_device_count=2))
        for p in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate([_ids(h) for h in halves]), _ids(stream[0]))
    np.testing.assert_array_equal(
        np.concatenate([h["labeled"].reshape(-1) for h in halves]), stream[0]["labeled"].ravel()
    )
    plain = next(train_batches(_ids_dataset(100), **kw))
    assert "labeled" not in plain  # all labeled: the batches are as before


def test_a_small_labeled_set_cycles_on_its_own():
    ds = with_labeled_subset(_ids_dataset(100), 3, seed=0)  # 16 * 3/100 rounds to 0: 1 labeled
    kw = dict(global_batch_size=16, seed=1, process_index=0, process_count=1, local_device_count=1)
    batches = [next(it) for it in [train_batches(ds, **kw)] for _ in range(6)]
    labeled_ids = [_ids(b)[b["labeled"].ravel()] for b in batches]
    assert all(len(ids) == 1 for ids in labeled_ids)
    lab = set(np.flatnonzero(ds.labeled).tolist())
    for cycle in range(2):  # each pass over the 3 labeled examples takes 3 steps
        assert set(np.concatenate(labeled_ids[3 * cycle : 3 * cycle + 3]).tolist()) == lab
    unlabeled = np.concatenate([_ids(b)[~b["labeled"].ravel()] for b in batches])
    assert len(set(unlabeled.tolist())) == 90  # 97 // 15 = 6 batches per pass: no repeat


# -- RT / SRT objectives (SRT Eq. 6, 9-11) -------------------------------------------------------


class Linear(nn.Module):
    """Softmax regression as a Flax module (``linear_model_fn`` of conftest)."""

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def linear_setup():
    model = Linear()
    rng = np.random.default_rng(0)
    variables = {
        "params": {
            "Dense_0": {
                "kernel": jnp.asarray(rng.normal(0, 0.5, (64, 10)), jnp.float32),
                "bias": jnp.asarray(rng.normal(0, 0.1, 10), jnp.float32),
            }
        }
    }
    x = jnp.asarray(rng.uniform(0.1, 0.9, (8, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 8), jnp.int32)
    labeled = jnp.array([True, False, True, True, False, False, True, False])
    keys = jax.random.split(jax.random.key(2), 8)
    return model, variables, {"image": x, "label": y, "labeled": labeled}, keys


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_srt_objective_matches_numpy_on_a_linear_model(linear_setup):
    model, variables, batch, keys = linear_setup
    eps, lam = 0.1, 0.7
    w = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)
    b = np.asarray(variables["params"]["Dense_0"]["bias"], np.float64)
    x = np.asarray(batch["image"], np.float64).reshape(8, -1)
    y, labeled = np.asarray(batch["label"]), np.asarray(batch["labeled"])
    z = x @ w + b
    c = z.argmax(-1)  # C(x): the current model's prediction
    # FGSM on CE(f(x'), C(x)): d CE / dx = W (softmax(z) - onehot(c)).
    grad = (np.exp(_log_softmax(z)) - np.eye(10)[c]) @ w.T
    x_adv = np.clip(x + eps * np.sign(grad), 0.0, 1.0)
    ce_clean = -_log_softmax(z)[np.arange(8), y]
    ce_adv = -_log_softmax(x_adv @ w + b)[np.arange(8), c]
    expected_srt = ce_clean[labeled].mean() + lam * ce_adv.mean()
    expected_rt = ce_clean[labeled].mean() + lam * ce_adv[labeled].mean()

    fgsm = attacks.fgsm(eps)
    loss, aux = defenses.srt(fgsm, lam)(model, variables, batch, keys)
    np.testing.assert_allclose(loss, expected_srt, rtol=1e-5)
    m = aux["metrics"]
    np.testing.assert_allclose(m["clean_loss"], ce_clean[labeled].mean(), rtol=1e-5)
    np.testing.assert_allclose(m["robust_loss"], ce_adv.mean(), rtol=1e-5)
    assert float(m["labeled_fraction"]) == pytest.approx(0.5)
    adv_pred = (x_adv @ w + b).argmax(-1)
    assert float(m["robust_consistency"]) == pytest.approx(np.mean(adv_pred == c))
    assert float(m["adv_accuracy"]) == pytest.approx(np.mean((adv_pred == y)[labeled]))
    rt_loss, _ = defenses.rt(fgsm, lam)(model, variables, batch, keys)
    np.testing.assert_allclose(rt_loss, expected_rt, rtol=1e-5)
    assert aux["batch_stats"] == {}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _loss_and_grad(objective, model, variables, batch, keys):
    def f(params):
        return objective(model, {**variables, "params": params}, batch, keys)[0]

    return jax.value_and_grad(f)(variables["params"])


def test_srt_without_unlabeled_data_is_rt(linear_setup):
    model, variables, batch, keys = linear_setup
    pgd = attacks.pgd(0.1, 0.03, 3, keep_best=False)  # random start: keys matter
    all_labeled = {**batch, "labeled": jnp.ones(8, bool)}
    no_mask = {k: v for k, v in batch.items() if k != "labeled"}
    rt_value, rt_grad = _loss_and_grad(defenses.rt(pgd, 0.5), model, variables, all_labeled, keys)
    for b in (all_labeled, no_mask):
        value, grad = _loss_and_grad(defenses.srt(pgd, 0.5), model, variables, b, keys)
        np.testing.assert_allclose(value, rt_value, rtol=1e-6)
        for g, r in zip(jax.tree.leaves(grad), jax.tree.leaves(rt_grad), strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-7)
    # With unlabeled examples the robust term differs (SRT uses them, RT does not).
    srt_partial, _ = defenses.srt(pgd, 0.5)(model, variables, batch, keys)
    rt_partial, _ = defenses.rt(pgd, 0.5)(model, variables, batch, keys)
    assert abs(float(srt_partial) - float(rt_partial)) > 1e-4


def test_labels_of_unlabeled_examples_are_ignored(linear_setup):
    model, variables, batch, keys = linear_setup
    changed = {**batch, "label": jnp.where(batch["labeled"], batch["label"], UNLABELED)}
    shifted = {**batch, "label": jnp.where(batch["labeled"], batch["label"], 9 - batch["label"])}
    pgd = attacks.pgd(0.1, 0.03, 3, keep_best=False)
    for objective in (defenses.srt(pgd), defenses.rt(pgd)):
        value, grad = _loss_and_grad(objective, model, variables, batch, keys)
        for other in (changed, shifted):
            value2, grad2 = _loss_and_grad(objective, model, variables, other, keys)
            assert float(value2) == float(value)
            for g, h in zip(jax.tree.leaves(grad), jax.tree.leaves(grad2), strict=True):
                np.testing.assert_array_equal(g, h)
    # ... while a labeled example's label does matter.
    flipped = {**batch, "label": batch["label"].at[0].set((batch["label"][0] + 1) % 10)}
    assert float(defenses.srt(pgd)(model, variables, flipped, keys)[0]) != float(value)


def test_masked_mean_is_the_global_mean_across_devices():
    values = jax.random.uniform(jax.random.key(0), (4, 6))
    mask = jax.random.bernoulli(jax.random.key(1), 0.4, (4, 6)).at[2].set(False)
    per_device = jax.vmap(masked_mean, axis_name="batch")(values, mask)
    # The train step pmean-s the per-device values: that must be the global masked mean.
    expected = np.sum(np.where(mask, values, 0)) / np.sum(mask)
    np.testing.assert_allclose(np.mean(per_device), expected, rtol=1e-6)
    np.testing.assert_allclose(masked_mean(values.ravel(), mask.ravel()), expected, rtol=1e-6)
    assert float(masked_mean(values[0], jnp.zeros(6, bool))) == 0.0


def test_specs_build_srt_rt_and_fast_srt_with_their_warmup():
    spec = dict(name="fast_srt", attack=dict(name="fgsm_rs", eps=0.3), lam=0.2)
    fast = defenses.build({**spec, "eps_warmup_epochs": 2}, steps_per_epoch=5)
    assert fast.eps_warmup_steps == 10 and fast.supports_unlabeled
    assert fast.terms[1].weight == 0.2 and fast.terms[1].rows == "all"  # SRT: every row
    assert fast.attacks == (attacks.fgsm_rs(0.3),)  # FGSM, random start, step 1.25 eps (Alg. 2)
    assert fast.attacks[0].step_size == pytest.approx(0.375)
    assert fast.adversaries[0].target == "predicted"  # C(x), SRT Sec. 3.1
    pgd = dict(name="pgd", eps=0.1, step_size=0.01, steps=5, keep_best=False)
    pgd_srt = defenses.build(dict(name="srt", attack=pgd))
    assert pgd_srt.terms[1].weight == 1.0
    assert pgd_srt.attacks == (attacks.pgd(0.1, 0.01, 5, keep_best=False),)
    rt_any = defenses.build(dict(name="rt", attack=dict(name="fgsm", eps=0.2)))  # any attack
    assert rt_any.terms[1].rows == "labeled" and rt_any.attacks == (attacks.fgsm(0.2),)
    with pytest.raises(ValueError, match="lam"):
        defenses.srt(attacks.fgsm(0.1), lam=-1.0)
    assert not defenses.build(dict(name="fast_at", attack=pgd)).supports_unlabeled


def test_srt_eps_warmup_scales_the_budget(linear_setup):
    model, variables, batch, keys = linear_setup
    objective = defenses.srt(attacks.fgsm(0.2), eps_warmup_steps=4)
    eps = [objective.attacks[0].scaled(objective.ramp(jnp.int32(s))).threat.eps for s in (2, 9)]
    assert [float(e) for e in eps] == pytest.approx([0.1, 0.2])
    at_zero, _ = objective(model, variables, batch, keys, step=jnp.int32(0))
    clean = defenses.srt(attacks.fgsm(0.0))(model, variables, batch, keys)[0]
    np.testing.assert_allclose(at_zero, clean, rtol=1e-6)  # no perturbation at step 0


# -- the loop ------------------------------------------------------------------------------------


def _assert_states_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture
def linear_registered(monkeypatch):
    """The loop tests train ``Linear`` (fast to compile) under the model name ``linear``."""
    monkeypatch.setitem(models.MODELS, "linear", Linear)


def test_plateau_schedule_resumes_exactly_and_stops_early(tmp_path, linear_registered):
    config = tiny_config("natural", epochs=4)
    config.model.name = "linear"
    config.data.synthetic.num_examples = 160  # 96 training examples: 3 steps an epoch
    config.train.checkpoint_every_steps = 0  # checkpoints at epoch ends only
    # min_delta=1: only the first validation "improves", so the rule must fire: LR / 5 after
    # epochs 2 and 3, and stop after epoch 3 (2 validations without improvement).
    config.train.plateau = dict(patience=1, factor=5.0, stop_patience=2, min_delta=1.0)
    config.validation.update(num_examples=32, jac_examples=0)
    uninterrupted = train_and_evaluate(config, str(tmp_path / "a"))
    assert int(uninterrupted.step) == 9  # stopped after epoch 3 of 4
    plateau = uninterrupted.schedule_state
    assert int(plateau.reductions) == 2 and float(plateau.lr_scale) == pytest.approx(0.04)

    # Killed after step 8 (last checkpoint: step 6, after the first reduction), then resumed.
    partial = train_and_evaluate(config, str(tmp_path / "b"), stop_after_steps=8)
    assert int(partial.step) == 8 and Checkpointer(str(tmp_path / "b")).latest_step() == 6
    resumed = train_and_evaluate(config, str(tmp_path / "b"))
    _assert_states_equal(uninterrupted, resumed)  # parameters, optimiser and plateau state

    records = read_metrics(str(tmp_path / "a"))
    epochs = [r for r in records if "val_clean_accuracy" in r]
    # The overfitting monitor's best-so-far was rebuilt from the metrics logged before step 6.
    resumed_last = [r for r in read_metrics(str(tmp_path / "b")) if "val_clean_accuracy" in r][-1]
    assert resumed_last["co_robust_drop"] == epochs[-1]["co_robust_drop"]
    assert [r["plateau_reductions"] for r in epochs] == [0, 1, 2]
    assert [r["lr_scale"] for r in epochs] == pytest.approx([1.0, 0.2, 0.04])
    assert [r["plateau_stop"] for r in epochs] == [0.0, 0.0, 1.0]
    schedule = make_schedule(config.train, 3)
    step8 = next(r for r in records if r["step"] == 8 and "loss" in r)
    assert step8["lr_scale"] == pytest.approx(0.2)
    assert step8["learning_rate"] == pytest.approx(0.2 * float(schedule(7)), rel=1e-5)
    timed = [r["time_per_batch_s"] for r in records if "time_per_batch_s" in r]
    assert len(timed) >= 3 and all(t > 0 for t in timed)

    # Rerunning a run the rule stopped does not train further.
    again = train_and_evaluate(config, str(tmp_path / "a"))
    _assert_states_equal(uninterrupted, again)
    assert len(read_metrics(str(tmp_path / "a"))) == len(records)
    config.data.num_validation = 0
    with pytest.raises(ValueError, match="num_validation"):
        train_and_evaluate(config, str(tmp_path / "c"))


def test_semi_supervised_run_logs_labeled_mix_and_monitors(
    tmp_path, monkeypatch, linear_registered
):
    config = tiny_config("fast_at", epochs=1)
    config.model.name = "linear"
    config.data.synthetic.num_examples = 160  # 96 training examples
    config.data.num_labeled = 24  # 8 labeled + 24 unlabeled per batch of 32: 3 steps an epoch
    config.validation.update(num_examples=32, jac_examples=16)
    config.train.log_every = 1
    with pytest.raises(ValueError, match="semi-supervised defense"):
        train_and_evaluate(config, str(tmp_path / "at"))  # fast_at would read hidden labels
    config.defense = dict(
        name="fast_srt", attack=config.defense.attack.to_dict(), lam=1.0, eps_warmup_epochs=3
    )
    state = train_and_evaluate(config, str(tmp_path / "srt"))
    assert int(state.step) == 3
    records = read_metrics(str(tmp_path / "srt"))
    steps = [r for r in records if "loss" in r]
    assert [r["labeled_fraction"] for r in steps] == [0.25] * 3
    assert {"clean_loss", "robust_loss", "robust_consistency"} <= set(steps[0])
    # eps warm-up over 3 epochs of 3 steps (mnist config): record s used train step s - 1.
    assert [r["eps_scale"] for r in steps] == pytest.approx([0.0, 1 / 9, 2 / 9])
    assert "time_per_batch_s" not in steps[0] and steps[1]["time_per_batch_s"] > 0
    (epoch,) = [r for r in records if "val_robust_accuracy" in r]
    assert epoch["val_jac_norm"] > 0 and np.isfinite(epoch["val_jac_norm"])
    assert epoch["catastrophic_overfitting"] == 0.0 and epoch["co_robust_drop"] == 0.0


def test_spatial_srt_config_trains_with_a_worst_of_k_neighbourhood(tmp_path):
    """``srt_spatial``: SRT whose robust term uses Worst-of-10 rotation-translations, validated
    under Worst-of-10; the other spatial variants build the documented objectives."""
    for variant, kind in [("worst_of_k", "pgd_at"), ("klr", "trades"), ("rt_spatial", "rt")]:
        defense = defenses.build(mnist.get_config(variant).defense, 10)
        assert defense.name == kind
        (attack,) = defense.attacks
        assert isinstance(attack, attacks.RandomSearch) and attack.steps == 10
    config = tiny_config("srt_spatial", epochs=1)
    config.data.num_labeled = 64
    config.validation.attack.steps = 2
    state = train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 6
    records = read_metrics(str(tmp_path))
    train_records = [r for r in records if "robust_loss" in r]
    assert train_records and all(np.isfinite(r["robust_loss"]) for r in train_records)
    assert 0.0 <= [r for r in records if "val_robust_accuracy" in r][-1]["val_robust_accuracy"]


def test_labeled_only_trains_a_supervised_defense_on_the_labeled_subset(
    tmp_path, linear_registered
):
    """``data.labeled_only``: the supervised baselines of the semi-supervised protocol see the
    labeled images SRT sees, and nothing else."""
    ds = with_labeled_subset(_ids_dataset(100), 30, seed=3)
    part = labeled_part(ds)
    assert len(part) == 30 and part.labeled is None and part.num_labeled == 30
    np.testing.assert_array_equal(part.images, ds.images[ds.labeled])
    np.testing.assert_array_equal(part.labels, ds.labels[ds.labeled])
    assert labeled_part(part) is part
    for variant in ("worst_of_k", "klr"):
        assert mnist.get_config(variant).data.labeled_only
    config = tiny_config("fast_at", epochs=1)
    config.model.name = "linear"
    config.data.synthetic.num_examples = 160  # 96 training examples
    config.data.update(num_labeled=64, labeled_only=True)  # 64 labeled: 2 steps of 32
    config.validation.update(num_examples=32, jac_examples=16)
    train, _ = load_splits(config)
    config.data.labeled_only = False
    mixed, _ = load_splits(config)  # what SRT trains on: the same 64 labeled + 32 unlabeled
    assert len(train) == 64 and train.labeled is None and len(mixed) == 96
    np.testing.assert_array_equal(train.images, mixed.images[mixed.labeled])
    config.data.labeled_only = True
    state = train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 2
    config.data.num_labeled = 0
    with pytest.raises(ValueError, match="labeled_only=True needs data.num_labeled > 0"):
        load_splits(config)
