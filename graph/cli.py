"""``python -m graph.run``'s command line -> one checked, frozen RunConfig.

Every option's default is None so that ``--resume`` / ``--branch`` can tell
what was given. Task options are stored under ``task.<field>`` destinations:
the :class:`mpq.task.Task` field each one sets is named where the option is
declared, so no second table restates them.
"""
from __future__ import annotations

import argparse
import dataclasses

from agents.llm import LLMConfigError, add_llm_arguments, settings_with_args
from agents.prompts import default_prompt_set
from graph.config import ConfigError, RunConfig, new_run_id
from graph.controller import rule_names
from graph.lineage import branch_point, resumed_config
from graph.plan import SEED_POPULATIONS
from graph.validate import parse_bits, validate
from mpq.data import DATASET_NAMES
from mpq.fitness_ptq import FITNESS_PTQ_MODES
from mpq.ptq_final import FINAL_PTQ_MODES, FinalPTQ
from mpq.reconstruct import DEFAULT_ITERS
from sandbox.pool import BACKEND_NAMES

SANDBOXES = BACKEND_NAMES
"""``--sandbox`` choices: ``auto`` (the pool picks) and every registered backend."""
TASK_PREFIX = "task."
TASK_PARSERS = {"bits": parse_bits}
"""Task fields whose option text needs more than argparse's ``type`` (errors as ConfigError)."""


def build_parser() -> argparse.ArgumentParser:
    """``graph.run``'s options; choices come from the registries (models, data sets, rules, backends)."""
    p = argparse.ArgumentParser(
        prog="python -m graph.run",
        description="TAP search: LLM agents evolve training-free MPQ proxies.")
    task = p.add_argument_group("task")

    def task_option(flag: str, field: str, help: str, **kwargs) -> None:
        task.add_argument(flag, dest=TASK_PREFIX + field, metavar=field.upper(), help=help, **kwargs)

    task_option("--model", "model", "model registry name (default: mobilenetv2)")
    task_option("--dataset", "dataset", "default: cifar10-mini (shipped CIFAR-10 subset)", choices=DATASET_NAMES)
    task_option("--data-root", "data_root", "folder holding the data set")
    task_option("--weights", "weights", "checkpoint path or 'torchvision' (default: the project's)")
    task_option("--budget", "budget", '"3avg" | "1.5MB" | "8x" (default: 3avg)')
    task_option("--bits", "bits", "candidate weight bits, comma-separated (default: 2,4,8)")
    task_option("--act-bits", "act_bits", "activation bits, every layer's input (default: 8)", type=int)
    task_option("--alpha", "alpha", "phi = alpha*rho + (1-alpha)*acc (default: 0.1)", type=float)
    task_option("--calibration", "calib_size", "calibration images (default: 16)", type=int)
    task_option("--eval-limit", "eval_limit", "cap on search-split images for acc_quant", type=int)
    task_option("--device", "device", "cpu | cuda (default: cpu)")
    task_option("--fitness-ptq", "fitness_ptq", "acc_quant after round-to-nearest (the paper's) or a short block "
                "reconstruction, BRECQ/AdaRound (default: rtn)", choices=FITNESS_PTQ_MODES)
    task_option("--fitness-recon-iters", "fitness_recon_iters",
                "reconstruction steps per block of the reconstruct fitness (default: 100)", type=int)
    task_option("--fitness-calib", "fitness_calib",
                "training images the reconstruct fitness reconstructs on (default: 256)", type=int)
    search = p.add_argument_group("search")
    search.add_argument("--generations", type=int, help="T (default: 5)")
    search.add_argument("--population", type=int, help="N (default: 8)")
    search.add_argument("--repairs", type=int, help="critic repairs per candidate, R (default: 2)")
    search.add_argument("--controller", choices=rule_names(), help="template update rule (default: paper)")
    search.add_argument("--seed-population", choices=SEED_POPULATIONS,
                        help="generation 0: LLM init drafts, the human baselines, or both (default: llm)")
    search.add_argument("--prompts", help="prompt folder (default: prompts/)")
    add_llm_arguments(p)
    final = p.add_argument_group("final model (mpq.ptq_final, mpq.export)")
    final.add_argument("--final-ptq", choices=FINAL_PTQ_MODES,
                       help="round-to-nearest or block reconstruction (BRECQ/AdaRound) (default: reconstruct with --device "
                            "cuda, rtn on a CPU, where reconstruction takes hours)")
    final.add_argument("--calib-final", type=int, help="calibration images of the final model (default: 1024 for reconstruct, "
                       "--calibration for rtn)")
    final.add_argument("--recon-iters", type=int, help=f"reconstruction steps per block (default: {DEFAULT_ITERS})")
    final.add_argument("--keep-first-last-8bit", action="store_true", default=None,
                       help="first and last layer at 8 bits in the final model")
    run = p.add_argument_group("run")
    run.add_argument("--sandbox", choices=SANDBOXES, help="default: auto")
    run.add_argument("--workers", type=int, help="evaluator slots (default: 1)")
    run.add_argument("--eval-timeout", type=float, help="seconds per evaluation (default: 600)")
    run.add_argument("--seed", type=int, help="search seed: operator draws, parents, LLM sampling (default: 0)")
    run.add_argument("--runs-dir", default="runs", help="default: %(default)s")
    run.add_argument("--run-id", help="name of the new run (default: a timestamp)")
    run.add_argument("--no-tui", action="store_true", help="plain log lines instead of the live view")
    run.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run")
    where.add_argument("--branch", metavar="RUN_ID@GEN", help="new run from the end of generation GEN of RUN_ID")
    return p


def parse_run_args(argv: list[str] | None = None) -> RunConfig:
    """``graph.run``'s arguments -> a checked RunConfig (fresh, resumed or branched)."""
    args = build_parser().parse_args(argv)
    if args.resume:
        stored = resumed_config(args.runs_dir, args.resume)
        return dataclasses.replace(stored, runs_dir=args.runs_dir, tui=not args.no_tui, json=args.json,
                                   resume=True, workers=args.workers or stored.workers)
    if args.branch:
        base, parent, generation = branch_point(args.runs_dir, args.branch)
        base = dataclasses.replace(base, run_id=args.run_id or new_run_id(), parent_run=parent,
                                   parent_generation=generation, resume=False)
        config = apply_overrides(base, args, fresh=False)
    else:
        config = apply_overrides(RunConfig(run_id=args.run_id or new_run_id(), runs_dir=args.runs_dir), args,
                                 fresh=True)
    validate(config, fresh=True)
    return config


def task_changes(args: argparse.Namespace) -> dict:
    """The Task fields given on the command line, parsed."""
    changes = {}
    for dest, value in vars(args).items():
        if dest.startswith(TASK_PREFIX) and value is not None:
            name = dest[len(TASK_PREFIX):]
            changes[name] = TASK_PARSERS[name](value) if name in TASK_PARSERS else value
    return changes


def final_changes(args: argparse.Namespace, new_run_device: str | None = None) -> dict:
    """The FinalPTQ fields given on the command line. A new run on a GPU (``new_run_device``) ends with
    block reconstruction unless told otherwise (MobileNetV2: ~44 s on one H100); on a CPU it would take
    hours (benchmarks/results/reconstruction_cpu.json), so there round-to-nearest stays the default."""
    mode = args.final_ptq
    if mode is None and new_run_device is not None and new_run_device.startswith("cuda"):
        mode = "reconstruct"
    given = {"mode": mode, "calib_size": args.calib_final, "iters": args.recon_iters,
             "keep_first_last_8bit": args.keep_first_last_8bit}
    return {k: v for k, v in given.items() if v is not None}


def prompt_choice(given: str | None, base: str | None, llm_spec: str, fresh: bool) -> str | None:
    """``--prompts`` if given; a new run without it gets its LLM's default set (compact for the
    small local models, agents.prompts.default_prompt_set); a resumed or branched run keeps its own."""
    if given is not None:
        return given
    return default_prompt_set(llm_spec) if fresh and base is None else base


def apply_overrides(base: RunConfig, args: argparse.Namespace, fresh: bool) -> RunConfig:
    """``base`` with the options that were given; a branch (not fresh) keeps the parent's task."""
    changes = task_changes(args)
    if changes and not fresh:
        raise ConfigError(f"--branch keeps the parent's task; cannot change {', '.join(sorted(changes))}")
    # --seed is the search's seed (operator draws, parents, LLM sampling); the task's own seed
    # (data split, calibration images) stays, so runs and branches judge proxies alike.
    seed = args.seed if args.seed is not None else base.seed
    controller = base.search.controller
    if args.controller:
        controller = dataclasses.replace(controller, kind=args.controller)
    search = dataclasses.replace(
        base.search, controller=controller,
        **{k: getattr(args, k) for k in ("generations", "population", "repairs", "seed_population")
           if getattr(args, k) is not None})
    try:
        llm = settings_with_args(None if fresh else base.llm, args, seed=seed)
    except LLMConfigError as err:
        raise ConfigError(str(err)) from None
    try:
        device = changes.get("device", base.task.device) if fresh else None
        final = FinalPTQ(**{**dataclasses.asdict(base.final), **final_changes(args, device)})
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return dataclasses.replace(
        base, task=dataclasses.replace(base.task, **changes), search=search, llm=llm, seed=seed, final=final,
        prompts_dir=prompt_choice(args.prompts, base.prompts_dir, llm.spec, fresh),
        sandbox=args.sandbox or base.sandbox,
        workers=args.workers if args.workers is not None else base.workers,
        eval_timeout_s=args.eval_timeout if args.eval_timeout is not None else base.eval_timeout_s,
        runs_dir=args.runs_dir, tui=not args.no_tui, json=args.json)
