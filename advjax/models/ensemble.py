"""Ensembles: M members of one architecture with stacked parameters, a model like any other.

``Ensemble(member, size)`` lifts ``member`` with ``nn.vmap`` over a leading parameter axis: its
variables are ``{"params": {"members": <member params, each leaf [M, ...]>}, "batch_stats": ...}``,
members are initialised from independent keys, and one call runs every member on the same batch.
Its output is the ensemble's prediction:

* ``combine="probabilities"`` (default): ``log((1/M) sum_m softmax(f_m(x)))``, the log of the
  average of the members' probabilities. This is the thesis's ensemble (spec/thesis_ch4.md,
  "f^en = (1/N) sum_n f^n ... an average of softmax probabilities", used for attacks and
  evaluation), returned as log-probabilities so that ``argmax`` and cross-entropy read it as
  logits.
* ``combine="logits"``: ``(1/M) sum_m f_m(x)``, the average of the members' logits.

So every attack, the evaluation suite and the training step accept an ensemble unchanged. Named
features: ``member_logits`` (``[M, B, K]``) and each member feature as ``members/<name>``
(``[M, B, ...]``), read with ``advjax.models.forward``; a defense term can thus couple members.
``member_variables`` / ``ensemble_variables`` convert between the ensemble's layout and stacked
member variables (the member model's own layout with a leading ``[M]`` axis), which is what
``jax.vmap`` over a member-wise computation takes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.models.functional import FEATURE_COLLECTION

COMBINES = ("probabilities", "logits")
MEMBERS = "members"


class Ensemble(nn.Module):
    """``size`` copies of ``member`` with stacked parameters (see the module docstring)."""

    member: nn.Module
    size: int
    combine: str = "probabilities"

    @property
    def feature_names(self) -> tuple[str, ...]:
        inner = getattr(self.member, "feature_names", ())
        return ("member_logits", *(f"{MEMBERS}/{name}" for name in inner))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.combine not in COMBINES:
            raise ValueError(
                f"unknown ensemble combine {self.combine!r}; valid values: {', '.join(COMBINES)}"
            )
        if int(self.size) != self.size or self.size < 1:
            raise ValueError(f"an ensemble needs a positive integer size, got {self.size}")
        members = nn.vmap(
            type(self.member),
            variable_axes={"params": 0, "batch_stats": 0, FEATURE_COLLECTION: 0},
            split_rngs={"params": True},
            in_axes=(None, None),
            out_axes=0,
            axis_size=self.size,
        )
        fields = {
            f.name: getattr(self.member, f.name)
            for f in dataclasses.fields(self.member)
            if f.init and f.name not in ("parent", "name")
        }
        logits = members(**fields, name=MEMBERS)(x, train)  # [M, B, K]
        self.sow(FEATURE_COLLECTION, "member_logits", logits)
        if self.combine == "logits":
            return jnp.mean(logits, axis=0)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        return jax.nn.logsumexp(log_probs, axis=0) - math.log(self.size)


def member_variables(variables: dict[str, Any]) -> dict[str, Any]:
    """The ensemble's variables as stacked member variables (``{"params": [M, ...], ...}``)."""
    return {name: collection[MEMBERS] for name, collection in variables.items() if collection}


def ensemble_variables(members: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``member_variables``."""
    return {name: {MEMBERS: collection} for name, collection in members.items() if collection}


def member(variables: dict[str, Any], index: int) -> dict[str, Any]:
    """Member ``index``'s own variables (for ``ensemble.member`` alone)."""
    return jax.tree.map(lambda leaf: leaf[index], member_variables(variables))
