"""Orchestration of the TAP search: the only package that holds run state and
writes the database.

| module | job |
|---|---|
| `config.py` | the frozen `RunConfig` (and `ConfigError`: one line, exit 2) |
| `cli.py` | command line -> `RunConfig` (fresh, `--resume`, `--branch`) |
| `lineage.py` | what a resumed or branched run continues from, read from the store |
| `validate.py` | checks before anything is written |
| `controller.py` | template update rules, one class each: paper Eq. 7/8 (edge cases handled), Bradley-Terry |
| `plan.py` | a generation's candidates: seeds (LLM / human baselines), operators, parents, idea families |
| `records.py` | ids, store rows and records of a candidate |
| `state.py` | the checkpointed state (TypedDicts with reducers), population and library rules |
| `nodes.py` | controller, proposer / mutator / crossover, evaluate, critic, select, finalize |
| `build.py` | the LangGraph wiring: the search, and one subgraph per candidate (draft, evaluate, repair) |
| `store.py` | `runs/<run-id>/run.db`: domain tables next to LangGraph's checkpoints |
| `final.py` | layer table for the prompts; the best allocation on the held-out test split |
| `report.py` | `best_proxy.py`, `bits.json`, `report.md` with PNG plots |
| `tui.py` | rich live view / plain log lines, both fed by the same events |
| `run.py` | `python -m graph.run`: start, `--resume`, `--branch` |
| `runs.py` | `python -m graph.runs list / show / replay` |
"""
