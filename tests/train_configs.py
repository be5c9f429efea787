"""Tiny training configs on synthetic data, shared by the training tests."""

from __future__ import annotations

from configs import mnist


def tiny_config(defense: str = "fast_at", epochs: int = 2):
    """mnist_cnn4 on 256 synthetic 28x28 images (64 held out), batch 32: 6 steps an epoch."""
    c = mnist.get_config(defense)
    c.data.name = "synthetic"
    c.data.source = "synthetic"
    c.data.synthetic = dict(num_examples=256)
    c.data.num_validation = 64
    c.model.name = "mnist_cnn4"
    c.train.epochs = epochs
    c.train.batch_size = 32
    c.train.log_every = 2
    c.train.checkpoint_every_steps = 4
    c.train.progress = False
    if defense == "pgd_at":
        c.defense.attack.update(step_size=0.05, steps=2)
    if c.validation.attack.name == "pgd":
        c.validation.attack.steps = 3
    c.validation.num_examples = 64
    c.validation.batch_size = 32
    c.evaluate.suite = "clean,pgd3"
    c.evaluate.check_examples = 32
    c.evaluate.batch_size = 64
    return c
