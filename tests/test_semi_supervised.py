"""SRT Table 4's semi-supervised baselines: UAT (Uesato et al. 2019) and RST (Carmon et al. 2019).

The objectives on a linear model against NumPy and against the supervised defenses they reduce to
(UAT-FT is PGD-AT and RST is TRADES, on pseudo-labels), the data steps on the unlabeled pool
(subsampling, pseudo-labelling, batch mixing), and the Table 4 configs end to end, with a proof
that the labels of the unlabeled examples are never read (scrambling them changes no bit).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks, defenses, models
from advjax.data import UNLABELED, Dataset, labeled_per_batch, train_batches, with_labeled_subset
from advjax.data.pseudo_labels import (
    PseudoLabeledDataset,
    predicted_labels,
    pseudo_label,
    subsample_unlabeled,
)
from advjax.defenses.core import ADVERSARY_KEY
from advjax.experiment import load_splits, train_and_evaluate, training
from advjax.experiment.unlabeled import unlabeled_data
from advjax.models import make_model_fn
from configs import mnist
from tests.train_configs import tiny_config


class Linear(nn.Module):
    """Softmax regression as a Flax module."""

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def setup():
    """A linear model, 8 images (4 labeled), per-example keys, and short PGD adversaries."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (64, 10)).astype(np.float32)
    b = rng.normal(0, 0.1, 10).astype(np.float32)
    variables = {"params": {"Dense_0": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}}}
    x = jnp.asarray(rng.uniform(0.1, 0.9, (8, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 8), jnp.int32)
    labeled = jnp.array([True, False, True, True, False, False, True, False])
    keys = jax.random.split(jax.random.key(2), 8)
    ce_attack = attacks.pgd(0.1, 0.05, 3, keep_best=False)
    kl_attack = attacks.pgd(0.1, 0.05, 3, loss="kl_from_reference", keep_best=False)
    batch = {"image": x, "label": y, "labeled": labeled}
    return Linear(), variables, batch, keys, ce_attack, kl_attack


def _numpy(variables, x):
    w = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)
    b = np.asarray(variables["params"]["Dense_0"]["bias"], np.float64)
    return np.asarray(x, np.float64).reshape(len(x), -1) @ w + b


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _ce(z, y):
    return -np.log(_softmax(z)[np.arange(len(y)), y])


def _kl(z_ref, z):
    p, q = _softmax(z_ref), _softmax(z)
    return np.sum(p * (np.log(p) - np.log(q)), -1)


def _loss_and_grad(defense, model, variables, batch, keys):
    def loss(params):
        return defense(model, {**variables, "params": params}, batch, keys)

    (value, aux), grad = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    return value, aux["metrics"], grad


def _assert_trees_equal(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def _fold(keys, data):
    return jax.vmap(jax.random.fold_in, (0, None))(keys, data)


# -- the objectives -------------------------------------------------------------------------------


def test_uat_ot_matches_numpy_and_never_reads_unlabeled_labels(setup):
    model, variables, batch, keys, ce_attack, kl_attack = setup
    beta = 0.7
    defense = defenses.uat(ce_attack, beta=beta, variant="ot")
    assert defense.supports_unlabeled and defense.attacks == (kl_attack,)  # KL adversary
    value, metrics, grad = _loss_and_grad(defense, model, variables, batch, keys)

    model_fn = make_model_fn(model)
    x, y, labeled = batch["image"], np.asarray(batch["label"]), np.asarray(batch["labeled"])
    x_adv = kl_attack(model_fn, variables, x, model_fn(variables, x), keys)  # maximises the KL
    z, z_adv = _numpy(variables, x), _numpy(variables, x_adv)
    ce_labeled, kl = _ce(z, y)[labeled].mean(), _kl(z, z_adv).mean()  # KL on every row
    np.testing.assert_allclose(value, ce_labeled + beta * kl, rtol=1e-5)
    np.testing.assert_allclose(metrics["clean_loss"], ce_labeled, rtol=1e-5)
    np.testing.assert_allclose(metrics["ot_loss"], kl, rtol=1e-5)
    assert kl > 1e-3  # the adversary moved the prediction

    # The target p_hat(x) is held fixed: d/db = mean_L (p - onehot) + beta mean (p' - p_hat).
    p, p_adv = _softmax(z), _softmax(z_adv)
    onehot = np.eye(10)[y]
    bias_grad = (p - onehot)[labeled].mean(0) + beta * (p_adv - p).mean(0)
    np.testing.assert_allclose(grad["Dense_0"]["bias"], bias_grad, rtol=1e-4, atol=1e-6)
    # TRADES's KL (gradient through the clean pass): same value, another gradient.
    trades_kl = defenses.uat(ce_attack, beta=beta, variant="ot", detach_target=False)
    value_t, _, grad_t = _loss_and_grad(trades_kl, model, variables, batch, keys)
    np.testing.assert_allclose(value_t, value, rtol=1e-6)
    assert not np.allclose(grad_t["Dense_0"]["bias"], grad["Dense_0"]["bias"], atol=1e-4)

    # The labels of unlabeled rows are never read: scrambled, nothing changes by a bit.
    for hidden in (UNLABELED, 9 - batch["label"]):
        scrambled = {**batch, "label": jnp.where(batch["labeled"], batch["label"], hidden)}
        value_s, _, grad_s = _loss_and_grad(defense, model, variables, scrambled, keys)
        np.testing.assert_array_equal(value_s, value)
        _assert_trees_equal(grad_s, grad)


def test_uat_ft_is_pgd_at_on_pseudo_labels_and_uat_plus_plus_adds_online_targets(setup):
    model, variables, batch, keys, ce_attack, kl_attack = setup
    pseudo = {"image": batch["image"], "label": batch["label"]}  # a label on every row
    ft = defenses.uat(ce_attack, variant="ft")
    assert not ft.supports_unlabeled  # it reads every label: it needs pseudo-labels
    value_ft, _, grad_ft = _loss_and_grad(ft, model, variables, pseudo, keys)
    value_at, _, grad_at = _loss_and_grad(
        defenses.pgd_at(ce_attack), model, variables, pseudo, keys
    )
    np.testing.assert_array_equal(value_ft, value_at)
    _assert_trees_equal(grad_ft, grad_at)

    beta = 2.0
    plus = defenses.uat(ce_attack, beta=beta)  # the default: UAT++
    assert [a.name for a in plus.adversaries] == ["adv", "kl_adv"]
    assert plus.attacks == (ce_attack, kl_attack) and not plus.supports_unlabeled
    value, metrics, _ = _loss_and_grad(plus, model, variables, pseudo, keys)
    np.testing.assert_allclose(metrics["ft_loss"], value_at, rtol=1e-6)  # same adversary, keys
    model_fn = make_model_fn(model)
    x = batch["image"]
    x_kl = kl_attack(model_fn, variables, x, model_fn(variables, x), _fold(keys, ADVERSARY_KEY + 1))
    kl = _kl(_numpy(variables, x), _numpy(variables, x_kl)).mean()
    np.testing.assert_allclose(metrics["ot_loss"], kl, rtol=1e-5)
    np.testing.assert_allclose(value, value_at + beta * kl, rtol=1e-5)

    assert defenses.uat(ce_attack, beta=0.0).attacks == (ce_attack,)  # UAT++ without OT is FT
    with pytest.raises(ValueError, match="UAT variant"):
        defenses.uat(ce_attack, variant="pp")
    with pytest.raises(ValueError, match="no loss to set"):
        defenses.uat(attacks.restarts(ce_attack, restarts=2))


def test_rst_is_trades_on_labeled_and_pseudo_labeled_rows(setup):
    model, variables, batch, keys, _, kl_attack = setup
    pseudo = {"image": batch["image"], "label": batch["label"]}
    rst = defenses.rst(kl_attack, beta=1.5)
    value, metrics, grad = _loss_and_grad(rst, model, variables, pseudo, keys)
    trades = defenses.trades(kl_attack, beta=1.5)
    value_t, metrics_t, grad_t = _loss_and_grad(trades, model, variables, pseudo, keys)
    np.testing.assert_array_equal(value, value_t)
    _assert_trees_equal(grad, grad_t)
    assert metrics.keys() == metrics_t.keys()
    built = defenses.build(
        dict(name="rst", attack=dict(name="pgd", eps=0.1, step_size=0.05, steps=3))
    )
    assert built.name == "rst" and built.attacks[0].loss == "kl_from_reference"  # KL adversary
    assert not built.supports_unlabeled
    assert defenses.DEFENSES["uat"] is defenses.uat and defenses.DEFENSES["rst"] is defenses.rst


# -- the data steps -------------------------------------------------------------------------------


def _ids_dataset(n: int) -> Dataset:
    """Image i holds i (as two uint8 pixels), label i % 10: batches reveal their examples."""
    images = np.zeros((n, 2, 1, 1), np.uint8)
    images[:, 0, 0, 0], images[:, 1, 0, 0] = np.arange(n) // 256, np.arange(n) % 256
    return Dataset(images, (np.arange(n) % 10).astype(np.int32), 10, "ids")


def _ids(batch) -> np.ndarray:
    pixels = np.rint(batch["image"] * 255).astype(int).reshape(-1, 2)
    return pixels[:, 0] * 256 + pixels[:, 1]


def _scramble(ds: Dataset) -> Dataset:
    """``ds`` with other labels on its unlabeled examples."""
    labels = np.where(ds.labeled, ds.labels, (ds.labels + 3) % ds.num_classes)
    return Dataset(ds.images, labels, ds.num_classes, ds.name, labeled=ds.labeled)


def test_subsample_unlabeled_is_seeded_nested_and_keeps_the_labeled():
    ds = with_labeled_subset(_ids_dataset(100), 30, seed=0)
    small = subsample_unlabeled(ds, 20, seed=5)
    assert len(small) == 50 and small.num_labeled == 30
    ids = small.images[:, 1, 0, 0].astype(int)  # < 256: the id is the second pixel
    assert np.all(np.diff(ids) > 0)  # in their order
    assert set(np.flatnonzero(ds.labeled)) <= set(ids)  # every labeled example kept
    np.testing.assert_array_equal(small.images, subsample_unlabeled(ds, 20, seed=5).images)
    assert not np.array_equal(small.images, subsample_unlabeled(ds, 20, seed=6).images)
    larger = subsample_unlabeled(ds, 45, seed=5).images[:, 1, 0, 0].astype(int)
    assert set(ids) <= set(larger)  # more unlabeled data keeps the smaller choice
    assert subsample_unlabeled(ds, 70, seed=5) is ds
    for bad in (0, 71, 2.5):
        with pytest.raises(ValueError, match=r"num_unlabeled must be an integer in \[1, 70\]"):
            subsample_unlabeled(ds, bad, seed=5)
    with pytest.raises(ValueError, match="needs unlabeled training examples"):
        subsample_unlabeled(_ids_dataset(100), 10, seed=5)


def test_pseudo_labels_are_the_teachers_argmax_in_place_of_the_hidden_labels(setup):
    model, variables, *_ = setup
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, 8, 8, 1), dtype=np.uint8)
    ds = with_labeled_subset(Dataset(images, np.arange(50) % 10, 10, "toy"), 20, seed=0)
    model_fn = jax.jit(make_model_fn(model))
    shapes = []

    def predict(x):
        shapes.append(x.shape)
        return model_fn(variables, x)

    out = pseudo_label(ds, predict, batch_size=8)  # 30 unlabeled: 4 batches, the last padded
    assert isinstance(out, PseudoLabeledDataset) and out.labeled is None
    assert set(shapes) == {(8, 8, 8, 1)} and len(shapes) == 4  # one shape: one compilation
    np.testing.assert_array_equal(out.pseudo, ~ds.labeled)
    logits = _numpy(variables, images[~ds.labeled].astype(np.float32) / np.float32(255.0))
    np.testing.assert_array_equal(out.labels[out.pseudo], logits.argmax(-1))
    np.testing.assert_array_equal(out.labels[~out.pseudo], ds.labels[ds.labeled])
    again = pseudo_label(_scramble(ds), predict, batch_size=8)  # the hidden labels are not read
    np.testing.assert_array_equal(again.labels, out.labels)
    np.testing.assert_array_equal(
        predicted_labels(images, predict, 50),
        _numpy(variables, images.astype(np.float32) / np.float32(255.0)).argmax(-1),
    )
    part = out.take(np.arange(10))
    assert part.pseudo.shape == (10,) and part.num_pseudo == int(out.pseudo[:10].sum())
    assert "pseudo=30" in repr(out)
    with pytest.raises(ValueError, match="needs unlabeled training examples"):
        pseudo_label(Dataset(images, np.arange(50) % 10, 10, "toy"), predict)
    with pytest.raises(ValueError, match="pseudo must be a bool mask"):
        PseudoLabeledDataset(images, out.labels, 10, "toy", pseudo=np.ones(3, bool))


def test_pseudo_labeled_batches_carry_every_label_mixed_in_proportion_or_by_fraction():
    ds = with_labeled_subset(_ids_dataset(100), 30, seed=0)
    teacher = (np.arange(100) * 7) % 10  # what a teacher "predicted" for each example
    pseudo = PseudoLabeledDataset(
        ds.images, np.where(ds.labeled, ds.labels, teacher), 10, "ids", pseudo=~ds.labeled
    )
    kw = dict(global_batch_size=16, seed=3, process_index=0, process_count=1, local_device_count=2)
    for fraction, num_pseudo in ((None, 16 - labeled_per_batch(30, 100, 16)), (0.5, 8)):
        stream = [
            next(it)
            for it in [train_batches(pseudo, unlabeled_fraction=fraction, **kw)]
            for _ in range(8)
        ]
        for b in stream:
            assert "labeled" not in b  # training reads every label
            ids = _ids(b)
            np.testing.assert_array_equal(b["label"].reshape(-1), pseudo.labels[ids])
            assert pseudo.pseudo[ids].sum() == num_pseudo
        # The same mixture as the semi-supervised batches of the same split.
        srt = next(train_batches(ds, unlabeled_fraction=fraction, **kw))
        np.testing.assert_array_equal(_ids(srt), _ids(stream[0]))
        resumed = train_batches(pseudo, start_step=5, unlabeled_fraction=fraction, **kw)
        np.testing.assert_array_equal(_ids(next(resumed)), _ids(stream[5]))
    with pytest.raises(ValueError, match="needs unlabeled or pseudo-labeled"):
        train_batches(_ids_dataset(100), unlabeled_fraction=0.5, **kw)
    with pytest.raises(ValueError, match="but there are 30 and 70"):
        train_batches(pseudo, unlabeled_fraction=0.1, **{**kw, "global_batch_size": 64})
    with pytest.raises(ValueError, match=r"unlabeled_fraction must be in \(0, 1\)"):
        train_batches(pseudo, unlabeled_fraction=1.0, **kw)


# -- the Table 4 configs, end to end --------------------------------------------------------------


def _tiny(variant: str):
    """``variant`` on 160 synthetic images (64 held out; 32 of the other 96 labeled), the linear
    model, batch 32 and one-step adversaries: 3 steps an epoch (1 for the labeled-only teacher).
    No Jacobian monitor (compiling it doubles the cost of a step)."""
    config = tiny_config(variant, epochs=1)
    config.model.name = "linear"
    config.data.synthetic.num_examples = 160
    config.data.num_labeled = 32
    config.validation.update(num_examples=32, jac_examples=0)
    config.validation.attack.steps = 1
    if "attack" in config.defense:
        config.defense.attack.steps = 1
    if variant == "rst":
        config.defense.monitor_jacobian = False
    return config


def _scrambled_splits(config):
    """``load_splits`` with other labels on the unlabeled training examples."""
    train, val = load_splits(config)
    return _scramble(train), val


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A ``natural_labeled`` teacher trained on the 32 labeled images (one step)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(models.MODELS, "linear", Linear)
        workdir = str(tmp_path_factory.mktemp("natural_labeled"))
        config = _tiny("natural_labeled")
        config.validation.every_epochs = 2  # none: the best checkpoint is the latest
        train, _ = load_splits(config)
        assert len(train) == 32 and train.labeled is None  # the labeled images alone
        state = train_and_evaluate(config, workdir)
    assert int(state.step) == 1
    return workdir, state.variables


@pytest.mark.parametrize("variant", ["rst", "uat", "uat_ot"])
def test_table4_configs_train_and_never_read_the_unlabeled_labels(
    variant, teacher, tmp_path, monkeypatch
):
    """RST and UAT++ on the teacher's pseudo-labels, UAT-OT on the unlabeled images as they are.
    Scrambling the labels of the unlabeled images changes no bit of UAT++'s training (RST reads
    the same pseudo-labeled data; UAT-OT's objective ignores them: see the test above)."""
    monkeypatch.setitem(models.MODELS, "linear", Linear)
    config = _tiny("uat" if variant == "uat_ot" else variant)
    config.data.pseudo_labels_from = teacher[0]
    if variant == "uat_ot":
        config.defense.variant = "ot"
        with pytest.raises(ValueError, match="would label them"):
            train_and_evaluate(config, str(tmp_path / "refused"))
        config.data.pseudo_labels_from = ""
    if variant == "rst":  # the unlabeled pool is labelled by the teacher's argmax
        train = unlabeled_data(config, load_splits(config)[0])
        assert isinstance(train, PseudoLabeledDataset) and train.num_pseudo == 64
        x = train.images[train.pseudo].astype(np.float32) / np.float32(255.0)
        logits = make_model_fn(Linear())(teacher[1], jnp.asarray(x))
        np.testing.assert_array_equal(train.labels[train.pseudo], np.argmax(logits, -1))
    state = train_and_evaluate(config, str(tmp_path / "a"), stop_after_steps=2)
    assert int(state.step) == 2
    if variant == "uat":
        monkeypatch.setattr(training, "load_splits", _scrambled_splits)
        scrambled = train_and_evaluate(config, str(tmp_path / "b"), stop_after_steps=2)
        _assert_trees_equal(scrambled.params, state.params)  # bit for bit
        _assert_trees_equal(scrambled.opt_state, state.opt_state)


def test_teacher_must_have_seen_only_the_labeled_subset(teacher, tmp_path, monkeypatch):
    monkeypatch.setitem(models.MODELS, "linear", Linear)
    config = _tiny("rst")
    config.data.pseudo_labels_from = teacher[0]
    train, _ = load_splits(config)
    config.seed = 1  # another labeled subset: the teacher read labels this run may not
    with pytest.raises(ValueError, match="trained on other labels"):
        unlabeled_data(config, train)
    config.seed = 0
    config.data.pseudo_labels_from = str(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="natural_labeled"):
        unlabeled_data(config, train)
    config.data.update(pseudo_labels_from="", num_unlabeled=16)
    assert len(unlabeled_data(config, train)) == 48  # 32 labeled + 16 unlabeled
    for variant in ("natural_labeled", "uat", "rst", "srt_table4"):  # SRT Table 4, App. E
        c = mnist.get_config(variant)
        assert (c.model.name, c.data.num_labeled, c.evaluate.eps) == ("mnist_cnn4", 10_000, "0.3")
        if variant != "natural_labeled":
            assert dict(c.defense.attack) == dict(mnist.TABLE4_PGD)  # PGD-40, eps 0.3
    assert mnist.get_config("natural_labeled").data.labeled_only
    assert mnist.get_config("rst").data.unlabeled_fraction == 0.5  # RST's unsup_fraction
    assert mnist.get_config("uat").defense.variant == "plus_plus"
