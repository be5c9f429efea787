"""A tiny UDR-PGD config for tests: ``tests/train_configs.tiny_config`` (256 synthetic 28x28 images
with 64 held out, batch 32: 6 steps an epoch, 2 epochs) on ``mnist_fast_at`` (the cheapest MNIST
net to compile), with UDR-PGD's learned ``lambda`` updated every 3 steps at a learning rate large
enough that it visibly moves, a 2-step UDR attack, metrics logged every step, checkpoints every 4
steps (and at epoch ends) and no validation::

    python -m launch.train --config=tests/udr_config.py --workdir=/tmp/udr
"""

from __future__ import annotations

from tests.train_configs import tiny_config

EPS, LAMBDA_PERIOD, LAMBDA_LR = 0.3, 3, 1.0


def get_config(arg: str = ""):
    del arg
    config = tiny_config("pgd_at", epochs=2)
    config.defense = dict(
        name="udr_pgd",
        attack=dict(name="udr", eps=EPS, step_size=0.1, steps=2),
        lambda_period=LAMBDA_PERIOD,
        lambda_learning_rate=LAMBDA_LR,
    )
    config.model.name = "mnist_fast_at"
    config.train.update(log_every=1, checkpoint_every_steps=4)
    config.validation.every_epochs = 100  # no validation: the state, not the accuracy, is tested
    return config
