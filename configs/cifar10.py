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

VARIANTS = ("natural", "pgd_at", "fast_at")


def get_config(arg: str = "fast_at") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}; valid variants: {', '.join(VARIANTS)}")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = dict(name="cifar10", source="auto", data_dir="", num_validation=1000, augment=True)
    c.model = (
        dict(name="wide_resnet", depth=34, width=10)
        if arg == "pgd_at"
        else dict(name="preact_resnet18")
    )

    eps = 8 / 255
    c.defense = dict(
        name=arg, eps=eps, norm="linf", step_size=10 / 255, steps=1, eps_warmup_epochs=0
    )
    if arg == "pgd_at":
        c.defense.update(step_size=2 / 255, steps=10)

    c.train = dict(
        epochs={"natural": 30, "fast_at": 15, "pgd_at": 200}[arg],
        batch_size=128,
        optimizer="sgd",
        momentum=0.9,
        nesterov=False,
        learning_rate={"natural": 0.1, "fast_at": 0.2, "pgd_at": 0.1}[arg],
        schedule={"natural": "cosine", "fast_at": "cyclic", "pgd_at": "piecewise"}[arg],
        warmup_epochs=1,
        peak_fraction=0.4,
        decay_epochs=(100, 150),
        decay_factor=0.1,
        weight_decay=5e-4,
        log_every=100,
        checkpoint_every_steps=1000,
        keep_checkpoints=2,
        progress=True,
    )
    c.validation = dict(
        attack=dict(name="pgd", eps=eps, step_size=2 / 255, steps=10, restarts=1),
        num_examples=1000,
        batch_size=500,
        every_epochs=1,
        metric="val_clean_accuracy" if arg == "natural" else "val_robust_accuracy",
    )
    # `python -m launch.evaluate`: names from advjax.eval.presets, comma-separated.
    c.evaluate = dict(
        suite="clean,pgd20",
        norm="linf",
        eps="8/255",  # exact fraction, not 0.031
        step_size=2 / 255,
        restarts=1,
        batch_size=500,
        num_examples=0,
        checkpoint="best",
        checks=True,
        check_examples=200,
    )
    c.distributed = common.distributed()
    return c
