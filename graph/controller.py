"""The template controller: which evolution operator drafts the next candidates.

Update rules over per-template weights, chosen with ``--controller``; each is
one :class:`UpdateRule` subclass registered with :func:`register_rule` (the
shape of ShinkaEvolve's ``BanditBase``), so a new rule is one class here.
A rule maps the current probabilities and the generation's outcomes to new
*weights* (unnormalised); the probabilities are always the weights
normalised, with the floor (:func:`probabilities`, Eq. 8). State and store keep
both.

``paper`` -- the TAP paper's multiplicative update (Eq. 7/8)::

    w_t <- w_t * alpha_c * F(T_t) / mean_F        (Eq. 7)
    p_t  = w_t / sum_k w_k                          (Eq. 8)

where F(T_t) is the mean fitness of the candidates template t drafted this
generation and mean_F the mean over all candidates of the generation. As
written the rule breaks on real data; the cases and what we do:

* ``-inf`` fitness (a proxy that crashed, timed out, returned junk): counted as
  the generation's *worst finite* fitness minus one spread, so a template whose
  drafts fail is pushed down without producing inf/nan. If no candidate of the
  generation has a finite fitness, the weights do not change.
* negative fitness (phi can be < 0 when rho_sens < 0): ratios of signed numbers
  flip meaning, so fitness is shifted to be positive first:
  ``F' = F - min F + eps`` over the generation's candidates, with
  ``eps = 0.05 * (max F - min F)`` (or 1 when all are equal). Ratios of
  shifted fitness keep the order and the equal-fitness fixed point (ratio 1).
* a template with no candidate this generation: its fitness ratio is taken
  as 1 (no evidence either way), so only alpha_c and renormalisation move it.
* weight collapse: after the update every probability is raised to at least
  ``floor`` (default 0.05) and renormalised, so no template is ever starved
  and can come back if it starts to win.

Eq. 7 multiplies the previous generation's *floored probabilities* (the
weights renormalised), so weights never drift to 0 or overflow over many
generations and a floored template can come back. ``alpha_c`` multiplies every
weight alike, so it cancels in Eq. 8; it is kept for fidelity to the paper and
shows in the unnormalised weights.

``dpo`` -- a preference-pair update over template logits (Bradley-Terry, the
same form as the DPO loss without a reference model). Every pair of
candidates (a, b) of the generation with F(a) > F(b) and different templates
is one preference "template(a) over template(b)"; one gradient step on
``-log sigmoid(beta * (l_a - l_b))`` moves the logits (l = log p); the
weights are exp(l), so p = softmax(l) with the same floor.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import ClassVar, Iterable, Mapping

TEMPLATES: tuple[str, ...] = ("init", "mutation", "crossover")
"""The three prompt templates = evolution operators (paper Sec. 3)."""


@dataclass(frozen=True)
class ControllerSettings:
    """Knobs of both update rules."""

    kind: str = "paper"
    """A registered rule: ``paper`` (Eq. 7/8 multiplicative) or ``dpo`` (Bradley-Terry pairs)."""
    alpha_c: float = 1.0
    """Eq. 7's step constant; cancels in the probabilities (see module doc)."""
    floor: float = 0.05
    """Minimum probability of every template after an update."""
    beta: float = 1.0
    """dpo: scale of the preference step (one generation moves a logit by at most beta * lr)."""
    learning_rate: float = 1.0
    """dpo: step size of the logit update."""


@dataclass(frozen=True)
class Outcome:
    """One candidate's result as the controller sees it."""

    template: str
    fitness: float  # may be -inf


def initial_weights() -> dict[str, float]:
    """Equal weights, i.e. p = 1/3 each."""
    return {t: 1.0 for t in TEMPLATES}


def probabilities(weights: Mapping[str, float], floor: float = 0.0) -> dict[str, float]:
    """Eq. 8 (p = w / sum w) followed by the probability floor."""
    total = sum(max(w, 0.0) for w in weights.values())
    if not math.isfinite(total) or total <= 0.0:
        probs = {t: 1.0 / len(weights) for t in weights}
    else:
        probs = {t: max(w, 0.0) / total for t, w in weights.items()}
    return apply_floor(probs, floor)


def apply_floor(probs: Mapping[str, float], floor: float) -> dict[str, float]:
    """Raise every probability to at least ``floor`` and renormalise.

    Templates below the floor are pinned at exactly ``floor``; the remaining
    mass is shared among the others in proportion to their probabilities
    (repeated until nothing falls below), so the result sums to 1 and the
    order of the unpinned templates is kept.
    """
    n = len(probs)
    if floor <= 0.0 or n == 0:
        return dict(probs)
    floor = min(floor, 1.0 / n)
    pinned: set[str] = set()
    while True:
        free = {t: p for t, p in probs.items() if t not in pinned}
        mass = 1.0 - floor * len(pinned)
        total = sum(free.values())
        scaled = {t: (p / total * mass if total > 0 else mass / len(free)) for t, p in free.items()}
        low = {t for t, p in scaled.items() if p < floor}
        if not low:
            return {t: (floor if t in pinned else scaled[t]) for t in probs}
        pinned |= low


def finite_fitness(values: list[float]) -> list[float] | None:
    """Replace -inf/nan by the worst finite value minus one spread; None if none is finite."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    lo, hi = min(finite), max(finite)
    spread = (hi - lo) if hi > lo else 1.0
    return [v if math.isfinite(v) else lo - spread for v in values]


class UpdateRule:
    """One template update rule. Subclass, set ``name``, implement :meth:`weights`,
    and decorate with :func:`register_rule`; ``--controller NAME`` then reaches it."""

    name: ClassVar[str]

    def weights(self, probs: Mapping[str, float], outcomes: list[Outcome],
                settings: ControllerSettings) -> dict[str, float]:
        """New unnormalised weights from the current probabilities and this generation's outcomes."""
        raise NotImplementedError


RULES: dict[str, UpdateRule] = {}
"""name -> rule, in registration order."""


def register_rule(cls: type[UpdateRule]) -> type[UpdateRule]:
    """Class decorator: make ``cls`` reachable as ``--controller cls.name``."""
    RULES[cls.name] = cls()
    return cls


def rule_names() -> tuple[str, ...]:
    """The registered rules (the choices of ``--controller``)."""
    return tuple(RULES)


@register_rule
class PaperRule(UpdateRule):
    """Eq. 7 with the degenerate cases of the module docstring."""

    name = "paper"

    def weights(self, probs: Mapping[str, float], outcomes: list[Outcome],
                settings: ControllerSettings) -> dict[str, float]:
        fitness = finite_fitness([o.fitness for o in outcomes])
        if fitness is None:  # no finite fitness: no evidence, nothing moves
            return {t: p * settings.alpha_c for t, p in probs.items()}
        lo, hi = min(fitness), max(fitness)
        eps = 0.05 * (hi - lo) if hi > lo else 1.0
        shifted = [f - lo + eps for f in fitness]
        mean_all = sum(shifted) / len(shifted)
        new = {}
        for template, p in probs.items():
            mine = [s for o, s in zip(outcomes, shifted) if o.template == template]
            ratio = (sum(mine) / len(mine)) / mean_all if mine else 1.0  # no candidates: no evidence
            new[template] = p * settings.alpha_c * ratio
        return new


@register_rule
class PreferenceRule(UpdateRule):
    """One Bradley-Terry gradient step on template logits l = log p; weights = exp(l).

    loss = mean over pairs of -log sigmoid(beta * margin_scale * (l_w - l_l)),
    d loss / d l_w = -(1 - sigmoid(z)), d loss / d l_l = +(1 - sigmoid(z)).
    The pair's fitness margin weights it (larger wins say more). With no pair
    (one template only, or no finite fitness) the weights do not change.
    """

    name = "dpo"

    def weights(self, probs: Mapping[str, float], outcomes: list[Outcome],
                settings: ControllerSettings) -> dict[str, float]:
        logits = {t: math.log(max(p, 1e-12)) for t, p in probabilities(probs).items()}
        grad = {t: 0.0 for t in logits}
        pairs = preference_pairs(outcomes)
        total_margin = sum(m for _, _, m in pairs)
        for win, lose, margin in pairs:
            z = logits[win] - logits[lose]
            pull = (1.0 - _sigmoid(z)) * margin / total_margin
            grad[win] += pull
            grad[lose] -= pull
        top = max(logits.values())  # exp of logits relative to the largest: no overflow
        return {t: math.exp(logit - top + settings.learning_rate * settings.beta * grad[t])
                for t, logit in logits.items()}


def preference_pairs(outcomes: Iterable[Outcome]) -> list[tuple[str, str, float]]:
    """(winner template, loser template, fitness margin) for every strictly ordered pair.

    -inf candidates lose to every finite one with a margin of one spread (the
    same replacement as the paper rule); pairs within one template carry no
    information about the choice of template and are skipped.
    """
    outcomes = list(outcomes)
    fitness = finite_fitness([o.fitness for o in outcomes])
    if fitness is None:
        return []
    pairs = []
    for i, a in enumerate(outcomes):
        for j, b in enumerate(outcomes):
            if a.template != b.template and fitness[i] > fitness[j]:
                pairs.append((a.template, b.template, fitness[i] - fitness[j]))
    return pairs


def update(
    probs: Mapping[str, float], outcomes: Iterable[Outcome], settings: ControllerSettings
) -> tuple[dict[str, float], dict[str, float]]:
    """(weights, probabilities) after one generation, by the rule named ``settings.kind``.

    Outcomes of candidates that no template drafted (human seeds) carry no
    evidence about the templates and are left out.
    """
    rule = RULES.get(settings.kind)
    if rule is None:
        raise ValueError(f"unknown controller {settings.kind!r}; choose from {', '.join(RULES)}")
    weights = rule.weights(probs, [o for o in outcomes if o.template in probs], settings)
    return weights, probabilities(weights, settings.floor)


def draw_operators(
    probs: Mapping[str, float], count: int, generation: int, rng: random.Random
) -> list[str]:
    """Each candidate's operator, drawn from p (generation 0 is all ``init``).

    Mutation needs one proxy in the library and crossover two; the caller
    guarantees that by generation 1 the library is non-empty, and crossover
    falls back to mutation of the same parent when it has a single proxy.
    """
    if generation == 0:
        return ["init"] * count
    templates = list(probs)
    return rng.choices(templates, weights=[probs[t] for t in templates], k=count)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
