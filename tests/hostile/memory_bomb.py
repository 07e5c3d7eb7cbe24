"""Allocates far more memory than the machine has (Python list, then a torch tensor).
Gate: passes (plain code). Contained: RLIMIT_AS; MemoryError becomes an error result."""
import torch


def score(layer):
    hoard = []
    for _ in range(64):
        hoard.append(torch.ones(1 << 28))  # 1 GiB each
    return float(len(hoard))
