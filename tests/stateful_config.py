"""A config that registers its own stateful defense: what a user extending advjax would write.

``ema_weighted_at`` is fast AT plus the clean CE weighted by an exponential moving average of the
adversarial CE (``MovingAverage``): ``CE(f(x'), y) + m_t CE(f(x), y)``,
``m_t = decay m_{t-1} + (1 - decay) CE(f(x'), y)``, ``m_0 = 0``. It is a toy that exercises the
defense-state contract (updated in the jitted step from statistics averaged over devices,
checkpointed, restored on resume) on MNIST-shaped synthetic data, fast enough for tests::

    python -m launch.train --config=tests/stateful_config.py --workdir=/tmp/stateful
"""

from __future__ import annotations

from advjax import defenses
from advjax.defenses import Adversary, Defense, FromState, MovingAverage
from advjax.defenses.terms import CrossEntropy
from configs import common, mnist


def ema_weighted_at(attack, decay: float = 0.9, eps_warmup_steps: int = 0) -> Defense:
    """``CE(f(x'), y) + m CE(f(x), y)`` with ``m`` the moving average of ``CE(f(x'), y)``."""
    return Defense(
        (
            CrossEntropy("adv", name="adv"),
            CrossEntropy("clean", weight=FromState("adv"), name="clean"),
        ),
        (Adversary(attack),),
        eps_warmup_steps=eps_warmup_steps,
        state_rule=MovingAverage(("adv",), decay),
        name="ema_weighted_at",
    )


defenses.DEFENSES.setdefault("ema_weighted_at", ema_weighted_at)


def get_config(arg: str = ""):
    del arg
    config = mnist.get_config("fast_at")
    config.defense = dict(name="ema_weighted_at", attack=common.fgsm_rs(0.3), eps_warmup_epochs=1)
    config.data.update(name="synthetic", source="synthetic", num_validation=64)
    config.data.synthetic.num_examples = 256
    config.model.name = "mnist_cnn4"
    config.train.update(epochs=3, batch_size=32, checkpoint_every_steps=2, log_every=2)
    config.validation.attack.steps = 3
    config.validation.num_examples = 64
    config.validation.batch_size = 32
    return config
