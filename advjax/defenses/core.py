"""The defense core: a training objective as a weighted sum of terms over shared views.

A defense is a frozen dataclass, called inside the jitted train step::

    loss, aux = defense(model, variables, batch, keys, step=step, state=defense_state)

    loss = sum_k w_k(step, state) * L_k(views)

* **Adversaries** (``Adversary``) are generated once per step, each from the model in inference
  mode with the current parameters (or with BatchNorm in training mode, ``bn_train_mode``),
  reading the defense state where they need it (``from_state``, e.g. UDR's lambda), and
  are constants for the parameter gradient (Danskin's theorem, Madry et al. 2018, Sec. 2). An
  adversary's attack gets as ``y`` the true labels, the clean inference-mode logits (for an attack
  maximising a KL against the clean prediction) or the predicted labels ``C(x)`` (SRT).
* **Views** are training-mode forward passes: ``"clean"`` on ``x`` and one per adversary, named
  after it (``"adv"`` by default). A view is computed only when a term reads it, once, with its
  vector-Jacobian product when a term needs the Jacobian there. BatchNorm running statistics are
  chained through the passes in a fixed order (clean, then the adversaries in declaration order),
  as consecutive PyTorch forward passes in ``model.train()`` would update them.
* **Terms** (``advjax.defenses.terms``) are small pure functions of the views returning a scalar.
  Their weights are constants, or functions of a ``StepContext`` (the step, the epsilon warm-up
  ramp, the defense state): ``WarmupScaled``, ``FromState``, or any callable.
* **Monitors** are terms reported as metrics, never optimised (e.g. ATLAS's ``jac_norm``).
* **Epsilon warm-up**, one mechanism for every defense: with ``eps_warmup_steps = T`` each
  adversary's budget is multiplied by ``ramp = min(1, step / T)`` (ATLAS Sec. 4).
* **State** (``StateRule``): a pytree carried in ``TrainState.defense_state``; the defense returns
  per-device ``statistics``, which the train step averages over every device of every host
  (``lax.pmean``) before ``update_state`` (inside the jitted step, checkpointed with the state).
* **Weight perturbation** (``WeightPerturbation``, e.g. AWP, ``advjax.defenses.awp``): after the
  adversaries, at the unperturbed weights ``w``, it returns ``delta``; the views' passes then run
  at ``w + stop_gradient(delta)``, so the gradient computed at the perturbed weights is applied to
  ``w`` (Wu et al. 2020). Its objective's terms may read any view of the defense.

Randomness: ``keys`` holds one key per example. The first adversary uses them as they are, the
``i``-th one ``fold_in(keys, ADVERSARY_KEY + i)``; Jacobian projections use
``fold_in(keys, JACOBIAN_KEY)``.

``aux`` is ``{"batch_stats", "metrics", "statistics"}``. Metrics: ``{view}_accuracy`` (on the
labeled rows, true labels) for each view, ``{term}_loss`` (unweighted) for each term,
``{term}_weight`` for weights that vary, each monitor under its name, ``labeled_fraction``
when the batch carries a ``labeled`` mask, and the weight perturbation's (``awp_relative_norm``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax import losses
from advjax.attacks import Attack
from advjax.attacks.base import check_nonnegative
from advjax.defenses.jacobian import estimate_from_vjp
from advjax.models import Ensemble, ensemble_variables, forward, make_model_fn, member_variables
from advjax.sharding import AXIS, masked_mean

Batch = dict[str, jax.Array]
CLEAN = "clean"
ADVERSARY_TARGETS = ("labels", "clean_logits", "predicted")
ROWS = ("all", "labeled")
JACOBIAN_KEY = 1
ADVERSARY_KEY = 100


def check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid values: {', '.join(valid)}")


# ----------------------------------------------------------------------------------------------
# Weights


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a weight may depend on: the step, the epsilon warm-up ramp ``eps_t / eps`` and the
    defense state before this step's update (all may be traced)."""

    step: Any
    ramp: Any
    state: Any


@dataclasses.dataclass(frozen=True)
class WarmupScaled:
    """``value * eps_t / eps``: a weight that ramps up with the attack budget (ATLAS Sec. 5.3)."""

    value: float

    def __call__(self, context: StepContext) -> Any:
        return self.value * context.ramp


@dataclasses.dataclass(frozen=True)
class FromState:
    """``scale * state[key]`` (``scale * state[key][index]`` with an ``index``): a weight read
    from the defense state."""

    key: str
    scale: float = 1.0
    index: int | None = None

    def __call__(self, context: StepContext) -> Any:
        value = context.state[self.key]
        return self.scale * (value if self.index is None else value[self.index])


Weight = float | Callable[[StepContext], Any]


def weight_value(weight: Weight, context: StepContext) -> Any:
    return weight(context) if callable(weight) else weight


# ----------------------------------------------------------------------------------------------
# Adversaries and state


@dataclasses.dataclass(frozen=True)
class Adversary:
    """A named adversarial view ``x' = attack(x)`` generated once per step.

    Attributes:
      attack: any advjax attack.
      name: the view's name (terms read it as ``view=name``); not ``"clean"``.
      target: what the attack gets as ``y``: ``"labels"``, ``"clean_logits"`` (the clean
        inference-mode logits, for an attack maximising a KL against the clean prediction) or
        ``"predicted"`` (the labels ``C(x) = argmax f(x)``, SRT Sec. 3.1).
      bn_train_mode: generate the adversary with BatchNorm in training mode (batch statistics,
        running averages untouched; thesis spec Sec. 8.5), instead of inference mode.
      from_state: ``from_state(attack, state) -> attack``, how the attack reads the defense state
        each step before it runs (traced values: no recompilation), e.g. UDR's learned
        ``lambda`` (``advjax.defenses.udr_state.LambdaFromState``); None: it reads nothing.
    """

    attack: Attack
    name: str = "adv"
    target: str = "labels"
    bn_train_mode: bool = False
    from_state: Callable[[Attack, Any], Attack] | None = None

    def __post_init__(self):
        check_choice("adversary target", self.target, ADVERSARY_TARGETS)
        if self.name == CLEAN:
            raise ValueError(f"an adversary cannot be named {CLEAN!r} (the clean view)")
        loss = getattr(self.attack, "loss", None)
        if loss is not None and self.target != "clean_logits":
            kl_losses = (losses.kl_from_reference, losses.kl_to_reference)
            if losses.get_loss(loss) in kl_losses:
                raise ValueError(
                    "a KL attack needs the clean logits as its target: use target='clean_logits'"
                )


class StateRule(Protocol):
    """State a defense carries across steps (Pareto AT's loss moments, UDR's lambda).

    ``statistics`` runs inside the loss function on each device and returns batch means; the train
    step averages them over devices and hosts and calls ``update`` with the result. A rule may
    also define ``metrics(state) -> {name: scalar}``: values of the state before the step's
    update, logged with the step's metrics (``metrics.jsonl``).
    """

    def init(self) -> Any: ...

    def statistics(self, views: Views, values: dict[str, jax.Array]) -> Any: ...

    def update(self, state: Any, statistics: Any) -> Any: ...


class WeightPerturbation(Protocol):
    """A perturbation ``delta`` of the parameters the views' passes run at (AWP, Wu et al. 2020;
    ``advjax.defenses.awp.AWP``).

    Called once per step after the adversaries are generated, with the unperturbed ``variables``
    and the ``views`` (inputs set, no passes yet; ``views.at`` runs passes at other weights):
    ``perturbation(model, variables, views, context) -> (delta, metrics)``, ``delta`` a pytree
    like ``variables["params"]`` (None: no perturbation). The passes then use
    ``params + stop_gradient(delta)``: ``delta`` is a constant for the parameter gradient.
    ``terms`` is its objective (terms of the defense's views), whose views are generated even
    when no term of the defense reads them.
    """

    terms: tuple[Any, ...]

    def __call__(
        self, model: nn.Module, variables: Any, views: Views, context: StepContext
    ) -> tuple[Any, dict[str, jax.Array]]: ...


# ----------------------------------------------------------------------------------------------
# Views


@dataclasses.dataclass(frozen=True)
class ViewNeeds:
    """What the terms of a defense read from one view: its input Jacobian, named features."""

    with_vjp: bool = False
    features: tuple[str, ...] = ()


def views_needed(terms: tuple[Any, ...]) -> dict[str, ViewNeeds]:
    """``{view: ViewNeeds}`` for the views ``terms`` read."""
    needed: dict[str, ViewNeeds] = {}
    for term in terms:
        requested = dict(getattr(term, "features", ()) or ())
        for view in term.views:
            old = needed.get(view, ViewNeeds())
            features = tuple(dict.fromkeys((*old.features, *requested.get(view, ()))))
            needed[view] = ViewNeeds(old.with_vjp or view in term.jacobian_views, features)
    return needed


class _Pass:
    """One training-mode forward pass: logits, new BatchNorm statistics, the requested features,
    and (when a Jacobian is needed) its VJP, so that the Jacobian estimate shares the pass."""

    def __init__(self, model: nn.Module, variables: Any, x: jax.Array, needs: ViewNeeds):
        def run(z):
            out = forward(model, variables, z, train=True, features=needs.features)
            return out.logits, (out.batch_stats, out.features)

        if needs.with_vjp:
            self.logits, self.vjp_fn, aux = jax.vjp(run, x, has_aux=True)
        else:
            (self.logits, aux), self.vjp_fn = run(x), None
        self.batch_stats, self.features = aux


class Views:
    """The inputs and training-mode passes of one step, built once and read by every term."""

    def __init__(
        self,
        defense: Defense,
        model: nn.Module,
        variables: Any,
        batch: Batch,
        keys: jax.Array,
        ramp: Any,
        state: Any = None,
        step: Any = 0,
    ):
        x, y = batch["image"], batch["label"]
        labeled = batch.get("labeled")
        self.labeled = None if labeled is None else labeled.astype(bool)
        # Never read the label of an unlabeled example (it may be any placeholder).
        self.labels = y if self.labeled is None else jnp.where(self.labeled, y, 0)
        self.keys = keys
        self._model_fn = make_model_fn(model)
        self._variables = variables
        self._x = x
        self._clean_inference: jax.Array | None = None
        self._jacobians: dict[tuple[str, int], jax.Array] = {}
        needed = defense.needed_views()
        perturbation = defense.weight_perturbation
        generated = {*needed, *(views_needed(perturbation.terms) if perturbation else ())}
        self._order = (CLEAN, *(a.name for a in defense.adversaries))

        self.inputs = {CLEAN: x}
        for i, adversary in enumerate(defense.adversaries):
            if adversary.name not in generated:
                continue
            attack = adversary.attack
            if adversary.from_state is not None:
                attack = adversary.from_state(attack, state)
            attack = attack.scaled(ramp) if defense.eps_warmup_steps else attack
            target = {
                "labels": lambda: self.labels,
                "clean_logits": self.clean_inference_logits,
                "predicted": lambda: self.predicted,
            }[adversary.target]()
            attack_keys = keys if i == 0 else _fold(keys, ADVERSARY_KEY + i)
            model_fn = (
                make_model_fn(model, train=True) if adversary.bn_train_mode else self._model_fn
            )
            x_adv = attack(model_fn, variables, x, target, attack_keys)
            self.inputs[adversary.name] = jax.lax.stop_gradient(x_adv)

        # The weight perturbation, after the adversaries (generated at the unperturbed weights).
        self.perturbation_metrics: dict[str, jax.Array] = {}
        if perturbation is not None:
            context = StepContext(step=step, ramp=ramp, state=state)
            delta, self.perturbation_metrics = perturbation(model, variables, self, context)
            if delta is not None:
                params = jax.tree.map(
                    lambda w, d: w + jax.lax.stop_gradient(d).astype(w.dtype),
                    variables["params"],
                    delta,
                )
                variables = {**variables, "params": params}
        self._passes, self.batch_stats = self._run_passes(model, variables, needed)

    def _run_passes(
        self, model: nn.Module, variables: Any, needed: dict[str, ViewNeeds]
    ) -> tuple[dict[str, _Pass], Any]:
        passes: dict[str, _Pass] = {}
        batch_stats: Any = {}
        for name in self._order:
            if name not in needed:
                continue
            pass_variables = variables
            if batch_stats:  # chain the running statistics through the passes
                pass_variables = {**variables, "batch_stats": batch_stats}
            passes[name] = _Pass(model, pass_variables, self.inputs[name], needed[name])
            batch_stats = passes[name].batch_stats
        return passes, batch_stats

    def at(self, model: nn.Module, variables: Any, needed: dict[str, ViewNeeds]) -> Views:
        """These views (same inputs, adversaries, labels) with the training-mode passes of
        ``needed`` run at other ``variables`` (a weight perturbation's proxy objective)."""
        other = copy.copy(self)
        other._jacobians = {}
        other._passes, other.batch_stats = other._run_passes(model, variables, needed)
        return other

    @property
    def names(self) -> tuple[str, ...]:
        """The views computed this step, in pass order."""
        return tuple(self._passes)

    def clean_inference_logits(self) -> jax.Array:
        """``f(x)`` in inference mode, a constant for the gradient (what the attacks see)."""
        if self._clean_inference is None:
            logits = self._model_fn(self._variables, self._x)
            self._clean_inference = jax.lax.stop_gradient(logits)
        return self._clean_inference

    @property
    def predicted(self) -> jax.Array:
        """``C(x) = argmax f(x)``, the inference-mode predicted labels (SRT Sec. 3.1)."""
        return jnp.argmax(self.clean_inference_logits(), -1)

    def logits(self, view: str) -> jax.Array:
        """Training-mode logits of ``view`` (``[B, K]``)."""
        return self._passes[view].logits

    def features(self, view: str, name: str) -> jax.Array:
        """The named feature of ``view``'s training-mode pass (``advjax.models.forward``), e.g.
        ``"penultimate"``; ``"member_logits"`` for an ``Ensemble``."""
        return self._passes[view].features[name]

    def jacobian(self, view: str, num_projections: int) -> jax.Array:
        """Per-example estimate of ``||d logits / d input||_F^2`` at ``view`` (``[B]``), from the
        view's own pass; computed once per view and projection count."""
        cache_key = (view, num_projections)
        if cache_key not in self._jacobians:
            pass_ = self._passes[view]
            k = pass_.logits.shape[-1]
            self._jacobians[cache_key] = estimate_from_vjp(
                pass_.vjp_fn, k, _fold(self.keys, JACOBIAN_KEY), num_projections, pass_.logits.dtype
            )
        return self._jacobians[cache_key]

    def mean(self, values: jax.Array, rows: str = "all") -> jax.Array:
        """Batch mean of per-example ``values`` over ``rows``: every row, or the labeled ones
        (across the data-parallel batch: ``advjax.sharding.masked_mean``)."""
        if rows == "labeled" and self.labeled is not None:
            return masked_mean(values, self.labeled, AXIS)
        return jnp.mean(values)


def _fold(keys: jax.Array, data: int) -> jax.Array:
    return jax.vmap(jax.random.fold_in, (0, None))(keys, data)


# ----------------------------------------------------------------------------------------------
# The defense


@dataclasses.dataclass(frozen=True)
class Defense:
    """``sum_k w_k L_k`` over views shared by the terms (see the module docstring).

    Attributes:
      terms: the optimised terms (``advjax.defenses.terms``), each with ``weight`` and ``name``.
      adversaries: the adversarial views, generated once per step.
      monitors: terms reported as metrics only (under their names, without gradient).
      eps_warmup_steps: every adversary's budget ramps linearly from 0 over this many steps.
      state_rule: the state carried across steps (``StateRule``), or None.
      couples_members: for an ``Ensemble`` model: True gives the defense the whole ensemble (its
        terms may read every member's outputs, e.g. the ``member_logits`` feature); False (the
        default) trains each member on its own with this defense (``IndependentMembers``).
      name: a label for messages.
      weight_perturbation: the parameters' perturbation the views' passes run at
        (``WeightPerturbation``, e.g. ``advjax.defenses.awp.with_awp``), or None.
    """

    terms: tuple[Any, ...]
    adversaries: tuple[Adversary, ...] = ()
    monitors: tuple[Any, ...] = ()
    eps_warmup_steps: int = 0
    state_rule: StateRule | None = None
    couples_members: bool = False
    name: str = "defense"
    weight_perturbation: WeightPerturbation | None = None

    def __post_init__(self):
        if int(self.eps_warmup_steps) != self.eps_warmup_steps:
            raise ValueError(f"eps_warmup_steps must be an integer, got {self.eps_warmup_steps}")
        check_nonnegative(eps_warmup_steps=self.eps_warmup_steps)
        if not self.terms:
            raise ValueError("a defense needs at least one term")
        names = [a.name for a in self.adversaries]
        if len(set(names)) != len(names):
            raise ValueError(f"adversary names must be unique, got {names}")
        valid = (CLEAN, *names)
        for term in (*self.terms, *self.monitors, *self._perturbation_terms):
            for view in term.views:
                if view not in valid:
                    raise ValueError(
                        f"term {term.name!r} reads view {view!r}, which this defense does not "
                        f"have; its views: {', '.join(valid)}"
                    )
        term_names = [t.name for t in (*self.terms, *self.monitors)]
        if len(set(term_names)) != len(term_names):
            raise ValueError(f"term and monitor names must be unique, got {term_names}")

    @property
    def attacks(self) -> tuple[Attack, ...]:
        return tuple(a.attack for a in self.adversaries)

    @property
    def _perturbation_terms(self) -> tuple[Any, ...]:
        return () if self.weight_perturbation is None else tuple(self.weight_perturbation.terms)

    @property
    def supports_unlabeled(self) -> bool:
        """True when no term (nor the weight perturbation's objective) reads the true label of
        an unlabeled example (RT, SRT), so the training loop may give it batches with a
        ``labeled`` mask."""
        terms = (*self.terms, *self._perturbation_terms)
        return not any(term.reads_unlabeled_labels for term in terms)

    def needed_views(self) -> dict[str, ViewNeeds]:
        """``{view: ViewNeeds}`` for the views some term or monitor reads."""
        return views_needed((*self.terms, *self.monitors))

    def ramp(self, step: Any) -> Any:
        """The epsilon warm-up factor ``eps_t / eps = min(1, step / eps_warmup_steps)``."""
        if not self.eps_warmup_steps:
            return 1.0
        return jnp.minimum(1.0, jnp.asarray(step).astype(jnp.float32) / self.eps_warmup_steps)

    def init_state(self) -> Any:
        return {} if self.state_rule is None else self.state_rule.init()

    def update_state(self, state: Any, statistics: Any) -> Any:
        """The state after a step, from the statistics averaged over devices and hosts."""
        return state if self.state_rule is None else self.state_rule.update(state, statistics)

    def __call__(
        self,
        model: nn.Module,
        variables: Any,
        batch: Batch,
        keys: jax.Array,
        *,
        step: Any = 0,
        state: Any = None,
    ) -> tuple[jax.Array, dict[str, Any]]:
        state = self.init_state() if state is None else state
        context = StepContext(step=step, ramp=self.ramp(step), state=state)
        views = Views(self, model, variables, batch, keys, context.ramp, state, step)

        metrics: dict[str, jax.Array] = dict(views.perturbation_metrics)
        for view in views.names:
            correct = (jnp.argmax(views.logits(view), -1) == views.labels).astype(jnp.float32)
            metrics[f"{view}_accuracy"] = views.mean(correct, "labeled")
        if views.labeled is not None:
            metrics["labeled_fraction"] = jnp.mean(views.labeled.astype(jnp.float32))

        total, values = None, {}
        for term in self.terms:
            value, term_metrics = term(views)
            weight = weight_value(term.weight, context)
            total = weight * value if total is None else total + weight * value
            values[term.name] = value
            metrics.update(term_metrics)
            metrics.setdefault(f"{term.name}_loss", value)
            if callable(term.weight):
                metrics[f"{term.name}_weight"] = jnp.asarray(weight, jnp.float32)
        for monitor in self.monitors:
            value, _ = monitor(views)
            metrics[monitor.name] = jax.lax.stop_gradient(value)

        statistics = {}
        if self.state_rule is not None:
            statistics = jax.lax.stop_gradient(self.state_rule.statistics(views, values))
            if hasattr(self.state_rule, "metrics"):
                state_metrics = self.state_rule.metrics(state)
                metrics.update({k: jnp.asarray(v, jnp.float32) for k, v in state_metrics.items()})
        aux = {"batch_stats": views.batch_stats, "metrics": metrics, "statistics": statistics}
        return total, aux


@dataclasses.dataclass(frozen=True)
class IndependentMembers:
    """Trains every member of an ``Ensemble`` with ``defense`` on its own, in one step.

    The loss is the sum over members of each member's loss, computed by ``jax.vmap`` over the
    stacked member variables: each member gets its own adversaries (generated against itself, with
    the step's keys), BatchNorm statistics and defense state (stacked on a leading axis). Its
    gradient for member ``m`` is member ``m``'s own gradient, so the ensemble trains as M separate
    runs with the same keys would. Metrics are averaged over members (``loss`` is the sum).
    """

    defense: Defense
    size: int

    @property
    def attacks(self) -> tuple[Attack, ...]:
        return self.defense.attacks

    @property
    def eps_warmup_steps(self) -> int:
        return self.defense.eps_warmup_steps

    @property
    def supports_unlabeled(self) -> bool:
        return self.defense.supports_unlabeled

    @property
    def name(self) -> str:
        return self.defense.name

    def ramp(self, step: Any) -> Any:
        return self.defense.ramp(step)

    def init_state(self) -> Any:
        return jax.tree.map(
            lambda leaf: jnp.stack([jnp.asarray(leaf)] * self.size), self.defense.init_state()
        )

    def update_state(self, state: Any, statistics: Any) -> Any:
        if self.defense.state_rule is None:
            return state
        return jax.vmap(self.defense.update_state)(state, statistics)

    def __call__(
        self,
        model: Ensemble,
        variables: Any,
        batch: Batch,
        keys: jax.Array,
        *,
        step: Any = 0,
        state: Any = None,
    ) -> tuple[jax.Array, dict[str, Any]]:
        if not isinstance(model, Ensemble) or model.size != self.size:
            raise ValueError(f"IndependentMembers needs an Ensemble of {self.size} members")
        state = self.init_state() if state is None else state

        def one(member_vars, member_state):
            return self.defense(
                model.member, member_vars, batch, keys, step=step, state=member_state
            )

        losses_, aux = jax.vmap(one)(member_variables(variables), state)
        batch_stats = ensemble_variables({"batch_stats": aux["batch_stats"]})
        metrics = {name: jnp.mean(value) for name, value in aux["metrics"].items()}
        aux = {
            "batch_stats": batch_stats.get("batch_stats", {}),
            "metrics": metrics,
            "statistics": aux["statistics"],
        }
        return jnp.sum(losses_), aux


def for_model(defense: Defense, model: nn.Module) -> Defense | IndependentMembers:
    """The defense to train ``model`` with: ``IndependentMembers`` for an ensemble unless the
    defense couples its members, the defense itself otherwise."""
    if isinstance(model, Ensemble) and not defense.couples_members:
        return IndependentMembers(defense, model.size)
    return defense
