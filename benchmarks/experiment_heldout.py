"""The experiment's held-out evaluation (issue 17), for the GPU machine: every discovered proxy
and every human baseline, the same harness, round-to-nearest and reconstruction.

    python -m benchmarks.experiment heldout --device cuda --out $OUT/heldout.json \\
        [--resume-from benchmarks/results/experiment/heldout.json] [--models mobilenetv2,resnet18] \\
        [--budgets 2.5avg,3avg,3.5avg,4avg] [--calib-seeds 0,1,2] [--recon-seeds 0,1,2] [--recon-iters 310] \\
        [--only-rtn] [--time-limit-s 540]

Per model (the discovered proxies transfer unchanged to resnet18, the paper's TAP-C claim):

1. ``rtn``: ``mpq.leaderboard.run`` with every file of ``--proxies-dir`` judged in the sandbox
   (``sandbox.leaderboard.sandbox_scorer``, ``--sandbox process``) and the human baselines scored
   in this process; rows per proxy and budget: rho_sens, top-1 on the search and test splits after
   round-to-nearest (16 calibration images), size; the RTN top-1 again for each calibration seed
   with the allocation unchanged (``LeaderboardConfig.calib_seeds``, mpq.leaderboard_calib).
2. ``recon``: every distinct allocation of those rows reconstructed (mpq.ptq_leaderboard, BRECQ +
   AdaRound, ``--calib-final`` images) for each ``--recon-seeds`` seed, stacked in chunks of at
   most ``--chunk`` variants; after each chunk the JSON is written, so a cut call keeps what it did.

A chunk that its estimated time would push past ``--time-limit-s`` is not started: the JSON says
``partial`` and a later call with ``--resume-from`` (the previous JSON) does only what is missing.
Imports only mpq/, sandbox/, the standard library and torch (no langgraph on the GPU machine).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROXIES_DIR = ROOT / "benchmarks/results/experiment/proxies"
HUMAN_BASELINES = ("uniform", "random", "weight_norm", "snip", "tap_formula", "ompq", "emq", "hawq_v2")

# Measured costs on one H100 (used only for the printed estimate and the time guard's first chunk):
# reconstruction: benchmarks/results/reconstruction.md (mobilenetv2 50 variants x 310 steps/block in
# 123 s; resnet18 43 variants x 599 steps in 113 s); RTN leaderboard: the leaderboard JSONs
# (setup + configuration benchmark + HAWQ-V2 31 s / 9 s), plus a sandbox slot start.
RECON_S_PER_VARIANT_STEP = {"mobilenetv2": 123 / 50 / 310, "resnet18": 113 / 43 / 599}
RECON_CHUNK_SETUP_S = 10.0
RTN_BASE_S = {"mobilenetv2": 75.0, "resnet18": 45.0}
RTN_ROW_S = 0.3
CALIB_ROW_S = 0.1
DEFAULT_MODEL_COST = "mobilenetv2"


@dataclass(frozen=True)
class HeldoutConfig:
    """The held-out evaluation's settings (from the command line)."""

    out: str
    resume_from: str | None = None
    models: tuple[str, ...] = ("mobilenetv2", "resnet18")
    dataset: str = "cifar10-mini"
    budgets: tuple[str, ...] = ("2.5avg", "3avg", "3.5avg", "4avg")
    proxies_dir: str = str(PROXIES_DIR)
    baselines: tuple[str, ...] = HUMAN_BASELINES
    act_bits: int = 8
    """Activation bits of RTN and reconstruction (4: where allocation matters after reconstruction)."""
    calib_seeds: tuple[int, ...] = (0, 1, 2)
    recon_seeds: tuple[int, ...] = (0, 1, 2)
    recon_iters: int = 310
    calib_final: int = 1024
    chunk: int = 56
    only_rtn: bool = False
    device: str = "cpu"
    sandbox: str = "process"
    timeout_s: float = 300.0
    eval_limit: int | None = None
    test_limit: int | None = None
    cache_dir: str | None = None
    time_limit_s: float = 540.0


class HeldoutError(ValueError):
    """Bad input; one line for the user."""


# --------------------------------------------------------------------------- inputs and estimate

def proxy_files(cfg: HeldoutConfig) -> dict[str, dict]:
    """{name: {"file", "sha256"}} of the discovered proxies (``*.py`` in ``proxies_dir``, sorted)."""
    folder = Path(cfg.proxies_dir)
    if not folder.is_dir():
        return {}
    return {p.stem: {"file": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in sorted(folder.glob("*.py"))}


def estimate(cfg: HeldoutConfig, n_files: int) -> dict:
    """Seconds on one H100, from the measured figures above (allocations not yet deduplicated)."""
    proxies = n_files + len(cfg.baselines)
    rows = proxies * len(cfg.budgets)
    out = {}
    for model in cfg.models:
        base = RTN_BASE_S.get(model, RTN_BASE_S[DEFAULT_MODEL_COST])
        rtn = base + rows * RTN_ROW_S + len(cfg.calib_seeds) * rows * CALIB_ROW_S
        variants = 0 if cfg.only_rtn else rows * len(cfg.recon_seeds)
        per_variant = RECON_S_PER_VARIANT_STEP.get(model, RECON_S_PER_VARIANT_STEP[DEFAULT_MODEL_COST])
        chunks = math.ceil(variants / cfg.chunk) if variants else 0
        recon = variants * per_variant * cfg.recon_iters + chunks * RECON_CHUNK_SETUP_S
        out[model] = {"rtn_s": round(rtn), "recon_variants_at_most": variants, "recon_s": round(recon),
                      "total_s": round(rtn + recon)}
    out["total_s"] = sum(v["total_s"] for v in out.values())
    return out


# --------------------------------------------------------------------------- JSON state

def load_previous(cfg: HeldoutConfig) -> dict:
    if not cfg.resume_from:
        return {}
    path = Path(cfg.resume_from)
    if not path.is_file():
        log(f"--resume-from {path}: no such file, starting afresh")
        return {}
    return json.loads(path.read_text())


def write_state(state: dict, cfg: HeldoutConfig) -> None:
    """The whole state, atomically (a cut call leaves the previous complete file)."""
    from mpq.leaderboard_format import write_report

    state["updated"] = time.time()
    out = Path(cfg.out)
    tmp = out.with_name(out.name + ".tmp")
    write_report(state, tmp)
    tmp.replace(out)


def rtn_key(cfg: HeldoutConfig, model: str, files: dict[str, dict]) -> dict:
    """What the RTN rows of ``model`` depend on; a stored section with another key is recomputed."""
    from mpq.proxies import baseline_source

    # the baselines' sources too: a baseline whose code changed (HAWQ-V2 in session 4) is scored again
    baselines = {b: hashlib.sha256(baseline_source(b).encode()).hexdigest()[:16] for b in cfg.baselines}
    return {"model": model, "dataset": cfg.dataset, "budgets": list(cfg.budgets), "baselines": baselines,
            "proxies": {k: v["sha256"] for k, v in files.items()}, "calib_seeds": list(cfg.calib_seeds),
            "eval_limit": cfg.eval_limit, "test_limit": cfg.test_limit, **_act_bits_key(cfg)}


def recon_key(cfg: HeldoutConfig) -> dict:
    return {"iters": cfg.recon_iters, "calib_final": cfg.calib_final, "test_limit": cfg.test_limit,
            **_act_bits_key(cfg)}


def _act_bits_key(cfg: HeldoutConfig) -> dict:
    """Keys name act_bits only when it is not 8, so that state written before the option existed
    (all A8) stays valid."""
    return {} if cfg.act_bits == 8 else {"act_bits": cfg.act_bits}


# --------------------------------------------------------------------------- the two phases

def rtn_phase(cfg: HeldoutConfig, model: str, files: dict[str, dict]) -> dict:
    """The leaderboard of ``model`` (proxy files in the sandbox) with the calibration-seed columns."""
    from mpq.leaderboard import LeaderboardConfig, run
    from sandbox.leaderboard import sandbox_scorer
    from sandbox.protocol import Limits

    board = LeaderboardConfig(
        model=model, dataset=cfg.dataset, budgets=cfg.budgets, proxies=tuple(f["file"] for f in files.values()),
        baselines=cfg.baselines, eval_limit=cfg.eval_limit, test_limit=cfg.test_limit, device=cfg.device,
        cache_dir=cfg.cache_dir, calib_seeds=cfg.calib_seeds, act_bits=cfg.act_bits)
    start = time.perf_counter()
    report = run(board, sandbox_scorer(cfg.sandbox, dataclasses.replace(Limits(), timeout_s=cfg.timeout_s)))
    return {"key": rtn_key(cfg, model, files), "seconds": time.perf_counter() - start, "report": report}


def pending_variants(rows: list[dict], done: dict, seeds: tuple[int, ...]) -> list[tuple[str, dict, int]]:
    """(bits key, bits, seed) of every distinct allocation and seed not reconstructed yet."""
    pending, seen = [], set()
    for row in rows:
        if "bits" not in row:
            continue
        key = bits_key(row["bits"])
        for seed in seeds:
            if (key, seed) in seen or str(seed) in done.get(key, {}):
                continue
            seen.add((key, seed))
            pending.append((key, row["bits"], seed))
    return pending


def bits_key(bits: dict[str, int]) -> str:
    """A short stable name of one allocation (the same bit map under any proxy's name)."""
    return hashlib.sha256(json.dumps(sorted(bits.items())).encode()).hexdigest()[:16]


def recon_phase(cfg: HeldoutConfig, model: str, section: dict, save, deadline: float) -> bool:
    """Reconstruct what is missing, chunk by chunk, saving after each; False when cut by the deadline."""
    from mpq.data import calibration_batch, load_splits
    from mpq.models import load_model
    from mpq.ptq_leaderboard import Allocation, reconstruct_allocations
    from mpq.reconstruct import ReconConfig

    recon = section.setdefault("recon", {"key": recon_key(cfg), "done": {}, "chunks": []})
    pending = pending_variants(section["rtn"]["report"]["rows"], recon["done"], cfg.recon_seeds)
    if not pending:
        attach_recon(section)  # rows scored again may share allocations reconstructed earlier
        return True
    splits = load_splits(cfg.dataset, None, cache_dir=cfg.cache_dir)
    net = load_model(model, splits.spec, None).to(cfg.device)
    calib = {s: calibration_batch(splits, cfg.calib_final, s, cfg.device)[0] for s in cfg.recon_seeds}
    test = splits.test.spread(cfg.test_limit)
    images, labels = test.normalized(cfg.device), test.labels.to(cfg.device)
    per_variant = RECON_S_PER_VARIANT_STEP.get(model, RECON_S_PER_VARIANT_STEP[DEFAULT_MODEL_COST]) * cfg.recon_iters
    for start in range(0, len(pending), cfg.chunk):
        chunk = pending[start:start + cfg.chunk]
        expected = RECON_CHUNK_SETUP_S + len(chunk) * per_variant
        if time.monotonic() + expected > deadline:
            log(f"{model}: {len(pending) - start} variants left, next chunk ~{expected:.0f} s would pass "
                f"--time-limit-s: stopping here (resume with --resume-from)")
            return False
        by_key: dict[str, Allocation] = {}
        for key, bits, seed in chunk:
            old = by_key.get(key)
            by_key[key] = Allocation(key, bits, (old.seeds if old else ()) + (seed,))
        log(f"{model}: reconstructing {len(chunk)} variants ({len(by_key)} allocations), "
            f"{cfg.recon_iters} steps per block, ~{expected:.0f} s expected")
        measured = reconstruct_allocations(net, list(by_key.values()), calib, images, labels,
                                           ReconConfig(iters=cfg.recon_iters, act_bits=cfg.act_bits))
        for key, result in measured["results"].items():
            recon["done"].setdefault(key, {}).update({str(s): t for s, t in result["seeds"].items()})
        recon["chunks"].append({"variants": measured["variants"], "seconds": measured["seconds"],
                                "iters": measured["iters"]})
        per_variant = measured["seconds"] / max(measured["variants"], 1)
        attach_recon(section)
        save()
    return True


def attach_recon(section: dict) -> None:
    """Every row's reconstruction figures (over the seeds done so far) from the per-allocation results."""
    import statistics

    done = section.get("recon", {}).get("done", {})
    for row in section["rtn"]["report"]["rows"]:
        seeds = done.get(bits_key(row["bits"])) if "bits" in row else None
        if not seeds:
            continue
        values = list(seeds.values())
        # the leaderboard's own keys (mpq.ptq_leaderboard.attach_to_rows), plus every seed's figure
        row["top1_test_reconstruct"] = seeds.get("0", statistics.fmean(values))
        row["top1_test_reconstruct_per_seed"] = dict(seeds)
        row["top1_test_reconstruct_seeds"] = len(seeds)
        row["top1_test_reconstruct_mean"] = statistics.fmean(values)
        row["top1_test_reconstruct_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        row["top1_test_reconstruct_min"] = min(values)
        row["top1_test_reconstruct_max"] = max(values)


# --------------------------------------------------------------------------- the command

def run_heldout(cfg: HeldoutConfig) -> dict:
    """Both phases for every model; the state (also written to ``cfg.out`` after each step)."""
    from mpq.leaderboard import machine_info

    files = proxy_files(cfg)
    guess = estimate(cfg, len(files))
    log(f"held-out evaluation: {len(files)} discovered proxies ({', '.join(files) or 'none'}) + "
        f"{len(cfg.baselines)} human baselines, {len(cfg.budgets)} budgets, models {', '.join(cfg.models)}")
    log(f"estimated on one H100: {json.dumps(guess)}")
    deadline = time.monotonic() + cfg.time_limit_s
    previous = load_previous(cfg)
    state = {"kind": "experiment_heldout", "config": dataclasses.asdict(cfg), "estimate_h100_s": guess,
             "proxies": {k: {"file": str(Path(v["file"]).name), "sha256": v["sha256"]} for k, v in files.items()},
             "models": previous.get("models", {}), "calls": previous.get("calls", [])}
    call = {"machine": machine_info(cfg.device), "started": time.time(), "models": list(cfg.models),
            "only_rtn": cfg.only_rtn, "seconds": {}}
    state["calls"].append(call)
    save = lambda: write_state(state, cfg)  # noqa: E731
    for model in cfg.models:
        run_model(cfg, model, files, state, call, save, deadline)
    call["finished"] = time.time()
    call["wall_s"] = call["finished"] - call["started"]  # the phases plus loading, as the GPU was held
    # complete = every model asked for so far has its RTN rows and every reconstruction
    sections = [state["models"].get(m) for m in dict.fromkeys([*state["models"], *cfg.models])]
    state["status"] = "complete" if all(s and s.get("recon", {}).get("complete") for s in sections) else "partial"
    save()
    return state


def run_model(cfg: HeldoutConfig, model: str, files: dict, state: dict, call: dict, save, deadline: float) -> bool:
    section = state["models"].get(model)
    if section is None or section.get("rtn", {}).get("key") != rtn_key(cfg, model, files):
        expected = estimate(dataclasses.replace(cfg, models=(model,), only_rtn=True), len(files))[model]["rtn_s"]
        if time.monotonic() + expected > deadline:
            log(f"{model}: round-to-nearest (~{expected} s) would pass --time-limit-s: not started")
            return False
        log(f"{model}: round-to-nearest leaderboard")
        start = time.perf_counter()
        kept = {"recon": section["recon"]} if section and "recon" in section else {}
        # reconstruction results are per allocation (bits_key): rows that keep theirs are not redone
        section = state["models"][model] = {"rtn": rtn_phase(cfg, model, files), **kept}
        call["seconds"][f"{model}/rtn"] = time.perf_counter() - start
        save()
    else:
        log(f"{model}: round-to-nearest rows taken from --resume-from")
    if section.get("recon", {}).get("key") not in (None, recon_key(cfg)):
        log(f"{model}: stored reconstruction used other settings; redoing it")
        section.pop("recon")
    if cfg.only_rtn:
        return True
    start = time.perf_counter()
    finished = recon_phase(cfg, model, section, save, deadline)
    call["seconds"][f"{model}/recon"] = time.perf_counter() - start
    section["recon"]["complete"] = finished
    save()
    return finished


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
