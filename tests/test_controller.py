"""The controller's update math (paper Eq. 7/8 and the preference-pair rule)."""
import math
import random

import pytest

from graph.controller import (
    RULES,
    ControllerSettings,
    Outcome,
    UpdateRule,
    apply_floor,
    draw_operators,
    initial_weights,
    preference_pairs,
    probabilities,
    register_rule,
    rule_names,
    update,
)

NO_FLOOR = ControllerSettings(kind="paper", floor=0.0)


def probs_after(probs, outcomes, settings):
    """The probabilities after one update (the rule is ``settings.kind``)."""
    return update(probs, outcomes, settings)[1]


def test_eq8_normalises():
    assert probabilities({"a": 1.0, "b": 3.0}) == {"a": 0.25, "b": 0.75}


def test_eq7_by_hand():
    # All fitness positive with min 0.2, max 0.6: shift F' = F - 0.2 + 0.02.
    w = initial_weights()
    out = [Outcome("init", 0.2), Outcome("mutation", 0.6), Outcome("crossover", 0.4)]
    new = probs_after(w, out, NO_FLOOR)
    shifted = {"init": 0.02, "mutation": 0.42, "crossover": 0.22}
    total = sum(shifted.values())
    for t in shifted:
        assert new[t] == pytest.approx(shifted[t] / total)
    assert new["mutation"] > new["crossover"] > new["init"]


def test_eq7_multiplies_previous_weights():
    w = {"init": 0.5, "mutation": 0.25, "crossover": 0.25}
    out = [Outcome("init", 1.0), Outcome("mutation", 1.0), Outcome("crossover", 1.0)]
    # Equal fitness is the fixed point: probabilities do not move.
    assert probs_after(w, out, NO_FLOOR) == pytest.approx(w)


def test_alpha_c_cancels_in_probabilities():
    out = [Outcome("init", 0.1), Outcome("mutation", 0.5)]
    a = probs_after(initial_weights(), out, ControllerSettings(alpha_c=1.0, floor=0.0))
    b = probs_after(initial_weights(), out, ControllerSettings(alpha_c=0.1, floor=0.0))
    assert a == pytest.approx(b)


def test_negative_fitness_keeps_order():
    # Raw Eq. 7 would flip the sign of the ratio for negative F; the shift must not.
    out = [Outcome("init", -0.5), Outcome("mutation", -0.1), Outcome("crossover", -0.3)]
    new = probs_after(initial_weights(), out, NO_FLOOR)
    assert all(v > 0 for v in new.values())
    assert new["mutation"] > new["crossover"] > new["init"]
    assert sum(new.values()) == pytest.approx(1.0)


def test_minus_inf_fitness_is_worst_but_finite():
    out = [Outcome("init", -math.inf), Outcome("mutation", 0.5), Outcome("crossover", 0.3)]
    new = probs_after(initial_weights(), out, ControllerSettings(floor=0.05))
    assert all(math.isfinite(v) for v in new.values())
    assert new["init"] == pytest.approx(0.05)  # pushed to the floor, not to 0 or nan
    assert new["mutation"] > new["crossover"]


def test_all_minus_inf_leaves_weights():
    w = {"init": 0.2, "mutation": 0.5, "crossover": 0.3}
    out = [Outcome("init", -math.inf), Outcome("mutation", float("nan"))]
    assert probs_after(w, out, NO_FLOOR) == pytest.approx(w)
    assert probs_after(w, out, ControllerSettings(kind="dpo", floor=0.0)) == pytest.approx(w)


def test_template_without_candidates_keeps_weight():
    w = {"init": 0.2, "mutation": 0.4, "crossover": 0.4}
    out = [Outcome("mutation", 0.9), Outcome("mutation", 0.7)]
    # Both candidates are mutation, so mutation's ratio is 1; the others are untouched.
    assert probs_after(w, out, NO_FLOOR) == pytest.approx(w)
    out = [Outcome("mutation", 0.9), Outcome("crossover", 0.1)]
    new = probs_after(w, out, NO_FLOOR)
    # init had no candidate: its unnormalised weight stays 0.2, so only renormalisation moves it.
    raw_m = 0.4 * (0.8 + 0.04) / ((0.84 + 0.04) / 2)
    raw_c = 0.4 * 0.04 / ((0.84 + 0.04) / 2)
    total = 0.2 + raw_m + raw_c
    assert new["init"] == pytest.approx(0.2 / total)
    assert new["mutation"] == pytest.approx(raw_m / total)


def test_no_outcomes_is_a_no_op():
    w = {"init": 0.2, "mutation": 0.5, "crossover": 0.3}
    assert probs_after(w, [], NO_FLOOR) == pytest.approx(w)


def test_collapse_is_floored_over_many_generations():
    w = initial_weights()
    s = ControllerSettings(floor=0.05)
    for _ in range(50):
        w = probs_after(w, [Outcome("init", 0.0), Outcome("mutation", 1.0), Outcome("crossover", 0.0)], s)
    assert w["init"] == pytest.approx(0.05) and w["crossover"] == pytest.approx(0.05)
    assert w["mutation"] == pytest.approx(0.9)
    assert sum(w.values()) == pytest.approx(1.0)


def test_apply_floor_keeps_sum_and_order():
    p = apply_floor({"a": 0.001, "b": 0.299, "c": 0.7}, 0.1)
    assert p["a"] == pytest.approx(0.1)
    assert sum(p.values()) == pytest.approx(1.0)
    assert p["c"] > p["b"] >= 0.1


def test_preference_pairs():
    out = [Outcome("init", 0.1), Outcome("mutation", 0.5), Outcome("mutation", 0.3), Outcome("crossover", -math.inf)]
    pairs = preference_pairs(out)
    winners = {(win, lose) for win, lose, _ in pairs}
    assert ("mutation", "init") in winners and ("init", "crossover") in winners
    assert ("mutation", "mutation") not in winners  # same template: no information
    assert all(m > 0 for _, _, m in pairs)


def test_dpo_moves_towards_winner_and_sums_to_one():
    s = ControllerSettings(kind="dpo", floor=0.0)
    out = [Outcome("init", 0.1), Outcome("mutation", 0.8), Outcome("crossover", 0.4)]
    new = probs_after(initial_weights(), out, s)
    assert new["mutation"] > new["crossover"] > new["init"]
    assert sum(new.values()) == pytest.approx(1.0)


def test_dpo_gradient_by_hand():
    # Two templates, one pair: l_w += lr*beta*(1 - sigmoid(0)), l_l -= the same.
    s = ControllerSettings(kind="dpo", floor=0.0, beta=2.0, learning_rate=0.5)
    new = probs_after({"a": 1.0, "b": 1.0}, [Outcome("a", 1.0), Outcome("b", 0.0)], s)
    step = 0.5 * 2.0 * 0.5
    expected_a = math.exp(step) / (math.exp(step) + math.exp(-step))
    assert new["a"] == pytest.approx(expected_a)


def test_dpo_single_template_is_no_op():
    w = {"init": 0.2, "mutation": 0.5, "crossover": 0.3}
    out = [Outcome("mutation", 0.9), Outcome("mutation", 0.1)]
    assert probs_after(w, out, ControllerSettings(kind="dpo", floor=0.0)) == pytest.approx(w)


def test_weights_are_unnormalised_and_probabilities_are_them_normalised():
    out = [Outcome("init", 0.2), Outcome("mutation", 0.6), Outcome("crossover", 0.4)]
    weights, probs = update(initial_weights(), out, ControllerSettings(alpha_c=0.5, floor=0.0))
    assert weights is not probs and sum(weights.values()) != pytest.approx(1.0)
    assert probs == pytest.approx({t: w / sum(weights.values()) for t, w in weights.items()})
    # Eq. 7 by hand: w = p * alpha_c * F'(t) / mean F' with F' = (0.02, 0.42, 0.22).
    assert weights["mutation"] == pytest.approx(1.0 * 0.5 * 0.42 / (0.66 / 3))
    weights, probs = update(initial_weights(), out, ControllerSettings(kind="dpo", floor=0.0))
    assert probs == pytest.approx({t: w / sum(weights.values()) for t, w in weights.items()})


def test_outcomes_of_untemplated_seeds_are_ignored():
    w = {"init": 0.2, "mutation": 0.5, "crossover": 0.3}
    out = [Outcome("human", 0.9), Outcome("init", 0.1)]  # only init has evidence: ratio 1
    assert probs_after(w, out, NO_FLOOR) == pytest.approx(w)


def test_a_new_rule_is_one_registered_class():
    @register_rule
    class FavourInit(UpdateRule):
        name = "favour-init"

        def weights(self, probs, outcomes, settings):
            return {t: (2.0 if t == "init" else 1.0) for t in probs}

    try:
        assert "favour-init" in rule_names()
        weights, probs = update(initial_weights(), [], ControllerSettings(kind="favour-init", floor=0.0))
        assert weights["init"] == 2.0 and probs["init"] == pytest.approx(0.5)
    finally:
        del RULES["favour-init"]


def test_update_dispatch_rejects_unknown():
    with pytest.raises(ValueError, match="unknown controller"):
        update(initial_weights(), [], ControllerSettings(kind="bogus"))


def test_draw_operators():
    rng = random.Random(0)
    assert draw_operators({"init": 0.0, "mutation": 1.0, "crossover": 0.0}, 5, 0, rng) == ["init"] * 5
    drawn = draw_operators({"init": 0.0, "mutation": 1.0, "crossover": 0.0}, 5, 1, rng)
    assert drawn == ["mutation"] * 5
