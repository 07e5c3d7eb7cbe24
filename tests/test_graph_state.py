"""Population replacement and the context library (paper Sec. 3)."""
import math

from graph.state import context_library, generation_done, rank, replace_population


def rec(id, gen, slot, phi, h=None):
    return {"id": id, "generation": gen, "slot": slot, "phi": phi, "ast_hash": h or id, "operator": "init",
            "parents": [], "reasoning": "", "code": "", "status": "ok" if math.isfinite(phi) else "error",
            "rho_sens": None, "acc_quant": None, "avg_bits": None, "size_mb": None, "bits": {}, "repairs": 0,
            "error": ""}


def ids(records):
    return [r["id"] for r in records]


def test_top_n_of_old_and_new():
    old = [rec("a", 0, 0, 0.5), rec("b", 0, 1, 0.3), rec("c", 0, 2, 0.1)]
    new = [rec("d", 1, 0, 0.4), rec("e", 1, 1, -math.inf), rec("f", 1, 2, 0.2)]
    assert ids(replace_population(old, new, 3)) == ["a", "d", "b"]


def test_ties_go_to_the_newer():
    old = [rec("a", 0, 0, 0.5), rec("b", 0, 1, 0.5)]
    new = [rec("c", 1, 0, 0.5)]
    assert ids(replace_population(old, new, 2)) == ["c", "b"]  # gen 1 first, then the higher slot of gen 0


def test_failed_proxies_rank_last_and_fill_only_empty_places():
    new = [rec("a", 0, 0, -math.inf), rec("b", 0, 1, 0.1)]
    assert ids(replace_population([], new, 2)) == ["b", "a"]
    assert ids(rank([rec("x", 0, 0, float("nan")), rec("y", 0, 1, -1.0)])) == ["y", "x"]


def test_duplicate_proxy_keeps_only_the_newest_copy():
    old = [rec("a", 0, 0, 0.5, h="same"), rec("b", 0, 1, 0.1)]
    new = [rec("c", 1, 0, 0.5, h="same")]
    assert ids(replace_population(old, new, 3)) == ["c", "b"]


def test_library_is_top_ten_percent_of_working_proxies():
    archive = [rec(f"p{i}", 0, i, i / 100) for i in range(25)] + [rec("bad", 0, 30, -math.inf)]
    assert ids(context_library(archive)) == ["p24", "p23", "p22"]  # ceil(0.1 * 25) = 3
    assert ids(context_library([rec("a", 0, 0, 0.1)])) == ["a"]  # at least one
    assert context_library([rec("bad", 0, 0, -math.inf)]) == []


def test_generation_done():
    state = {"generation": 1, "candidates": [{"id": "g1-c0"}, {"id": "g1-c1"}],
             "archive": [rec("g1-c0", 1, 0, 0.1)]}
    assert not generation_done(state)
    state["archive"].append(rec("g1-c1", 1, 1, 0.2))
    assert generation_done(state)
