#!/bin/bash
# One GPU call (one H100, under 10 min): issues 15 and 17 together. Run from the repo root:
#   OUT=dir bash benchmarks/gpu_heldout_and_scan.sh
# 1. The experiment's held-out run, resumed: every discovered proxy in
#    benchmarks/results/experiment/proxies (run `python -m benchmarks.experiment collect ...` first),
#    the human baselines (HAWQ-V2 per-layer again), RTN over 3 calibration seeds and reconstruction
#    over 3 seeds; allocations already reconstructed are kept. Back on the CPU:
#    `python -m benchmarks.leaderboard_reconstruct` turns it into the leaderboards + README table.
# 2. In parallel, where allocation may still matter after reconstruction (issue 17): the human
#    baselines at 2.25 / 2.5 avg bits with OMPQ / EMQ's bit set {2,3,4,8}, and at 2.25 / 3 avg bits
#    with 4-bit activations, reconstructed with one seed.
# Every job shares one deadline (LIMIT s from the start) and writes straight into $OUT, so what
# finished comes back even if the call is cut: $OUT/heldout.json (rewritten after every step),
# $OUT/scan/<model>_<setting>.json and $OUT/logs.tgz (at most 8 files come back).
# (Session 5's first call lost 10 minutes here: heldout ran without --device cuda and each
# model's two scans ran one after the other, each with the full limit.)
set -u
OUT=${OUT:?set OUT}; LIMIT=${LIMIT:-540}
DEADLINE=$(( $(date +%s) + LIMIT ))
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 TAP_MPQ_CACHE=${TAP_MPQ_CACHE:-/tmp/tap-mpq-cache}
LOGS=$(mktemp -d); mkdir -p "$OUT/scan"
HUMANS=uniform,random,weight_norm,snip,tap_formula,ompq,emq
left() { echo $(( DEADLINE - $(date +%s) )); }
scan() {  # name, flags...  (one model's settings share the time that is left)
  local name=$1; shift
  [ "$(left)" -gt 30 ] || { echo "$name: skipped, no time left"; return; }
  timeout "$(left)" python3 -m sandbox.leaderboard --dataset cifar10-mini --device cuda --baselines $HUMANS \
    --final-ptq reconstruct --recon-iters 310 --calib-seeds 0,1,2 "$@" --json "$OUT/scan/$name.json" \
    > "$LOGS/$name.log" 2>&1
  echo "$name: exit $?"
}
python3 -m benchmarks.experiment heldout --device cuda --resume-from benchmarks/results/experiment/heldout.json \
  --out "$OUT/heldout.json" --recon-seeds 0,1,2 --time-limit-s $((LIMIT - 30)) > "$LOGS/heldout.log" 2>&1 &
for m in mobilenetv2 resnet18; do
  scan ${m}_bits2348 --model $m --budget 2.25avg,2.5avg --bits 2,3,4,8 &
  scan ${m}_a4 --model $m --budget 2.25avg,3avg --act-bits 4 &
done
wait
tail -n 3 "$LOGS"/*.log
tar czf "$OUT/logs.tgz" -C "$LOGS" .
