"""Set before any test imports torch: idle OpenMP threads of the test process sleep instead of
spinning. With two torch threads spinning on a 2-core machine that also runs other work (a local
LLM, other engineers' jobs), every parallel region waits for a preempted thread: HAWQ-V2 on
ResNet50 took 229 s instead of 21 s beside the LLM benchmark (benchmarks/results/test_suite.md,
session 7). The sandbox's workers set the same (sandbox/process_backend.py: worker_environment)."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
