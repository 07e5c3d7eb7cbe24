#!/bin/bash
# Issue 17's searches on the 2-core machine, one after another (each ~55 min on a shared machine).
# A finished one (runs/<id>/report.md) is skipped, an interrupted one resumed, so rerunning this
# script after a session ends continues where it stopped. Then:
#   python -m benchmarks.experiment collect <ids>   (CPU), heldout (GPU), report (CPU).
cd "$(dirname "$0")/.."
search() {
  id=$1; shift
  [ -f runs/$id/report.md ] && return
  if [ -f runs/$id/run.db ]; then
    .venv/bin/python -m benchmarks.default_run --run-id $id --resume --out runs/$id.summary.json >> runs/$id.log 2>&1
  else
    .venv/bin/python -m benchmarks.default_run --run-id $id --out runs/$id.summary.json -- "$@" >> runs/$id.log 2>&1
  fi
}
search exp-paper-s0
search exp-paper-s1 --seed 1
search exp-human-s0 --seed-population human
search exp-dpo-s0 --controller dpo
search exp-paper-s2 --seed 2
# Where allocation still matters after reconstruction (experiment/scan, one H100): MobileNetV2 at
# 3 avg bits with 4-bit activations, best - median of the human baselines 2.5 points after
# reconstruction (at {2,3,4,8} bits or 2.25-2.5 avg bits with A8: 0.3 points at most).
search exp-a4-s0 --act-bits 4
# The reconstruction-aware fitness at the same setting (issue 17): acc_quant after a short block
# reconstruction of each candidate's allocation (10 steps per block on 64 images: ~50 s a candidate
# on the 2 cores, against ~27 s for round-to-nearest; benchmarks/results/recon_fitness.json).
search exp-a4-recon-s0 --act-bits 4 --fitness-ptq reconstruct --fitness-recon-iters 10 --fitness-calib 64
