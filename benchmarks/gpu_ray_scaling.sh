#!/bin/bash
# Issue 18's figure: Ray slots vs process slots on the GPU machine (one GPU, 16 cores) -> $OUT/ray.json,
# merged by hand into benchmarks/results/ray.json. Run from the repo root: OUT=dir bash benchmarks/gpu_ray_scaling.sh
#
# That machine has no Ray and no network, and the Ray wheel (ray-2.60.0 cp312 manylinux2014, 79 MB)
# is over the 64 MiB a call may carry, so it travels in two parts on two back-to-back calls to one
# warm machine (ignored files stay there between calls). Here, once:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d /tmp/rw ray==2.60.0 jsonschema jsonschema-specifications referencing rpds-py
#   split -d -b 40000000 /tmp/rw/ray-*.whl .whl/ray.part-      # .whl/ and .whl2/ in .git/info/exclude
#   mv .whl/ray.part-01 .whl2/ && cp /tmp/rw/{j,r}*.whl .whl2/
#   git rm -q --cached mpq/checkpoints/resnet18_*.pt           # 45 MB the benchmark does not need
# Call 1: carry [".whl"], command `true`. Call 2, within 30 s: carry [".whl2"], this script.
# Afterwards: git reset -q mpq/checkpoints. Measured in session 7: install 20 s; a warm-up 16-25 s a pool.
# One point is up to 8 minutes (1 slot: 453 s, three HAWQ-V2 evaluations take most of it), so the points
# go over several calls to the same warm machine: SLOTS="4 2" BACKENDS=ray OUT=... bash benchmarks/gpu_ray_scaling.sh
set -u
OUT=${OUT:?set OUT}
if [ ! -d /tmp/site/ray ]; then  # a later call on the same warm machine reuses the install
  cat .whl/ray.part-00 .whl2/ray.part-01 > /tmp/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl || exit
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    /tmp/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl .whl2/*.whl || exit
fi
export PYTHONPATH=/tmp/site TAP_MPQ_CACHE=/tmp/tap-mpq-cache PYTHONUNBUFFERED=1
# slot counts 1 and 4 first (the bar); the file is rewritten after every point
timeout "${LIMIT:-540}" python3 -m benchmarks.ray_scaling --device cuda --dataset cifar10-mini --eval-limit 1000 \
  --slots ${SLOTS:-1 4 2 8} --backends ${BACKENDS:-ray process} --evaluations 40 --exclude ${EXCLUDE:-} --label ${LABEL:-gpu} --out "$OUT/ray.json" \
  --note "${NOTE:-GPU machine: one GPU, 16 cores; cifar10-mini search split, 1,000 images an evaluation; every slot shares the one GPU (Ray: 1/slots of it) and gets 16/slots cores (both backends); 40 evaluations of the human baselines and their sqrt/square mutations per point}" \
  2>&1 | grep -v -e 'logging.cc' -e '^    @' -e WARNING | tail -20
