"""The embedded local LLM on this machine: install, load, speed, RAM, valid drafts.

    python -m benchmarks.local_llm [--drafts 40] [--modes grammar,free] [--minutes 60]

Drafts go through the real agents (propose / mutate / crossover / repair, the
project's prompts/, ChatOpenAI, the agents' parser) against the real local
server; "valid" = the agents' parser accepts the response AND the sandbox's
static gate (sandbox.gate.check_source) accepts the code. Each template is
asked with the real mobilenetv2 / embedded task, its real layer table, and
baseline proxies from mpq/proxies as parents (critic: those parents with a
realistic failure). Modes: ``grammar`` = the server's default GBNF constraint
(reasoning + one python block), ``free`` = no constraint; drafts of the modes
and templates are interleaved so that the machine's load hits them alike.

Resumable: per-draft results accumulate in the output JSON; a rerun continues
until each (mode, template) has ``--drafts`` drafts or ``--minutes`` pass.
Prompt / generation tokens per second come from the server's /metrics.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from agents import local_model
from agents.local_server import ENGINE_REQUIREMENT, LocalLLMServer

TEMPLATES = ("init", "mutation", "crossover", "critic")
OUT = Path(__file__).parent / "results" / "local_llm.json"

# llama-cpp-python (the alternative engine) has no wheel for this platform on
# the registry; its source build was timed once with the command below (a
# ~22 min build is not rerun on every benchmark; --measure-build reruns it).
BUILD_COMMAND = "CMAKE_BUILD_PARALLEL_LEVEL=2 pip wheel --no-deps llama-cpp-python==0.3.36"

# Realistic sandbox failures shown to the critic (reason, traceback tail).
FAILURES = (
    ("AttributeError: 'LayerFeatures' object has no attribute 'weights'", "  File \"proxy.py\", line 4, in score\n    w = layer.weights\n"),
    ("invalid output: score for layer features.3.conv.1.0 is nan", ""),
    ("RuntimeError: The size of tensor a (32) must match the size of tensor b (16) at non-singleton dimension 1", "  File \"proxy.py\", line 6, in score\n    return float((layer.weight * layer.input).sum())\n"),
    ("rejected by the static gate (import, line 1): module 'os' is not allowed", ""),
)


def default_max_tokens() -> int:
    from agents.llm import LLMSettings

    return LLMSettings().max_tokens


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "load_avg_at_start": os.getloadavg()}


def layer_table() -> str:
    """The prompts' real layer table for mobilenetv2 on the embedded data set."""
    from mpq.data import calibration_batch, load_splits
    from mpq.features import describe_layers, extract_features
    from mpq.models import load_model

    splits = load_splits("embedded")
    model = load_model("mobilenetv2", splits.spec).eval()
    images, labels = calibration_batch(splits, 16, 0)
    return describe_layers(extract_features(model, images, labels, with_grad=False))


def baseline_parents():
    from agents.context import Parent
    from mpq.proxies import PROXY_DIR

    parents = []
    for name in ("weight_norm", "snip", "tap_formula", "ompq", "emq"):
        source = (PROXY_DIR / f"{name}.py").read_text()
        doc = re.match(r'\s*"""(.*?)"""', source, re.DOTALL)
        idea = doc.group(1).strip().splitlines()[0] if doc else name
        parents.append(Parent(id=name, code=source, reasoning=idea))
    return parents


def ask(llm, prompts, ctx, parents, template: str, i: int):
    """One draft through the real agent for ``template``; returns (draft, record)."""
    from agents.context import EvalFailure
    from agents.critic import repair
    from agents.crossover import crossover
    from agents.mutator import mutate
    from agents.proposer import propose

    a, b = parents[i % len(parents)], parents[(i + 1) % len(parents)]
    if template == "init":
        return propose(llm, prompts, ctx)
    if template == "mutation":
        return mutate(llm, prompts, ctx, a)
    if template == "crossover":
        return crossover(llm, prompts, ctx, a, b)
    reason, tail = FAILURES[i % len(FAILURES)]
    return repair(llm, prompts, ctx, a.code, EvalFailure(reason, tail))


def judge(llm, prompts, ctx, parents, template: str, i: int) -> dict:
    from agents.drafts import DraftError
    from agents.llm import LLMCallError
    from sandbox.gate import GateRejection, check_source

    start = time.perf_counter()
    row = {"template": template, "valid": False, "stage": "ok", "reason": ""}
    record = None
    try:
        draft, record = ask(llm, prompts, ctx, parents, template, i)
        try:
            check_source(draft.code)
            row["valid"] = True
        except GateRejection as err:
            row.update(stage="gate", reason=str(err)[:200])
    except DraftError as err:
        record = getattr(err, "record", None)
        row.update(stage="parse", reason=str(err)[:200])
    except LLMCallError as err:
        record = err.record
        row.update(stage="call", reason=str(err)[:200])
    row["seconds"] = round(time.perf_counter() - start, 2)
    if record is not None:
        row.update(tokens_in=record.tokens_in, tokens_out=record.tokens_out)
        if not row["valid"]:  # kept short, to see why
            row["response_head"], row["response_tail"] = record.response[:300], record.response[-300:]
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


def timed(cmd: list[str] | str, env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, shell=isinstance(cmd, str), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return round(time.perf_counter() - start, 1)


def measure_install(results: dict) -> None:
    """Install time of the engine wheel and the model packages into a scratch folder."""
    spec = local_model.DEFAULT_MODEL
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target"]
        results["install"] = {
            "engine": ENGINE_REQUIREMENT,
            "engine_install_s": timed(pip + [f"{tmp}/engine", ENGINE_REQUIREMENT]),
            "model_packages_install_s": timed(pip + [f"{tmp}/model", *spec.requirements]),
            "note": "pip install from PyPI (pip's cache may hold the files); no compilation",
        }
        start = time.perf_counter()
        local_model.assemble(spec, Path(tmp) / spec.filename)
        results["install"]["assemble_and_hash_s"] = round(time.perf_counter() - start, 1)


def measure_build(results: dict) -> None:
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL="2")
    with tempfile.TemporaryDirectory() as tmp:
        seconds = timed(f"{sys.executable} -m pip wheel -q --no-deps --no-cache-dir -w {tmp} llama-cpp-python==0.3.36", env)
    results["alternative_engine"] = {"package": "llama-cpp-python==0.3.36", "command": BUILD_COMMAND,
                                     "build_wall_s": seconds, "load_avg": os.getloadavg()}


def summarise(results: dict) -> None:
    rows = results["drafts"]
    table = {}
    for mode in results["modes"]:
        per = {}
        for t in TEMPLATES:
            sel = [r for r in rows if r["mode"] == mode and r["template"] == t]
            if sel:
                per[t] = {"drafts": len(sel), "valid": sum(r["valid"] for r in sel),
                          "valid_rate": round(sum(r["valid"] for r in sel) / len(sel), 3),
                          "seconds_per_draft": round(sum(r["seconds"] for r in sel) / len(sel), 1),
                          "failures": {s: sum(r["stage"] == s for r in sel) for s in ("parse", "gate", "call")}}
        allsel = [r for r in rows if r["mode"] == mode]
        m = results["metrics"].get(mode, {})
        table[mode] = {
            "templates": per,
            "drafts": len(allsel),
            "valid_rate": round(sum(r["valid"] for r in allsel) / len(allsel), 3) if allsel else None,
            "seconds_per_draft": round(sum(r["seconds"] for r in allsel) / len(allsel), 1) if allsel else None,
            "prompt_tokens_per_s": round(m["prompt_tokens_total"] / m["prompt_seconds_total"], 1) if m.get("prompt_seconds_total") else None,
            "generation_tokens_per_s": round(m["tokens_predicted_total"] / m["tokens_predicted_seconds_total"], 1) if m.get("tokens_predicted_seconds_total") else None,
            "mean_tokens_in": round(sum(r.get("tokens_in", 0) for r in allsel) / len(allsel)) if allsel else None,
            "mean_tokens_out": round(sum(r.get("tokens_out", 0) for r in allsel) / len(allsel)) if allsel else None,
        }
    results["summary"] = table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drafts", type=int, default=40, help="drafts per template and mode (default 40)")
    parser.add_argument("--modes", default="grammar,free", help="grammar, free or both (comma separated)")
    parser.add_argument("--templates", default=",".join(TEMPLATES))
    parser.add_argument("--minutes", type=float, default=60.0, help="stop drafting after this long (resume later)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per LLM request (no retries: a local retry redoes the same work)")
    parser.add_argument("--max-tokens", type=int, default=default_max_tokens(), help="response cap per draft")
    parser.add_argument("--llm-model", type=Path, default=None, help="another GGUF file (default: the packaged model)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--fresh", action="store_true", help="discard earlier drafts in --out")
    parser.add_argument("--measure-install", action="store_true", help="time the pip installs and the assembly")
    parser.add_argument("--measure-build", action="store_true", help=f"time the source build of the alternative engine ({BUILD_COMMAND})")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    templates = [t for t in args.templates.split(",") if t]

    from agents.context import DraftContext, describe_task
    from agents.llm import LLMSettings, make_llm
    from agents.prompts import PromptSet

    results = json.loads(args.out.read_text()) if args.out.exists() and not args.fresh else {}
    results.setdefault("drafts", [])
    results.setdefault("metrics", {})
    results.setdefault("load", {})
    results["machine"] = machine()
    if args.llm_model is None:
        spec = local_model.DEFAULT_MODEL
        results["model"] = {"name": spec.name, "description": spec.description, "size_bytes": spec.size, "sha256": spec.sha256}
    else:
        results["model"] = {"name": args.llm_model.stem, "size_bytes": args.llm_model.stat().st_size,
                            "sha256": local_model.sha256_file(args.llm_model)}
    results["engine"] = ENGINE_REQUIREMENT
    results["modes"] = sorted(set(results.get("modes", [])) | set(modes))
    settings = LLMSettings(spec="local", timeout_s=args.timeout, retries=0, max_tokens=args.max_tokens)
    results["sampling"] = {"temperature": settings.temperature, "max_tokens": settings.max_tokens, "timeout_s": settings.timeout_s}
    if args.measure_install:
        measure_install(results)
    if args.measure_build:
        measure_build(results)

    ctx = DraftContext(task=describe_task({"model": "mobilenetv2", "dataset": "embedded", "budget": "3avg"}),
                       layers=layer_table())
    prompts, parents = PromptSet.load(), baseline_parents()
    deadline = time.monotonic() + args.minutes * 60
    with tempfile.TemporaryDirectory() as logs:
        servers, llms = {}, {}
        try:
            for mode in modes:
                start = time.perf_counter()
                server = LocalLLMServer(model_path=args.llm_model, log_dir=logs, **({} if mode == "grammar" else {"grammar": None}))
                servers[mode] = server.__enter__()
                results["load"].setdefault(mode, []).append(round(time.perf_counter() - start, 1))
                llms[mode] = make_llm(dataclasses.replace(settings, base_url=server.base_url))
                results["metrics"].setdefault(mode, {})
            base = {mode: metrics(servers[mode].base_url) for mode in modes}
            done = lambda m, t: sum(r["mode"] == m and r["template"] == t for r in results["drafts"])  # noqa: E731
            while time.monotonic() < deadline:
                todo = [(m, t) for t in templates for m in modes if done(m, t) < args.drafts]
                if not todo:
                    break
                for mode, template in todo:
                    if time.monotonic() >= deadline:
                        break
                    row = judge(llms[mode], prompts, ctx, parents, template, done(mode, template))
                    row["mode"] = mode
                    results["drafts"].append(row)
                    print(f"{mode:7s} {template:9s} #{done(mode, template):3d} valid={row['valid']!s:5s} "
                          f"{row['seconds']:6.1f}s {row['stage']} {row['reason'][:90]}", flush=True)
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps(results, indent=1))
            for mode in modes:
                now = metrics(servers[mode].base_url)
                acc = results["metrics"][mode]
                for key, value in now.items():
                    acc[key] = acc.get(key, 0.0) + value - base[mode][key]
                results.setdefault("rss_peak_mb", {})[mode] = rss_peak_mb(servers[mode].pid)
        finally:
            for server in servers.values():
                server.stop()
    summarise(results)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: results[k] for k in ("summary", "load", "rss_peak_mb") if k in results}, indent=1))
    if "install" in results:
        print("install:", results["install"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
