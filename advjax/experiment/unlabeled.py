"""Data steps on a training set's unlabeled pool, before training (``train_and_evaluate``).

``data.num_unlabeled`` [0: all] keeps a seeded choice of that many unlabeled examples (SRT
Sec. 4.5); ``data.pseudo_labels_from`` [""] labels them once with the predictions of the model
trained in that workdir (its best checkpoint), for the self-training defenses (``rst``, ``uat``
FT / UAT++). The teacher must have read the same labeled subset as the run, so that its
pseudo-labels leak no label the run may not read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from advjax import defenses
from advjax.data import Dataset
from advjax.data.pseudo_labels import pseudo_label, subsample_unlabeled
from advjax.experiment.workdir import load_config, restore_variables
from advjax.models import make_model_fn


def unlabeled_data(config: ml_collections.ConfigDict, train: Dataset) -> Dataset:
    """``train`` after the configured data steps on its unlabeled pool (module docstring): keep
    ``data.num_unlabeled`` of it (``subsample_unlabeled``, seeded by ``config.seed``), then label
    it with the teacher in ``data.pseudo_labels_from`` (``pseudo_label``). Pseudo-labels are for
    defenses that read a label on every row: one that trains on unlabeled rows itself (SRT, RT,
    UAT-OT) is refused them."""
    data = config.data
    num_unlabeled = data.get("num_unlabeled", 0) or 0
    if num_unlabeled:
        train = subsample_unlabeled(train, num_unlabeled, config.seed)
    teacher = data.get("pseudo_labels_from", "") or ""
    if not teacher:
        return train
    if defenses.build(config.defense).supports_unlabeled:
        raise ValueError(
            f"defense {config.defense.name!r} trains on unlabeled examples as they are; "
            f"data.pseudo_labels_from={teacher!r} would label them: set it to '' (pseudo-labels "
            "are for rst and uat's 'ft' / 'plus_plus' variants)"
        )
    return pseudo_label(train, _teacher(config, teacher, train.image_shape))


def _labeled_split(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What decides which training labels a run may read (``builders.load_splits``)."""
    data = config.data
    split = {
        "seed": config.seed,
        "dataset": data.name,
        **{k: data.get(k, 0) or 0 for k in ("num_validation", "num_train", "num_labeled")},
    }
    if "synthetic" in (data.get("source", "auto"), data.name):
        synthetic = data.get("synthetic", None) or {}
        synthetic = synthetic.to_dict() if hasattr(synthetic, "to_dict") else dict(synthetic)
        split["synthetic"] = json.loads(json.dumps(synthetic))  # tuples as lists, as in JSON
    return split


def _teacher(
    config: ml_collections.ConfigDict, workdir: str, image_shape: tuple[int, ...]
) -> Callable[[np.ndarray], jax.Array]:
    """``predict(x) -> logits`` of the best checkpoint trained in ``workdir``, once it is checked to
    have read no label this run may not (same labeled subset, hence the same split and seed)."""
    try:
        teacher_config = load_config(workdir)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"data.pseudo_labels_from={workdir!r}: {error} Train the teacher first, e.g. "
            f"python -m launch.train --config=configs/mnist.py:natural_labeled --workdir={workdir}"
        ) from None
    ours, theirs = _labeled_split(config), _labeled_split(teacher_config)
    if not theirs["num_labeled"] or theirs != ours:
        raise ValueError(
            f"the teacher in {workdir} was trained on other labels ({theirs}) than this run may "
            f"read ({ours}): its pseudo-labels would leak the labels of unlabeled examples"
        )
    model, variables, info = restore_variables(teacher_config, workdir, "best", image_shape)
    logging.info("pseudo-labels from %s, checkpoint %s", workdir, info)
    model_fn = jax.jit(make_model_fn(model))
    return lambda x: model_fn(variables, x)
