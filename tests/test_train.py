"""mpq.train: the recipe flags and one optimizer step on a real (small) transformer."""
import os
import subprocess
import sys

import torch

from mpq.data import load_splits
from mpq.distributed import Ranks
from mpq.models import build_model
from mpq.train import make_optimizer, parse_args, train_step


def test_compile_is_opt_in_and_recipe_fields_still_override():
    assert parse_args(["--model", "vit"]).compile is False
    config = parse_args(["--model", "vit", "--compile", "--lr", "0.003"])
    assert config.compile is True and config.lr == 0.003 and config.optimizer == "adamw"
    assert parse_args(["--model", "resnet18"]).optimizer == "sgd"


def test_train_steps_fit_a_fixed_batch():
    torch.manual_seed(0)
    splits = load_splits("embedded", None, seed=0)
    model = build_model("vit", splits.spec)
    config = parse_args(["--model", "vit", "--mixup", "0", "--cutmix", "0", "--label-smoothing", "0", "--lr", "0.003"])
    optimizer = make_optimizer(model, config)
    x = (splits.train.images[:32].float() / 255 - 0.5) / 0.5
    y = splits.train.labels[:32]
    generator = torch.Generator().manual_seed(0)
    losses = [float(train_step(model, model, optimizer, x, y, config, generator)) for _ in range(20)]
    assert losses[-1] < 0.7 * losses[0], losses  # no step (or no gradient) stays near ln 10


def test_ranks_slice_every_global_batch_into_disjoint_shares():
    order = torch.randperm(103)
    for step in range(4):  # the last batch of the epoch is short
        shares = [Ranks(rank, 3).batch_slice(order, step, 32) for rank in range(3)]
        assert torch.equal(torch.cat(shares), order[step * 32:(step + 1) * 32])
    assert torch.equal(Ranks().batch_slice(order, 1, 32), order[32:64])


def test_torchrun_trains_on_two_ranks_that_stop_together_and_save_once(tmp_path):
    """Two gloo ranks on the CPU under a time budget: if the ranks disagreed on when the budget
    ran out, one would wait in DDP's all-reduce forever and the run would hit the timeout."""
    out = tmp_path / "vit.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "mpq.train", "--model", "vit", "--dataset", "embedded", "--device", "cpu",
         "--epochs", "100", "--batch-size", "64", "--time-budget-s", "6", "--log-every", "0",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    meta = torch.load(out, weights_only=False)["meta"]
    assert meta["processes"] == 2 and 0 < meta["steps"] < 100 * 71, meta
    assert done.stdout.count('"top1"') == 1, done.stdout  # rank 0 alone reports (and saves)
