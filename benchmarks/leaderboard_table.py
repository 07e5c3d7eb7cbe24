"""The README's CIFAR-10 baseline table: every model's leaderboard side by side.

Reads ``benchmarks/results/leaderboard_<model>_cifar10.json`` (written by
``python -m sandbox.leaderboard --json``, one H100) for each model that has one and
prints one markdown table: per proxy and model, rho_sens and the held-out top-1 at
3 / 4 / 5 average bits (round-to-nearest), then the full-precision row. Also writes it
to ``benchmarks/results/leaderboard_cifar10.md``.

    python -m benchmarks.leaderboard_table
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MODELS = ("mobilenetv2", "resnet18", "resnet50", "vit", "swin")
BUDGETS = ("3avg", "4avg", "5avg")


def load(model: str) -> dict | None:
    path = RESULTS / f"leaderboard_{model}_cifar10.json"
    return json.loads(path.read_text()) if path.is_file() else None


def cell(rows: list[dict], proxy: str) -> tuple[str, str]:
    """(rho_sens, 'top-1 @3 / 4 / 5') of one proxy in one model's leaderboard."""
    mine = {r["budget"]: r for r in rows if r["proxy"] == proxy}
    if not mine:
        return "–", "–"
    rho = next(iter(mine.values()))["rho_sens"]
    tops = " / ".join(f"{100 * mine[b]['top1_test']:.1f}" if b in mine else "–" for b in BUDGETS)
    return f"{rho:+.2f}", tops


def table(boards: dict[str, dict]) -> str:
    proxies = list(dict.fromkeys(r["proxy"] for board in boards.values() for r in board["rows"]))
    head = ["proxy"] + [f"{m} rho / top-1 @3 / 4 / 5" for m in boards]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for proxy in proxies:
        cells = [" · ".join(cell(board["rows"], proxy)) for board in boards.values()]
        lines.append(f"| {proxy} | " + " | ".join(cells) + " |")
    fp = [next(f"{100 * r['top1_test']:.1f} (FP)" for r in board["reference"] if r["name"] == "FP")
          for board in boards.values()]
    lines.append("| full precision | " + " | ".join(fp) + " |")
    return "\n".join(lines)


def main() -> None:
    boards = {m: board for m in MODELS if (board := load(m)) is not None}
    text = table(boards)
    (RESULTS / "leaderboard_cifar10.md").write_text(
        "Held-out top-1 (%) on CIFAR-10's 10,000 test images, weights {2,4,8} bits by the exact "
        "allocator, activations 8-bit, round-to-nearest; rho_sens = Spearman with the measured "
        "one-layer sensitivity. Built by `python -m benchmarks.leaderboard_table` from "
        "leaderboard_<model>_cifar10.json.\n\n" + text + "\n")
    print(text)


if __name__ == "__main__":
    main()
