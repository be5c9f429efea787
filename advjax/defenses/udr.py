"""UDR defenses (thesis Ch. 5, spec ``thesis_ch5_6.md`` Sec. 5): a standard defense whose
adversary is the UDR attack and whose dual variable ``lambda`` is learned.

``learned_lambda(defense)`` is the one mechanism: the adversary whose attack takes ``lambda``
(``advjax.attacks.udr``) reads it from the defense state each step (``Adversary.from_state``), and
the defense carries ``UDRLambda`` (Eq. 19). The variants are the standard defenses so transformed,
so each keeps its counterpart's loss exactly (spec Sec. 5.1-5.4):

* ``udr_pgd``: ``clean_weight CE(f(x), y) + beta CE(f(x^a), y)`` (Table 1: both weights 1;
  UDR-PGD*, Sec. 5.2: ``clean_weight=0``), the attack maximising the CE.
* ``udr_trades``: ``CE(f(x), y) + beta KL(f(x^a), f(x))``, the attack maximising the KL.
* ``udr_mart``: the thesis's MART (Eq. 7, P9-P10): ``BCE(f(x), y) + beta (1 - p_y(x))
  KL(f(x^a), f(x))``, the attack maximising the KL (``variant="original"``: Wang et al.'s
  ``BCE(f(x^a), y) + beta (1 - p_y(x)) KL(...)``, the attack maximising the CE).
* ``udr_awp_at``: AWP-AT (``advjax.defenses.awp``, Sec. 5.5): ``CE(f_{w + gamma v}(x^a), y)``,
  ``x^a`` the UDR attack's (maximising the CE) at the unperturbed weights ``w``.

The attack must be a UDR attack (``{"name": "udr", ...}`` in a spec); ``beta = 1`` on MNIST.
The ``lambda`` options (``statistic``, ``lambda_learning_rate``, ``lambda_period``, ``lam_max``)
are ``learned_lambda``'s, with the released code's defaults (``advjax.defenses.udr_state``).
"""

from __future__ import annotations

import dataclasses

from advjax.attacks import Attack
from advjax.attacks.udr import UDRAttack
from advjax.defenses.awp import awp_at
from advjax.defenses.core import Defense
from advjax.defenses.published import mart, pgd_at, trades
from advjax.defenses.udr_state import LambdaFromState, bind_lambda, udr_lambda


def learned_lambda(
    defense: Defense,
    *,
    statistic: str = "mean_abs",
    lambda_learning_rate: float = 0.02,
    lambda_period: int = 10,
    lam_max: float | None = None,
    name: str | None = None,
) -> Defense:
    """``defense`` with UDR's learned ``lambda`` (Eq. 19; options as ``udr_lambda``): its one
    adversary whose attack takes ``lambda`` reads it from the state each step."""
    if defense.state_rule is not None:
        raise ValueError(f"defense {defense.name!r} already carries state ({defense.state_rule})")
    takes = [a for a in defense.adversaries if bind_lambda(a.attack, 0.0)[1]]
    if len(takes) != 1 or not isinstance(takes[0].attack, UDRAttack):
        raise ValueError(
            f"UDR needs exactly one adversary with a UDR attack ({{'name': 'udr', ...}}); "
            f"defense {defense.name!r} has {[type(a.attack).__name__ for a in defense.adversaries]}"
        )
    adversary = takes[0]
    rule = udr_lambda(
        adversary.attack,
        view=adversary.name,
        statistic=statistic,
        learning_rate=lambda_learning_rate,
        period=lambda_period,
        lam_max=lam_max,
    )
    adversaries = tuple(
        dataclasses.replace(a, from_state=LambdaFromState()) if a is adversary else a
        for a in defense.adversaries
    )
    return dataclasses.replace(
        defense,
        adversaries=adversaries,
        state_rule=rule,
        name=name or f"udr_{defense.name}",
    )


def udr_pgd(
    attack: Attack,
    beta: float = 1.0,
    clean_weight: float = 1.0,
    eps_warmup_steps: int = 0,
    statistic: str = "mean_abs",
    lambda_learning_rate: float = 0.02,
    lambda_period: int = 10,
    lam_max: float | None = None,
) -> Defense:
    """UDR-PGD (spec Sec. 5.1; ``clean_weight=0``: UDR-PGD*, Sec. 5.2)."""
    base = pgd_at(attack, eps_warmup_steps, beta=beta, clean_weight=clean_weight)
    return learned_lambda(
        base,
        name="udr_pgd",
        statistic=statistic,
        lambda_learning_rate=lambda_learning_rate,
        lambda_period=lambda_period,
        lam_max=lam_max,
    )


def udr_awp_at(
    attack: Attack,
    gamma: float = 0.01,
    awp_warmup_steps: int = 0,
    eps_warmup_steps: int = 0,
    statistic: str = "mean_abs",
    lambda_learning_rate: float = 0.02,
    lambda_period: int = 10,
    lam_max: float | None = None,
) -> Defense:
    """UDR-AWP-AT (spec Sec. 5.5): ``learned_lambda(awp_at(attack))``, the UDR attack at the
    unperturbed weights, the CE at ``w + gamma v``."""
    base = awp_at(attack, gamma, awp_warmup_steps, eps_warmup_steps)
    return learned_lambda(
        base,
        name="udr_awp_at",
        statistic=statistic,
        lambda_learning_rate=lambda_learning_rate,
        lambda_period=lambda_period,
        lam_max=lam_max,
    )


def udr_trades(
    attack: Attack,
    beta: float = 1.0,
    kl_base: str = "adv",
    eps_warmup_steps: int = 0,
    statistic: str = "mean_abs",
    lambda_learning_rate: float = 0.02,
    lambda_period: int = 10,
    lam_max: float | None = None,
) -> Defense:
    """UDR-TRADES (spec Sec. 5.3): TRADES with ``KL(f(x^a) || f(x))`` (``kl_base="adv"``, the
    thesis's direction) and the UDR attack maximising it."""
    base = trades(attack, beta, kl_base, eps_warmup_steps, monitor_jacobian=False)
    return learned_lambda(
        base,
        name="udr_trades",
        statistic=statistic,
        lambda_learning_rate=lambda_learning_rate,
        lambda_period=lambda_period,
        lam_max=lam_max,
    )


def udr_mart(
    attack: Attack,
    beta: float = 1.0,
    kl_base: str = "adv",
    variant: str = "thesis",
    eps_warmup_steps: int = 0,
    statistic: str = "mean_abs",
    lambda_learning_rate: float = 0.02,
    lambda_period: int = 10,
    lam_max: float | None = None,
) -> Defense:
    """UDR-MART (spec Sec. 5.4): the thesis's MART (Eq. 7) with the UDR attack maximising the
    KL; ``variant="original"``: Wang et al.'s MART (BCE on ``f(x^a)``, spec P10), the UDR attack
    maximising the CE."""
    base = mart(attack, beta, variant, kl_base, eps_warmup_steps, monitor_jacobian=False)
    return learned_lambda(
        base,
        name="udr_mart",
        statistic=statistic,
        lambda_learning_rate=lambda_learning_rate,
        lambda_period=lambda_period,
        lam_max=lam_max,
    )
