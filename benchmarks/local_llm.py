"""The local LLM on this machine: valid drafts (after the critic), speed, fitness.

    python -m benchmarks.local_llm [--llm-model NAME|FILE] [--prompts full|compact|DIR]
        [--drafts 10] [--minutes 60] [--model M --dataset D --budget B]   # the task
    python -m benchmarks.local_llm_report [--rescore]   # the table: results/local_llm.json

Drafts go through the real agents (propose / mutate / crossover / repair, the
chosen prompt set, ChatOpenAI, the agents' parser) against the real local
server, and every draft is evaluated in the real sandbox (EvaluatorPool, the
graph's evaluator) on the task; a failing draft goes to the critic
(agents.critic.repair_loop, at most ``--repairs`` times), as in a search.
``first_pass`` = the draft evaluated with status ok before any repair;
``valid`` = status ok after the critic's repairs (issue 13's bar: >= 0.8 on
every template). Templates are interleaved so the machine's load hits them
alike. init drafts cycle through the set's idea families; mutation and
crossover get the human baselines (mpq/proxies) as parents, with their real
fitness; the critic template gets a baseline with a realistic failure.

Resumable: per-draft rows accumulate in the output JSON (one file per model x
prompt set); a rerun continues until each template has ``--drafts`` drafts or
``--minutes`` pass. The CPU is shared: each row records the 1-minute load
average when it finished. Prompt / generation tokens per second come from the
server's /metrics.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from agents import local_model
from agents.local_server import ENGINE_REQUIREMENT, LocalLLMServer
from benchmarks.local_llm_report import RESULTS, TEMPLATES, short_name, summarise

HUMAN_PARENTS = ("weight_norm", "snip", "tap_formula", "ompq", "emq")

# Realistic sandbox failures shown to the critic (reason, traceback tail).
FAILURES = (
    ("AttributeError: 'LayerFeatures' object has no attribute 'weights'", "  File \"proxy.py\", line 4, in score\n    w = layer.weights\n"),
    ("invalid output: score for layer features.3.conv.1.0 is nan", ""),
    ("RuntimeError: The size of tensor a (32) must match the size of tensor b (16) at non-singleton dimension 1", "  File \"proxy.py\", line 6, in score\n    return float((layer.weight * layer.input).sum())\n"),
    ("rejected by the static gate (import, line 1): module 'os' is not allowed", ""),
)


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run: a model x prompt set on one task."""

    llm_model: str | None
    """A packaged model name (agents.local_model.MODELS), a GGUF path, or None (the default model)."""
    prompts: str
    """full | compact | a prompt folder."""
    task: dict
    """mpq.task.Task.to_dict() of the evaluation task."""
    drafts: int = 10
    """Drafts per template."""
    templates: tuple[str, ...] = TEMPLATES
    minutes: float = 60.0
    repairs: int = 2
    max_tokens: int = 700
    timeout_s: float = 900.0
    slots: int = 1
    out: Path = RESULTS / "local_llm_run.json"
    fresh: bool = False


def model_path(name: str | None) -> Path:
    if name in local_model.MODELS:
        return local_model.packaged_model_path(local_model.MODELS[name])
    return local_model.resolve_model(name)


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "shared_cpu": "2 cores shared with ~6 engineers' jobs"}


def layer_table(task) -> str:
    """The prompts' real layer table for the task (as graph/final.py builds it)."""
    from mpq.data import calibration_batch, load_splits
    from mpq.features import describe_layers, extract_features
    from mpq.models import load_model

    splits = load_splits(task.dataset, task.data_root, seed=task.seed)
    model = load_model(task.model, splits.spec, task.weights).eval()
    images, labels = calibration_batch(splits, task.calib_size, task.seed)
    return describe_layers(extract_features(model, images, labels, with_grad=False))


def human_parents(pool) -> tuple[list, dict]:
    """The baselines as parents, with their fitness measured in ``pool``."""
    from agents.context import Parent
    from mpq.proxies import baseline_source

    parents, fitness = [], {}
    for name in HUMAN_PARENTS:
        source = baseline_source(name)
        doc = re.match(r'\s*"""(.*?)"""', source, re.DOTALL)
        result = pool.evaluate(source, f"human-{name}")
        fitness[name] = {"status": result.status, "phi": result.phi, "rho_sens": result.rho_sens, "acc_quant": result.acc_quant}
        parents.append(Parent(id=name, code=source, reasoning=doc.group(1).strip().splitlines()[0] if doc else name,
                              phi=result.phi, rho_sens=result.rho_sens, acc_quant=result.acc_quant))
    return parents, fitness


def ask(llm, prompts, ctx, parents, template: str, i: int):
    """One draft through the real agent for ``template``; returns (draft, record)."""
    from agents.context import EvalFailure
    from agents.critic import repair
    from agents.crossover import crossover
    from agents.mutator import mutate
    from agents.proposer import propose

    a, b = parents[i % len(parents)], parents[(i + 1) % len(parents)]
    if template == "init":
        families = prompts.idea_families
        return propose(llm, prompts, ctx, idea=families[i % len(families)] if families else None)
    if template == "mutation":
        return mutate(llm, prompts, ctx, a)
    if template == "crossover":
        return crossover(llm, prompts, ctx, a, b)
    reason, tail = FAILURES[i % len(FAILURES)]
    return repair(llm, prompts, ctx, a.code, EvalFailure(reason, tail))


def judge(llm, prompts, ctx, parents, pool, template: str, i: int, repairs: int) -> dict:
    """Draft, evaluate in the sandbox, repair with the critic; one result row."""
    from agents.context import EvalFailure
    from agents.critic import repair_loop
    from agents.dedupe import ast_hash
    from agents.drafts import DraftError, ProxyDraft
    from agents.llm import LLMCallError

    start = time.perf_counter()
    row = {"template": template, "i": i, "first_pass": False, "valid": False, "stage": "ok", "reason": ""}
    evals: list = []

    def evaluate(code: str):
        t0 = time.perf_counter()
        result = pool.evaluate(code, f"{template}-{i}-{len(evals)}")
        evals.append((result, time.perf_counter() - t0))
        return None if result.ok else EvalFailure(result.reason, result.traceback_tail)

    parsed = True
    try:
        proxy, record = ask(llm, prompts, ctx, parents, template, i)
        records = [record]
    except LLMCallError as err:
        row.update(stage="call", reason=str(err)[:200])
        return finish(row, [err.record], evals, start)
    except DraftError as err:  # code that does not parse or lacks score: the critic may fix it
        records, parsed = ([err.record] if err.record else []), False
        if not err.code:
            row.update(stage="parse", reason=str(err)[:200])
            return finish(row, records, evals, start)
        proxy = ProxyDraft("", err.code, "init", (), ast_hash(err.code))
    outcome = repair_loop(llm, prompts, ctx, proxy, evaluate, max_repairs=repairs)
    row.update(first_pass=parsed and evals[0][0].ok, valid=outcome.failure is None, repairs=outcome.repairs,
               code=outcome.draft.code[:4000], ast_hash=outcome.draft.ast_hash,
               reasoning=outcome.draft.reasoning[:400])
    if outcome.failure is not None:
        row.update(stage=evals[-1][0].status if evals else "repair", reason=str(outcome.failure)[:300])
    else:
        ok = evals[-1][0]
        row.update(phi=ok.phi, rho_sens=ok.rho_sens, acc_quant=ok.acc_quant, avg_bits=ok.avg_bits)
    return finish(row, records + list(outcome.records), evals, start)


def finish(row: dict, records: list, evals: list, start: float) -> dict:
    """Timings, tokens and load of a judged row."""
    records = [r for r in records if r is not None]
    row.update(seconds=round(time.perf_counter() - start, 2),
               llm_s=round(sum(r.latency_s or 0.0 for r in records), 2),
               eval_s=round(sum(s for _, s in evals), 2), llm_calls=len(records), evaluations=len(evals),
               tokens_in=sum(r.tokens_in or 0 for r in records), tokens_out=sum(r.tokens_out or 0 for r in records),
               load_1m=round(os.getloadavg()[0], 2))
    if not row["valid"] and records:  # kept short, to see why
        row["response_tail"] = records[-1].response[-300:]
    return row


def metrics(base_url: str) -> dict[str, float]:
    """Cumulative token counts and seconds from the server's Prometheus /metrics."""
    root = base_url.removesuffix("/v1")
    text = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(root + "/metrics", timeout=10).read().decode()
    out = {}
    for key in ("prompt_tokens_total", "prompt_seconds_total", "tokens_predicted_total", "tokens_predicted_seconds_total"):
        m = re.search(rf"^llamacpp:{key}\s+([0-9.e+-]+)", text, re.MULTILINE)
        out[key] = float(m.group(1)) if m else 0.0
    return out


def rss_peak_mb(pid: int | None) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, TypeError):
        return None
    m = re.search(r"VmHWM:\s+(\d+) kB", status)
    return round(int(m.group(1)) / 1024, 1) if m else None


def run(cfg: BenchConfig) -> dict:
    from agents.context import DraftContext, describe_task
    from agents.llm import LLMSettings, make_llm
    from agents.prompts import PromptSet
    from mpq.task import Task
    from sandbox.pool import EvaluatorPool

    results = json.loads(cfg.out.read_text()) if cfg.out.exists() and not cfg.fresh else {}
    path = model_path(cfg.llm_model)
    prompts = PromptSet.load(cfg.prompts)
    task = Task.from_dict(cfg.task)
    results.setdefault("drafts", [])
    results.update(machine=machine(), engine=ENGINE_REQUIREMENT, task=task.to_dict(), prompts=cfg.prompts,
                   model={"name": path.stem, "size_bytes": path.stat().st_size},
                   sampling={"max_tokens": cfg.max_tokens, "timeout_s": cfg.timeout_s, "slots": cfg.slots,
                             "repairs": cfg.repairs}, known_hashes=sorted(prompts.shown_proxies))
    ctx = DraftContext(task=describe_task(task), layers=layer_table(task))
    deadline = time.monotonic() + cfg.minutes * 60
    with EvaluatorPool(task, workers=1) as pool:
        start = time.perf_counter()
        pool.wait_ready()
        results.setdefault("sandbox_ready_s", []).append(round(time.perf_counter() - start, 1))
        parents, results["humans"] = human_parents(pool)
        with tempfile.TemporaryDirectory() as logs:
            start = time.perf_counter()
            with LocalLLMServer(model_path=path, log_dir=logs, slots=cfg.slots) as server:
                results.setdefault("load_s", []).append(round(time.perf_counter() - start, 1))
                llm = make_llm(LLMSettings(spec="local", base_url=server.base_url, local_model=str(path),
                                           timeout_s=cfg.timeout_s, retries=0, max_tokens=cfg.max_tokens))
                base = metrics(server.base_url)
                try:
                    draft_loop(cfg, results, llm, prompts, ctx, parents, pool, deadline)
                finally:
                    now, acc = metrics(server.base_url), results.setdefault("metrics", {})
                    for key, value in now.items():
                        acc[key] = acc.get(key, 0.0) + value - base[key]
                    results["rss_peak_mb"] = rss_peak_mb(server.pid)
                    results["summary"] = summarise(results)
                    cfg.out.write_text(json.dumps(results, indent=1))
    return results


def draft_loop(cfg, results, llm, prompts, ctx, parents, pool, deadline) -> None:
    done = lambda t: sum(r["template"] == t for r in results["drafts"])  # noqa: E731
    while time.monotonic() < deadline:
        todo = [t for t in cfg.templates if done(t) < cfg.drafts]
        if not todo:
            return
        for template in todo:
            if time.monotonic() >= deadline:
                return
            row = judge(llm, prompts, ctx, parents, pool, template, done(template), cfg.repairs)
            results["drafts"].append(row)
            print(f"{time.strftime('%H:%M:%S')} {template:9s} #{done(template):3d} first={row['first_pass']!s:5s} "
                  f"valid={row['valid']!s:5s} phi={row.get('phi') or 0:.4f} {row['seconds']:6.1f}s "
                  f"(llm {row['llm_s']:.0f}s, {row['llm_calls']} calls) load {row['load_1m']} "
                  f"{row['stage']} {row['reason'][:80]}", flush=True)
            results["summary"] = summarise(results)
            cfg.out.write_text(json.dumps(results, indent=1))


def parse_args(argv: list[str] | None) -> BenchConfig:
    from mpq.task import Task

    default = Task()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llm-model", default=None, help=f"packaged model ({', '.join(local_model.MODELS)}) or a GGUF file")
    p.add_argument("--prompts", default="compact", help="full | compact | a prompt folder (default: compact)")
    p.add_argument("--drafts", type=int, default=10, help="drafts per template (default 10: 40 per run)")
    p.add_argument("--templates", default=",".join(TEMPLATES))
    p.add_argument("--minutes", type=float, default=60.0, help="stop drafting after this long (resume later)")
    p.add_argument("--repairs", type=int, default=2, help="critic calls per failing draft (default 2, as the search)")
    p.add_argument("--max-tokens", type=int, default=700)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per LLM request (no retries)")
    p.add_argument("--slots", type=int, default=1, help="server slots")
    p.add_argument("--model", default=default.model, help="task: model (default: mpq.task.Task's)")
    p.add_argument("--dataset", default=default.dataset)
    p.add_argument("--data-root", default=default.data_root)
    p.add_argument("--budget", default=default.budget)
    p.add_argument("--eval-limit", type=int, default=default.eval_limit)
    p.add_argument("--out", type=Path, default=None, help="default: results/local_llm_<model>_<prompts>.json")
    p.add_argument("--fresh", action="store_true", help="discard earlier drafts in --out")
    args = p.parse_args(argv)
    templates = tuple(t for t in args.templates.split(",") if t)
    if set(templates) - set(TEMPLATES):
        p.error(f"--templates: choose from {', '.join(TEMPLATES)}")
    task = replace(default, model=args.model, dataset=args.dataset, data_root=args.data_root,
                   budget=args.budget, eval_limit=args.eval_limit)
    out = args.out or RESULTS / f"local_llm_{short_name(args.llm_model or local_model.DEFAULT_MODEL.name)}_{Path(args.prompts).name}.json"
    return BenchConfig(args.llm_model, args.prompts, task.to_dict(), args.drafts, templates, args.minutes,
                       args.repairs, args.max_tokens, args.timeout, args.slots, out, args.fresh)


def main(argv: list[str] | None = None) -> int:
    results = run(parse_args(argv))
    print(json.dumps(results["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
