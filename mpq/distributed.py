"""Data-parallel training over the GPUs of one host, as ``torchrun`` launches it.

    torchrun --nproc-per-node 4 -m mpq.train --model swin --dataset cifar10 ...

``torchrun`` starts one process per GPU and sets ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK``; without it (a plain ``python -m mpq.train``) there is one
process and nothing here changes the run. The recipe means the same on 1 or N
GPUs: ``--batch-size`` is the global batch, each rank takes its slice of every
batch of one shared permutation, and DistributedDataParallel averages the
gradients (Goyal et al. 2017, "Accurate, Large Minibatch SGD": the update of N
slices of one batch is the update of the batch; BatchNorm statistics stay per
rank, as in their setup).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (one per GPU)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Ranks":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def is_main(self) -> bool:
        """The rank that evaluates, logs and saves."""
        return self.rank == 0

    def start(self, device: str) -> str:
        """Join the process group (NCCL on GPUs, gloo on the CPU); return this rank's device."""
        if self.world == 1:
            return device
        on_gpu = device.startswith("cuda")
        if on_gpu:
            device = f"cuda:{self.local_rank}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if on_gpu else "gloo", device_id=torch.device(device) if on_gpu else None)
        return device

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module that trains: ``model`` itself, or its DDP wrapper (sharing its parameters)."""
        if self.world == 1:
            return model
        device = next(model.parameters()).device
        device_ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def batch_slice(self, order: torch.Tensor, step_in_epoch: int, batch_size: int) -> torch.Tensor:
        """This rank's share of global batch ``step_in_epoch`` of the epoch's permutation."""
        batch = order[step_in_epoch * batch_size:(step_in_epoch + 1) * batch_size]
        return batch.tensor_split(self.world)[self.rank]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def finish(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


class Schedule:
    """Progress in [0, 1]: steps done over steps planned, or elapsed over the time budget.

    With several ranks the elapsed fraction is agreed (the maximum over ranks) every
    ``agree_every`` steps, so every rank stops after the same step: a rank that stopped
    alone would leave the others waiting in DDP's gradient all-reduce forever."""

    def __init__(self, total_steps: int, time_budget_s: float | None, ranks: Ranks = Ranks(),
                 device: str = "cpu", agree_every: int = 10):
        self.total_steps, self.budget, self.start = total_steps, time_budget_s, time.time()
        self.ranks, self.device, self.agree_every = ranks, device, agree_every
        self._time_fraction = 0.0

    def progress(self, step: int) -> float:
        if not self.budget:
            return step / self.total_steps
        if self.ranks.world == 1:
            self._time_fraction = (time.time() - self.start) / self.budget
        elif step % self.agree_every == 0:
            elapsed = torch.tensor([(time.time() - self.start) / self.budget], device=self.device)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            self._time_fraction = float(elapsed)
        return max(step / self.total_steps, self._time_fraction)
