"""A tiny real model trained on the embedded data set, shared by the mpq tests.

Trained once per test process (a few seconds on a CPU): the quantizer, features,
ground truth and fitness are exercised on real weights and real images, with a
conv, a depthwise conv, a pointwise conv and a linear layer, each followed by
BatchNorm where a real network has one.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from mpq.data import calibration_batch, load_splits


def tiny_cnn() -> nn.Module:
    def block(cin, cout, k, stride=1, groups=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU())
    return nn.Sequential(block(1, 8, 3, 2), block(8, 16, 3, 2), block(16, 16, 3, 1, groups=16),
                         block(16, 32, 1), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, 10))


@dataclass(frozen=True)
class TinySetup:
    model: nn.Module
    calib_images: torch.Tensor
    calib_labels: torch.Tensor
    search_images: torch.Tensor
    search_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


@functools.lru_cache(maxsize=1)
def tiny_setup() -> TinySetup:
    torch.manual_seed(0)
    splits = load_splits("embedded")
    x, y = splits.train.normalized(), splits.train.labels
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _epoch in range(2):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 100):
            idx = order[start:start + 100]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    calib_images, calib_labels = calibration_batch(splits, 16, seed=0)
    val, test = splits.val.head(500), splits.test.head(500)
    return TinySetup(model, calib_images, calib_labels, val.normalized(), val.labels,
                     test.normalized(), test.labels)
