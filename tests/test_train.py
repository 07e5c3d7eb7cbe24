"""mpq.train: the recipe flags and one optimizer step on a real (small) transformer."""
import torch

from mpq.data import load_splits
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
