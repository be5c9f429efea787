"""CIFAR-10 configs: natural training, PGD-AT and fast AT (Linf eps 8/255).

Variants (``--config=configs/cifar10.py:VARIANT``):
  natural  PreAct-ResNet-18, 30 epochs, SGD + cosine schedule.
  fast_at  PreAct-ResNet-18, FGSM from a random start with step 10/255 (Wong et al. 2020), 15
           epochs, cyclic learning rate up to 0.2.
  pgd_at   WideResNet-34-10, PGD-10 with step 2/255 (Madry et al. 2018; Rice et al. 2020 recipe),
           200 epochs, learning rate 0.1 divided by 10 at epochs 100 and 150, best checkpoint
           kept by validation robust accuracy (early stopping against robust overfitting).

    python -m launch.train --config=configs/cifar10.py:fast_at --workdir=workdirs/cifar_fast_at
    python -m launch.evaluate --workdir=workdirs/cifar_fast_at

These need an accelerator. Published figures (RobustBench, see ../shared/spec/peers.md): fast AT
PreAct-ResNet-18 about 83% clean / 43% AutoAttack in about 15 epochs; PGD-AT WRN-34-10 about
84-86% clean / 51-53% AutoAttack with early stopping. On one modern GPU, fast AT takes roughly
10-20 minutes and PGD-AT WRN-34-10 about a day. On a 2-core CPU only the smoke tests are practical.
Data: CIFAR-10 binary files (``cifar-10-binary.tar.gz`` or ``cifar-10-batches-bin/``) in
``--config.data.data_dir`` / ``$ADVJAX_DATA_DIR``, or a prepared tfds ``cifar10``.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.common import fgsm_rs, pgd

EPS = 8 / 255

BASE = dict(
    seed=0,
    data=dict(name="cifar10", source="auto", data_dir="", num_validation=1000, augment=True),
    model=dict(name="preact_resnet18"),
    train=dict(
        epochs=30,
        batch_size=128,
        optimizer="sgd",
        momentum=0.9,
        nesterov=False,
        learning_rate=0.1,
        schedule="cosine",
        warmup_epochs=1,
        peak_fraction=0.4,
        decay_epochs=(100, 150),
        decay_factor=0.1,
        weight_decay=5e-4,
        log_every=100,
        checkpoint_every_steps=1000,
        keep_checkpoints=2,
        progress=True,
    ),
    validation=dict(
        attack=dict(name="pgd", eps=EPS, step_size=2 / 255, steps=10),
        num_examples=1000,
        batch_size=500,
        every_epochs=1,
        metric="val_robust_accuracy",
    ),
    # `python -m launch.evaluate`: names from advjax.eval.presets, comma-separated. PGD-20 and
    # AutoAttack's two gradient attacks (APGD-CE, APGD-T) on the first 1,000 test images.
    evaluate=dict(
        suite="clean,pgd20,apgd_ce,apgd_t",
        norm="linf",
        eps="8/255",  # exact fraction, not 0.031
        step_size=2 / 255,
        restarts=1,
        batch_size=500,
        num_examples=1000,  # 0: the whole test set
        checkpoint="best",
        checks=True,
        check_examples=200,
    ),
    # ensemble.members > 1 trains that many copies of the model in one step (advjax.models.Ensemble;
    # combine: "probabilities", the thesis's average of softmax outputs, or "logits").
    ensemble=dict(members=1, combine="probabilities"),
    distributed=common.distributed(),
)

# Thesis Ch. 5 (UDR; spec thesis_ch5_6.md Sec. 6.1-6.4, Table 1): PGD-10 at eps 8/255, step
# 2/255; the UDR adversary pulls with the soft-ball cost (Eq. 16) on the L2 ground cost, tau =
# 2 eta = 4/255, lambda learned by Eq. 19 on the Linf cost (statistic "soft"; lambda_0 = 1, lr
# 0.02 every 10 steps as the released code). beta: TRADES 6, MART 5, PGD-AT 1 with the clean term
# (P11). The thesis's ResNet18 schedule: SGD momentum 0.9, lr 0.01 divided by 10 at epochs 75,
# 90 and 100, weight decay 3.5e-3, 200 epochs (batch size not stated: 128). The network here is
# PreAct-ResNet-18 (the thesis's ResNet18 is not in the zoo; the released code ships both).
CH5_PGD = pgd(EPS, 2 / 255, 10)
CH5_UDR = dict(
    name="udr", eps=EPS, step_size=2 / 255, steps=10, cost="soft", ground_cost="l2", tau=4 / 255
)
CH5_LAMBDA = dict(statistic="soft")
CH5 = dict(
    model=dict(name="preact_resnet18"),
    train=dict(
        epochs=200,
        learning_rate=0.01,
        schedule="piecewise",
        decay_epochs=(75, 90, 100),
        weight_decay=3.5e-3,
    ),
    validation=dict(attack=dict(name="pgd", eps=EPS, step_size=2 / 255, steps=20)),
    evaluate=dict(num_examples=0, suite="clean,pgd200,aa_standard,brendel_bethge"),
)


def _ch5(defense: dict) -> dict:
    return common.merge(CH5, dict(defense=defense))


# Thesis Ch. 5 Tables 4 and 7 (spec Sec. 4.4, 5.2, 5.5; the released code's WRN-34-10 recipe):
# robust-only CE (PGD-AT*, UDR-PGD*), the code's UDR adversary (squared hinge, tau = eta, lambda
# from the per-pixel mean |delta|, lr 0.02 every 10 steps) and AWP (gamma 0.01, no warm-up).
# SGD lr 0.1 divided by 10 at epochs 100 and 150, weight decay 5e-4, batch 128, 200 epochs.
CH5_WRN_UDR = dict(name="udr", eps=EPS, step_size=2 / 255, steps=10)
CH5_WRN = dict(
    model=dict(name="wide_resnet", depth=34, width=10),
    train=dict(epochs=200, schedule="piecewise", learning_rate=0.1, weight_decay=5e-4),
    validation=dict(attack=dict(name="pgd", eps=EPS, step_size=2 / 255, steps=20)),
    evaluate=dict(num_examples=0, suite="clean,pgd100,aa_standard"),
)


def _ch5_wrn(defense: dict) -> dict:
    return common.merge(CH5_WRN, dict(defense=defense))


VARIANTS: dict[str, dict] = {
    "natural": dict(defense=dict(name="natural"), validation=dict(metric="val_clean_accuracy")),
    "fast_at": dict(
        defense=dict(name="fast_at", attack=fgsm_rs(EPS, step_size=10 / 255)),
        train=dict(epochs=15, learning_rate=0.2, schedule="cyclic"),
    ),
    "pgd_at": dict(
        model=dict(name="wide_resnet", depth=34, width=10),
        defense=dict(name="pgd_at", attack=pgd(EPS, 2 / 255, 10)),
        train=dict(epochs=200, schedule="piecewise"),
    ),
    # Thesis Ch. 5, Table 1 (CIFAR-10 columns; see CH5 above).
    "ch5_pgd_at": _ch5(dict(name="pgd_at", attack=CH5_PGD, beta=1.0, clean_weight=1.0)),
    "ch5_udr_pgd": _ch5(dict(name="udr_pgd", attack=CH5_UDR, clean_weight=1.0, **CH5_LAMBDA)),
    "ch5_trades": _ch5(dict(name="trades", attack=CH5_PGD, beta=6.0, kl_base="adv")),
    "ch5_udr_trades": _ch5(
        dict(name="udr_trades", attack=CH5_UDR, beta=6.0, kl_base="adv", **CH5_LAMBDA)
    ),
    "ch5_mart": _ch5(dict(name="mart", attack=CH5_PGD, beta=5.0, variant="thesis", kl_base="adv")),
    "ch5_udr_mart": _ch5(
        dict(name="udr_mart", attack=CH5_UDR, beta=5.0, kl_base="adv", **CH5_LAMBDA)
    ),
    # Thesis Ch. 5, Tables 4 and 7 (WRN-34-10; see CH5_WRN above).
    "ch5_wrn_pgd_at": _ch5_wrn(dict(name="pgd_at", attack=CH5_PGD)),
    "ch5_wrn_udr_pgd": _ch5_wrn(dict(name="udr_pgd", attack=CH5_WRN_UDR, clean_weight=0.0)),
    "ch5_wrn_awp_at": _ch5_wrn(dict(name="awp_at", attack=CH5_PGD, gamma=0.01)),
    "ch5_wrn_udr_awp_at": _ch5_wrn(dict(name="udr_awp_at", attack=CH5_WRN_UDR, gamma=0.01)),
}


def get_config(arg: str = "fast_at") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}; valid variants: {', '.join(VARIANTS)}")
    return ml_collections.ConfigDict(common.merge(BASE, VARIANTS[arg]))
