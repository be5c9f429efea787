"""From a config to the objects of an experiment: data, model, defense and the initial state."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from advjax import defenses
from advjax.data import Dataset, labeled_part, load_dataset, split_validation, with_labeled_subset
from advjax.models import Ensemble, get_model, init_variables
from advjax.train.optim import make_optimizer, plateau_rule
from advjax.train.schedules import initial_plateau_state
from advjax.train.state import create_train_state


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list | tuple) else value


def build_model(config: ml_collections.ConfigDict):
    """The configured model; with ``ensemble.members > 1`` an ``Ensemble`` of that many copies,
    combined by ``ensemble.combine`` (``advjax.models.ensemble``)."""
    kwargs = {k: _hashable(v) for k, v in config.model.items() if k != "name"}
    model = get_model(config.model.name, **kwargs)
    ensemble = config.get("ensemble", None) or {}
    if ensemble.get("members", 1) > 1:
        model = Ensemble(model, ensemble["members"], ensemble.get("combine", "probabilities"))
    return model


def build_defense(config: ml_collections.ConfigDict, model, steps_per_epoch: int, train=None):
    """The configured defense (``defenses.build``), per member for an ensemble
    (``defenses.for_model``); checks that it may see ``train``'s unlabeled examples."""
    defense = defenses.for_model(defenses.build(config.defense, steps_per_epoch), model)
    if train is not None and train.labeled is not None and not defense.supports_unlabeled:
        raise ValueError(
            f"data.num_labeled={config.data.num_labeled} leaves unlabeled training examples, but "
            f"defense {config.defense.name!r} trains on every example's label; use a "
            "semi-supervised defense (rt, srt, fast_srt), data.labeled_only=True (train on the "
            "labeled examples alone) or data.num_labeled=0"
        )
    return defense


def load_split(config: ml_collections.ConfigDict, split: str, data_dir: str | None = None):
    """Loads ``split`` of the configured dataset (``data.synthetic`` holds synthetic options)."""
    data = config.data
    source = data.get("source", "auto")
    kwargs = dict(data.get("synthetic", {})) if "synthetic" in (source, data.name) else {}
    data_dir = data_dir if data_dir is not None else (data.get("data_dir") or None)
    return load_dataset(data.name, split, data_dir, source, **kwargs)


def load_splits(config: ml_collections.ConfigDict) -> tuple[Dataset, Dataset | None]:
    """The training set and the held-out validation split carved from it.

    With ``data.num_labeled > 0``, only that many (seeded choice) of the remaining training
    examples stay labeled (``advjax.data.with_labeled_subset``); validation keeps its labels.
    With ``data.labeled_only`` the training set is those labeled examples alone. With
    ``data.num_train > 0`` only the first ``num_train`` of the remaining training examples are
    used (short schedules that still see real data).
    """
    data = config.data
    train, val = load_split(config, "train"), None
    if data.get("num_validation", 0) > 0:
        train, val = split_validation(train, data.num_validation, config.seed)
    num_train = data.get("num_train", 0) or 0
    if num_train < 0:
        raise ValueError(f"data.num_train must be >= 0 (0: every example), got {num_train}")
    if num_train:
        train = train.take(np.arange(min(num_train, len(train))))
    num_labeled = data.get("num_labeled", 0) or 0
    labeled_only = data.get("labeled_only", False)
    if labeled_only and not num_labeled:
        raise ValueError(
            "data.labeled_only=True needs data.num_labeled > 0 (how many training images keep "
            "their labels); with every image labeled there is nothing to leave out"
        )
    if num_labeled:
        train = with_labeled_subset(train, num_labeled, config.seed)
        if labeled_only:
            train = labeled_part(train)
    return train, val


def initial_state(config, model, image_shape, steps_per_epoch: int, defense_state=None):
    """(state at step 0, optimiser, schedule); ``defense_state`` is ``defense.init_state()``,
    and the state holds the plateau rule's state when ``train.plateau`` is on."""
    key = jax.random.key(config.seed)
    init_key, state_key = jax.random.split(key)
    variables = init_variables(model, init_key, image_shape)
    tx, schedule = make_optimizer(config.train, steps_per_epoch)
    schedule_state = initial_plateau_state() if plateau_rule(config.train) else {}
    schedule_state = jax.tree.map(np.asarray, schedule_state)
    state = create_train_state(variables, tx, state_key, defense_state, schedule_state)
    return state, tx, schedule
