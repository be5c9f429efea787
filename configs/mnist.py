"""MNIST configs: natural training, PGD-AT, fast AT and the ATLAS-document objectives (Linf 0.3).

Variants (``--config=configs/mnist.py:VARIANT``): ``natural``, ``pgd_at``, ``fast_at`` (Wong et
al. 2020's MNIST setting: their small net, Adam, cyclic learning rate), and the ATLAS document's
Table 1 objectives (App. B weights for MNIST): ``adv`` (one-step ADV, i.e. fast AT), ``jac``
(zero-step JAC, alpha 0.5), ``trades`` (one-step TRADES, beta 1, KL adversary), ``atlas``
(one-step ATLAS, alpha 1e-5, beta 0.3), ``atlas_l``, ``atlas_g``, ``trades_jac``, ``mart``. Every
adversarial variant uses a one-step adversary (FGSM from a random start, step 1.25 eps); the
multi-step (PGD-20) versions set ``defense.attack = configs.common.pgd(0.3, 0.01, 20)`` (in Python
or a config file of one's own). The Table 1 objectives train on the document's schedule (Sec. 5,
App. B): SGD with momentum 0.9 and lr 0.01, batch 128, eps warmed up over 15 epochs, the
learning rate divided by 5 after 2 epochs without a better validation PGD-20 accuracy, and a stop
after 10. Their network is Wong et al.'s 2-conv + 2-FC CNN (``mnist_fast_at``): the document
says only "a 4-layer CNN, 2 convolutional layers followed by 2 fully connected layers", and its
one-step ADV "is an implementation of (Wong et al., 2020)".

The SRT document's pixel-wise MNIST setting (App. C: the 4-conv + 3-FC CNN, Linf eps 0.1,
PGD-20 with step 0.01, lambda 0.2, SGD lr 0.01, 10,000 labeled training images): ``rt``
(robust training on the labeled images only), ``srt`` (semi-supervised: the robust term also on
the unlabeled ones), ``fast_srt`` (App. J: FGSM from a random start and a cyclic learning rate).

The SRT document's spatial MNIST setting (Tables 3 and 5: rotations within +-30 degrees and
translations within +-3 px, the 4-conv CNN): ``worst_of_k`` (Worst-of-10 adversarial training,
Engstrom et al. 2019), ``klr`` (Yang et al. 2019: TRADES with a Worst-of-10 KL adversary),
``rt_spatial`` and ``srt_spatial`` (RT/SRT, lambda 0.2, the robust term on the Worst-of-10
transform). All four see the same 10,000 labeled images; the supervised baselines train on those
alone (``data.labeled_only``), as SRT Sec. 4 sets every experiment up. They train 10 epochs with
the cyclic learning rate of fast SRT's spatial version (App. J; the document's full schedule is
80,000 iterations at lr 0.1, App. B) and are evaluated with ``clean,rand_adv,grid_adv``.

Compositions of existing parts (nothing new in the library): ``ave_at`` and ``max_at`` (seed 001
Sec. 4.1, Tramer & Boneh 2019: the average / per-example maximum CE over PGD-10, flow and affine
RT adversaries, 10 steps each), ``flow_at`` and ``rt_at`` (PGD-AT against the flow and the affine
RT attack alone), ``pareto_at`` (Pareto AT, seed 001 Sec. 4.2, over the same three adversaries),
``natural_cnn4`` and ``pgd10_at`` (natural training and PGD-10 AT on the same network: the
baselines of ``python -m launch.pareto_front``), ``at_plus`` and ``srt_plus`` (SRT App. F: AT
and SRT whose adversary is PGD-20 at eps 0.1 followed by Worst-of-10, the compound PGD+
neighbourhood). Their schedules are the base
one (10 epochs, our choice); no figures yet.

The SRT document's pixel-wise comparison with the semi-supervised baselines (Table 4, App. E:
Linf eps 0.3, PGD-40 with step 0.01, SRT lambda 1, TRADES-type beta 1 on MNIST; the 4-conv CNN,
10,000 labeled images, the CPU schedule of the pixel-wise SRT configs): ``natural_labeled``
(standard training on the labeled images alone: the teacher whose predictions label the unlabeled
ones), ``uat`` (UAT++, Uesato et al. 2019; ``--config.defense.variant=ot
--config.data.pseudo_labels_from=`` for UAT-OT), ``rst`` (RST, Carmon et al. 2019, half of each
batch pseudo-labeled as in its code) and ``srt_table4`` (SRT, lambda 1). ``uat`` and ``rst`` read
the teacher from ``data.pseudo_labels_from`` (default ``workdirs/mnist_natural_labeled``): train it
first. ``--config.data.num_unlabeled=N`` keeps N of the unlabeled images (SRT Sec. 4.5)::

    python -m launch.train --config=configs/mnist.py:natural_labeled \
        --workdir=workdirs/mnist_natural_labeled
    python -m launch.train --config=configs/mnist.py:uat --workdir=workdirs/mnist_uat
    python -m launch.evaluate --workdir=workdirs/mnist_uat    # likewise rst, srt_table4

Train, then evaluate on the first 1,000 test images (clean, PGD-40 with step 0.01 from a random
start, APGD-CE and APGD-T, eps 0.3; other attacks with ``--suite=clean,pgd40,aa_standard``, all
10,000 images with ``--num_examples=0``)::

    python -m launch.train --config=configs/mnist.py:fast_at --workdir=workdirs/mnist_fast_at
    python -m launch.evaluate --workdir=workdirs/mnist_fast_at

Expected on a 2-core CPU (see results/mnist.md for the measured figures):
  natural  3 epochs, about 1 min/epoch: >= 99% clean.
  fast_at  10 epochs, about 15 s/epoch: >= 98.5% clean, >= 88% PGD-40 on the 10k test set
           (measured 98.95 / 90.24 on a Xeon VM, 99.04 / 88.95 on an EPYC VM); on the first
           1,000 points 99.1% clean and 53.5% under the default suite's worst case (EPYC;
           AutoAttack standard: 45.3%).
  pgd_at   PGD-20 (step 0.01) adversaries on mnist_small: 21 gradient evaluations a step, not 2.
  adv, trades, atlas  stopped by the plateau rule after 35-54 epochs, 30-60 s/epoch; one-step
           ATLAS 98.6% clean / 77.1% Un-T on 1,000 test points, ADV 98.6 / 60.8
           (results/mnist_defenses.md).
Any field can be overridden, e.g. ``--config.train.epochs=1 --config.data.data_dir=/data``.

Layout: ``BASE`` holds the defaults; each variant is ``BASE`` merged with its family's overrides
and its own (``VARIANTS``; ``common.merge``: a dict with a ``name`` is a spec and replaces the old
one wholesale). ``defense`` is a ``defenses.build`` spec: a defense name, its hyperparameters and
a nested ``attack`` spec (``attacks.build``).
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.common import fgsm_rs, pgd

EPS = 0.3  # ATLAS document, Wong et al. 2020
SRT_EPS = 0.1  # SRT App. C

BASE = dict(
    seed=0,
    data=dict(
        name="mnist",
        source="auto",
        data_dir="",
        num_validation=5000,
        augment=False,
        synthetic=dict(num_examples=1024),  # used with source=synthetic (tests, smoke runs)
        num_labeled=0,  # > 0: only this many training images keep their labels (SRT)
        labeled_only=False,  # with num_labeled: train on the labeled images alone
        num_unlabeled=0,  # > 0: keep this many unlabeled images (SRT Sec. 4.5)
        pseudo_labels_from="",  # a teacher's workdir: label the unlabeled images (rst, uat)
        unlabeled_fraction=0.0,  # > 0: the unlabeled part of each batch (0: in proportion)
        num_train=0,  # > 0: train on the first num_train training images only (short schedules)
    ),
    # The Madry-style network (3.2M parameters); families below pick others.
    model=dict(name="mnist_small"),
    train=dict(
        epochs=10,
        batch_size=128,
        optimizer="sgd",
        momentum=0.9,
        nesterov=False,
        learning_rate=0.02,
        schedule="cyclic",  # linear 0 -> lr over peak_fraction of training, then -> 0
        peak_fraction=0.4,
        weight_decay=0.0,
        log_every=50,
        checkpoint_every_steps=200,
        keep_checkpoints=2,
        progress=True,
        # ATLAS App. B validation-guided schedule (enabled=True turns it on): LR / factor after
        # `patience` validations without improvement, stop after `stop_patience`.
        plateau=dict(
            enabled=False,
            patience=2,
            factor=5.0,
            stop_patience=10,
            min_delta=0.0,
            max_reductions=0,
            metric="",
        ),
    ),
    # Validation on held-out training images after every epoch (ATLAS: PGD-20, step 0.01).
    validation=dict(
        attack=dict(name="pgd", eps=EPS, step_size=0.01, steps=20),
        num_examples=1000,
        batch_size=500,
        every_epochs=1,
        # The best checkpoint maximises this.
        metric="val_robust_accuracy",
        # Catastrophic-overfitting monitor (ATLAS App. E): flag a robust-accuracy drop of more
        # than co_drop below the best, or a Jacobian-norm estimate co_jac_factor x the last one.
        co_drop=0.1,
        co_jac_factor=10.0,
        jac_examples=100,
    ),
    # `python -m launch.evaluate`: the test set under the attacks of `suite` (names from
    # advjax.eval.presets, comma-separated; e.g. "clean,pgd20,pgd1000,untargeted,multitargeted,
    # aa_standard" for ATLAS Table 1), Linf eps 0.3, PGD-family step 0.01 (ATLAS App. B).
    # The default adds AutoAttack's two gradient attacks (APGD-CE, APGD-T) to PGD-40, on the
    # first 1,000 test images: PGD-40 alone said 90% where AutoAttack leaves 47% of one-step AT.
    evaluate=dict(
        suite="clean,pgd40,apgd_ce,apgd_t",
        norm="linf",
        eps=str(EPS),  # a number or an exact fraction such as "8/255"
        step_size=0.01,
        restarts=1,
        batch_size=500,
        num_examples=1000,  # the first N test images; 0: the whole test set
        checkpoint="best",
        checks=True,  # gradient-masking checks (advjax.eval.checks) on the first points
        check_examples=200,
    ),
    # ensemble.members > 1 trains that many copies of the model in one step (advjax.models.Ensemble;
    # combine: "probabilities", the thesis's average of softmax outputs, or "logits").
    ensemble=dict(members=1, combine="probabilities"),
    distributed=common.distributed(),
)

# ATLAS App. B (Table 1): Wong et al.'s 2-conv + 2-FC network, SGD lr 0.01, eps warmed up over
# 15 epochs (Sec. 5), the learning rate divided by 5 after 2 epochs without a better validation
# PGD-20 accuracy and a stop after 10 (60 epochs is only a cap).
ATLAS_TABLE1 = dict(
    model=dict(name="mnist_fast_at"),
    train=dict(epochs=60, learning_rate=0.01, schedule="constant", plateau=dict(enabled=True)),
)


def _table1(name: str, **weights) -> dict:
    """An ATLAS Table 1 objective with a one-step adversary and App. B's MNIST weights."""
    defense = dict(name=name, attack=fgsm_rs(EPS), eps_warmup_epochs=15, **weights)
    return common.merge(ATLAS_TABLE1, dict(defense=defense))


# SRT App. C, pixel-wise MNIST: the 4-conv + 3-FC CNN, Linf eps 0.1, PGD-20 with step 0.01,
# lambda 0.2, SGD lr 0.01, 10,000 labeled training images; PGD-40 with step 0.005 to evaluate.
SRT_PIXEL = dict(
    model=dict(name="mnist_cnn4"),
    data=dict(num_labeled=10_000),
    train=dict(learning_rate=0.01, schedule="constant"),
    validation=dict(attack=dict(name="pgd", eps=SRT_EPS, step_size=0.01, steps=20)),
    evaluate=dict(eps=str(SRT_EPS), step_size=0.005),
)

# SRT Tables 3 and 5, spatial MNIST: rotations within +-30 degrees and translations within +-3
# px, the robust term on the Worst-of-10 transform; 10 epochs with the cyclic learning rate of
# fast SRT's spatial version (App. J; the document's full schedule is 80,000 iterations at lr 0.1,
# App. B). SRT Sec. 4 keeps 10,000 labeled training images "in all experiments": its supervised
# baselines see only those (Table 3's Standard MNIST model is at 97.19% clean, a 10,000-image
# figure; ``data.labeled_only``), while SRT also uses the unlabeled rest.
WORST_OF_10 = dict(name="worst_of_k", steps=10)
SRT_SPATIAL = dict(
    model=dict(name="mnist_cnn4"),
    data=dict(num_labeled=10_000, labeled_only=True),
    validation=dict(attack=WORST_OF_10),
    evaluate=dict(num_examples=0, suite="clean,rand_adv,grid_adv"),
)
# RT/SRT on spatial data keep the unlabeled images and SRT's pixel-wise evaluation settings.
SRT_SPATIAL_SEMI = dict(
    data=dict(labeled_only=False), evaluate=dict(eps=str(SRT_EPS), step_size=0.005)
)

# Seed 001 Sec. 4.1 (Tramer & Boneh 2019): training against several perturbation types at once,
# Linf PGD, flow (local spatial) and the generic affine RT attack (global spatial), each 10 steps
# (our choice; bounds as advjax.eval.presets's spatial defaults: flow 0.05 and affine 0.1 in
# normalised coordinates), on the 4-conv CNN with the base schedule.
PGD10 = pgd(EPS, 0.03, 10)
FLOW = dict(name="flow_pgd", eps_flow=0.05, steps=10)
AFFINE_RT = dict(name="affine_pgd", eps_affine=0.1, steps=10)
MULTI_PERTURBATION = dict(model=dict(name="mnist_cnn4"))
# Every defense of the family names its warm-up, so that one override states it for all of them
# (``--override=defense.eps_warmup_epochs=2`` in launch.pareto_front).
NO_WARMUP = dict(eps_warmup_epochs=0)
# SRT App. F: compound defenses train on PGD followed by Worst-of-10 (the pixel-wise SRT setting).
PGD_PLUS = dict(name="sequence", attacks=[pgd(SRT_EPS, 0.01, 20), WORST_OF_10])

# Thesis Ch. 5 (UDR; spec thesis_ch5_6.md Sec. 6.3-6.4, Tables 1-2): every method trains on a
# 40-step adversary at eps 0.3, step 0.01, beta = 1. The UDR adversary is the spec's MNIST one:
# the soft-ball cost of Eq. 16 on the Linf ground cost with tau = 2 eta = 0.02, lambda learned
# by Eq. 19 on that cost (statistic "soft"; lambda_0 = 1, lr 0.02 every 10 steps as the released
# code, capped at tau / eta = 2, P4). The standard counterparts use PGD-40 (their KL versions for
# TRADES and MART, the thesis's direction KL(f(x^a) || f(x)), MART Eq. 7). The thesis's network
# is the 4-conv C&W CNN (mnist_cnn4) trained 100 epochs with SGD; the CPU schedule of
# results/udr_mnist.md is `CH5_CPU_SCHEDULE` below (stated there), the full one is
# `--config.model.name=mnist_cnn4 --config.train.epochs=100 ...` on an accelerator.
CH5_EPS, CH5_STEP, CH5_STEPS, CH5_TAU = EPS, 0.01, 40, 0.02
CH5_PGD = pgd(CH5_EPS, CH5_STEP, CH5_STEPS)
CH5_UDR = dict(
    name="udr",
    eps=CH5_EPS,
    step_size=CH5_STEP,
    steps=CH5_STEPS,
    cost="soft",
    ground_cost="linf",
    tau=CH5_TAU,
)
CH5_LAMBDA = dict(statistic="soft", lam_max=CH5_TAU / CH5_STEP)
# A second reading (the released CIFAR code's pull, spec Sec. 4.4-4.5): the elementwise excess over
# the Linf box (squared hinge) with the MNIST tau = 0.02, so that a pixel settles at
# eps + tau / lambda - eta, and lambda from the per-pixel mean |delta|. Its learning rate 0.1 (5x
# the code's) lets lambda drift on a 300-step schedule about as far as the code's 0.02 would over
# many epochs (spec Sec. 4.5: lambda about 0.7 after 200 CIFAR epochs, "tends to decrease to 0").
CH5_UDR_BOX = dict(CH5_UDR, cost="squared_hinge")
CH5_LAMBDA_BOX = dict(statistic="mean_abs", lambda_learning_rate=0.1)
CH5 = dict(
    model=dict(name="mnist_fast_at"),
    train=dict(batch_size=100, optimizer="adam", learning_rate=5e-3),
    evaluate=dict(suite="clean,pgd200,aa_standard,brendel_bethge", num_examples=1000),
)
# The CPU schedule of results/udr_mnist.md: Wong et al.'s 2-conv net, the first 6,000 training
# images, 5 epochs (300 steps of 100), Adam with the cyclic peak 5e-3, eps warmed up over 2.
CH5_CPU_SCHEDULE = dict(data=dict(num_train=6000), train=dict(epochs=5))


def _ch5(defense: dict) -> dict:
    return common.merge(CH5, CH5_CPU_SCHEDULE, dict(defense=dict(eps_warmup_epochs=2, **defense)))


# SRT Table 4 / App. E, pixel-wise MNIST against UAT and RST: Linf eps 0.3 and PGD-40 with step
# 0.01 ("the number of iterations and the perturbation size is modified to 40 and 0.3 on MNIST"),
# SRT lambda 1, beta 1 for the TRADES-type objectives (1/lambda = 1 on MNIST), UAT's beta 6 (the
# document lowered it to 1 on CIFAR-10 only); evaluated with FGSM, PGD-40 and MI-FGSM at step 0.01.
# The schedule is SRT_PIXEL's (10 epochs at lr 0.01; App. E: 120 epochs at lr 0.05) with eps
# warmed up over the first epoch (our choice, as pgd_at's). UAT and RST label the unlabeled images
# once with the teacher ``natural_labeled`` (standard training on the 10,000 labeled images).
TABLE4_EPS = 0.3
TABLE4_PGD = pgd(TABLE4_EPS, 0.01, 40)
TABLE4_TEACHER = "workdirs/mnist_natural_labeled"
SRT_TABLE4 = common.merge(
    SRT_PIXEL,
    dict(
        # The data steps on the unlabeled pool (advjax.experiment.unlabeled.unlabeled_data).
        data=dict(num_unlabeled=0, pseudo_labels_from="", unlabeled_fraction=0.0),
        validation=dict(attack=dict(name="pgd", eps=TABLE4_EPS, step_size=0.01, steps=20)),
        evaluate=dict(
            num_examples=0, suite="clean,fgsm,pgd40,mifgsm", eps=str(TABLE4_EPS), step_size=0.01
        ),
    ),
)
TABLE4_WARMUP = dict(eps_warmup_epochs=1)


VARIANTS: dict[str, dict] = {
    "natural": dict(
        defense=dict(name="natural"),
        train=dict(epochs=3, optimizer="adam", learning_rate=1e-3),
        validation=dict(metric="val_clean_accuracy"),
    ),
    # PGD-20 (step 0.01) adversaries on mnist_small: 21 gradient evaluations a step, not 2.
    "pgd_at": dict(
        defense=dict(name="pgd_at", attack=pgd(EPS, 0.01, 20), eps_warmup_epochs=3),
        train=dict(epochs=30),
    ),
    # Wong et al. (2020)'s MNIST recipe (their 166k-parameter net, Adam with a cyclic peak of
    # 5e-3, batch 100, 10 epochs) plus a 3-epoch eps warm-up: without it the run overfit
    # catastrophically in epoch 2. With Adam (lr 1e-3) the 3.2M-parameter mnist_small overfit
    # catastrophically as soon as eps reached 0.3, with FGSM steps of 1.25 eps and of eps alike;
    # SGD with momentum, as ATLAS trains, did not (results/mnist.md).
    "fast_at": dict(
        model=dict(name="mnist_fast_at"),
        defense=dict(name="fast_at", attack=fgsm_rs(EPS), eps_warmup_epochs=3),
        train=dict(batch_size=100, optimizer="adam", learning_rate=5e-3),
    ),
    # One-step ADV is Wong et al. (2020)'s fast AT (ATLAS Sec. 5).
    "adv": _table1("fast_at"),
    "jac": common.merge(ATLAS_TABLE1, dict(defense=dict(name="jac", alpha=0.5))),
    "trades": _table1("trades", beta=1.0, kl_base="clean"),
    "atlas": _table1("atlas", alpha=1e-5, beta=0.3, kl_base="adv"),
    "atlas_l": _table1("atlas_l", alpha=1e-5),
    "atlas_g": _table1("atlas_g", beta=0.3, kl_base="adv"),
    "trades_jac": _table1("trades_jac", alpha=1e-5, beta=1.0, kl_base="clean"),  # our choice
    "mart": _table1("mart", beta=5.0, variant="original"),
    "rt": common.merge(
        SRT_PIXEL, dict(defense=dict(name="rt", attack=pgd(SRT_EPS, 0.01, 20), lam=0.2))
    ),
    "srt": common.merge(
        SRT_PIXEL, dict(defense=dict(name="srt", attack=pgd(SRT_EPS, 0.01, 20), lam=0.2))
    ),
    # SRT App. J: FGSM from a random start and a cyclic learning rate.
    "fast_srt": common.merge(
        SRT_PIXEL,
        dict(
            defense=dict(name="fast_srt", attack=fgsm_rs(SRT_EPS), lam=0.2),
            train=dict(learning_rate=0.02, schedule="cyclic"),
        ),
    ),
    # Worst-of-10 adversarial training (Engstrom et al. 2019).
    "worst_of_k": common.merge(SRT_SPATIAL, dict(defense=dict(name="pgd_at", attack=WORST_OF_10))),
    # KLR (Yang et al. 2019): TRADES with a Worst-of-10 KL adversary.
    "klr": common.merge(SRT_SPATIAL, dict(defense=dict(name="klr", attack=WORST_OF_10, beta=1.0))),
    "rt_spatial": common.merge(
        SRT_SPATIAL,
        SRT_SPATIAL_SEMI,
        dict(defense=dict(name="rt", attack=WORST_OF_10, lam=0.2)),
    ),
    "srt_spatial": common.merge(
        SRT_SPATIAL,
        SRT_SPATIAL_SEMI,
        dict(defense=dict(name="srt", attack=WORST_OF_10, lam=0.2)),
    ),
    # Compositions of existing parts: defenses over several adversaries, spatial and compound AT.
    "ave_at": common.merge(
        MULTI_PERTURBATION,
        dict(
            defense=dict(
                name="ave_at", attacks=dict(pgd=PGD10, flow=FLOW, rt=AFFINE_RT), **NO_WARMUP
            )
        ),
    ),
    "max_at": common.merge(
        MULTI_PERTURBATION,
        dict(
            defense=dict(
                name="max_at", attacks=dict(pgd=PGD10, flow=FLOW, rt=AFFINE_RT), **NO_WARMUP
            )
        ),
    ),
    "flow_at": common.merge(
        MULTI_PERTURBATION, dict(defense=dict(name="pgd_at", attack=FLOW, **NO_WARMUP))
    ),
    "rt_at": common.merge(
        MULTI_PERTURBATION, dict(defense=dict(name="pgd_at", attack=AFFINE_RT, **NO_WARMUP))
    ),
    # Seed 001 Sec. 4.2-4.3: Pareto AT over the same three adversaries (r and the window of 50
    # steps are ours to choose: python -m launch.pareto_front sweeps r), and the natural and
    # PGD-AT baselines of its Pareto front on the same network and schedule.
    "pareto_at": common.merge(
        MULTI_PERTURBATION,
        dict(
            defense=dict(
                name="pareto_at",
                attacks=dict(pgd=PGD10, flow=FLOW, rt=AFFINE_RT),
                r=1.0,
                window=50,
                **NO_WARMUP,
            )
        ),
    ),
    "natural_cnn4": common.merge(
        MULTI_PERTURBATION, dict(defense=dict(name="natural", **NO_WARMUP))
    ),
    "pgd10_at": common.merge(
        MULTI_PERTURBATION, dict(defense=dict(name="pgd_at", attack=PGD10, **NO_WARMUP))
    ),
    "at_plus": common.merge(
        SRT_PIXEL,
        dict(
            data=dict(labeled_only=True),
            defense=dict(name="pgd_at", attack=PGD_PLUS),
            evaluate=dict(num_examples=0, suite="clean,pgd40,grid_adv"),
        ),
    ),
    "srt_plus": common.merge(
        SRT_PIXEL,
        dict(
            defense=dict(name="srt", attack=PGD_PLUS, lam=0.2),
            evaluate=dict(num_examples=0, suite="clean,pgd40,grid_adv"),
        ),
    ),
    # Thesis Ch. 5, Tables 1-2 (see CH5 above): each standard method and its UDR version.
    "ch5_pgd_at": _ch5(dict(name="pgd_at", attack=CH5_PGD, beta=1.0, clean_weight=1.0)),
    "ch5_udr_pgd": _ch5(
        dict(name="udr_pgd", attack=CH5_UDR, beta=1.0, clean_weight=1.0, **CH5_LAMBDA)
    ),
    "ch5_trades": _ch5(dict(name="trades", attack=CH5_PGD, beta=1.0, kl_base="adv")),
    "ch5_udr_trades": _ch5(
        dict(name="udr_trades", attack=CH5_UDR, beta=1.0, kl_base="adv", **CH5_LAMBDA)
    ),
    "ch5_mart": _ch5(dict(name="mart", attack=CH5_PGD, beta=1.0, variant="thesis", kl_base="adv")),
    "ch5_udr_pgd_box": _ch5(
        dict(name="udr_pgd", attack=CH5_UDR_BOX, beta=1.0, clean_weight=1.0, **CH5_LAMBDA_BOX)
    ),
    "ch5_udr_trades_box": _ch5(
        dict(name="udr_trades", attack=CH5_UDR_BOX, beta=1.0, kl_base="adv", **CH5_LAMBDA_BOX)
    ),
    # WRM (Sinha et al. 2018; Table 9): robust-only CE on the WRM adversary, the thesis's best
    # MNIST gamma 0.05 (eps = 0.5 / gamma = 10 in its and Sinha et al.'s convention).
    "ch5_wrm": _ch5(dict(name="pgd_at", attack=dict(name="wrm", gamma=0.05))),
    "ch5_udr_mart": _ch5(
        dict(name="udr_mart", attack=CH5_UDR, beta=1.0, kl_base="adv", **CH5_LAMBDA)
    ),
    # Wang et al.'s MART (spec P10): the thesis's Eq. 7 weights its only robust term by
    # 1 - p_y(x), which vanishes once the clean output is confident (ch5_mart collapses to 0%).
    "ch5_mart_original": _ch5(dict(name="mart", attack=CH5_PGD, beta=1.0, variant="original")),
    "ch5_udr_mart_original_box": _ch5(
        dict(
            name="udr_mart",
            attack=CH5_UDR_BOX,
            beta=1.0,
            variant="original",
            kl_base="clean",
            **CH5_LAMBDA_BOX,
        )
    ),
    "ch5_udr_mart_box": _ch5(
        dict(name="udr_mart", attack=CH5_UDR_BOX, beta=1.0, kl_base="adv", **CH5_LAMBDA_BOX)
    ),
    # SRT Table 4 (see SRT_TABLE4 above): the teacher, UAT++, RST and SRT on one schedule.
    "natural_labeled": common.merge(
        SRT_TABLE4,
        dict(
            data=dict(labeled_only=True),
            defense=dict(name="natural"),
            validation=dict(metric="val_clean_accuracy"),
        ),
    ),
    "uat": common.merge(
        SRT_TABLE4,
        dict(
            data=dict(pseudo_labels_from=TABLE4_TEACHER),
            defense=dict(
                name="uat", attack=TABLE4_PGD, beta=6.0, variant="plus_plus", **TABLE4_WARMUP
            ),
        ),
    ),
    "rst": common.merge(
        SRT_TABLE4,
        dict(
            data=dict(pseudo_labels_from=TABLE4_TEACHER, unlabeled_fraction=0.5),
            defense=dict(name="rst", attack=TABLE4_PGD, beta=1.0, **TABLE4_WARMUP),
        ),
    ),
    "srt_table4": common.merge(
        SRT_TABLE4, dict(defense=dict(name="srt", attack=TABLE4_PGD, lam=1.0, **TABLE4_WARMUP))
    ),
}


def get_config(arg: str = "fast_at") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}; valid variants: {', '.join(VARIANTS)}")
    return ml_collections.ConfigDict(common.merge(BASE, VARIANTS[arg]))
