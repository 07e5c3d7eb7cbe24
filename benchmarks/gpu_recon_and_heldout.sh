#!/bin/bash
# One GPU call (one H100, under 10 min), after gpu_base_models.sh. Run from the repo root:
#   OUT=dir bash benchmarks/gpu_recon_and_heldout.sh
# 1. Issue 17: the held-out run of the exp-a4-s0 search's setting (MobileNetV2, 3 avg bits, 4-bit
#    activations): every discovered proxy in benchmarks/results/experiment/proxies and the eight
#    human baselines, RTN over 3 calibration draws and reconstruction over 3 seeds
#    -> $OUT/heldout_a4.json (rewritten after every step).
# 2. Issue 16: ResNet50's reconstruction leaderboard (3/4/5 avg bits, the 7 cheap baselines, block
#    reconstruction 310 steps per block) on cifar10-mini, the split the other reconstruction
#    leaderboards use -> $OUT/leaderboard_resnet50_cifar10-mini_recon.json.
# RECON=0 skips 2. Needs mpq/checkpoints/{mobilenetv2,resnet50}_cifar10.pt. ResNet50's (47 MB) is not tracked: with
# the tracked checkpoints taken out of the index (see gpu_base_models.sh), carry both files:
# 8.4 MB of tree + 52 MB. Both jobs share the GPU and one deadline (LIMIT s).
set -u
OUT=${OUT:?set OUT}; LIMIT=${LIMIT:-540}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 TAP_MPQ_CACHE=${TAP_MPQ_CACHE:-/tmp/tap-mpq-cache}
LOGS=$(mktemp -d)
# resumed from the committed run: only proxies collected since (exp-a4-recon-s0) are evaluated
RESUME=benchmarks/results/experiment/heldout_a4.json
python3 -m benchmarks.experiment heldout --device cuda --act-bits 4 --models mobilenetv2 --budgets 3avg \
  $([ -f $RESUME ] && echo --resume-from $RESUME) --out "$OUT/heldout_a4.json" --recon-seeds 0,1,2 --time-limit-s $((LIMIT - 30)) > "$LOGS/heldout_a4.log" 2>&1 &
[ "${RECON:-1}" = 1 ] && [ -f mpq/checkpoints/resnet50_cifar10.pt ] && timeout "$LIMIT" python3 -m sandbox.leaderboard --model resnet50 \
  --dataset cifar10-mini --budget 3avg,4avg,5avg --device cuda --final-ptq reconstruct --recon-iters 310 \
  --baselines uniform,random,weight_norm,snip,tap_formula,ompq,emq \
  --json "$OUT/leaderboard_resnet50_cifar10-mini_recon.json" > "$LOGS/leaderboard_resnet50_recon.log" 2>&1 &
wait
tail -n 5 "$LOGS"/*.log
tar czf "$OUT/logs.tgz" -C "$LOGS" .
