"""Substrate I, models: registry, stems, committed checkpoints."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from mpq.data import CIFAR10_SPEC, EMBEDDED_SPEC, DatasetSpec, load_splits
from mpq.models import (
    MODEL_NAMES,
    TIMM_MODELS,
    TORCHVISION_MODELS,
    ModelError,
    build_model,
    checkpoint_path,
    load_model,
    read_checkpoint,
)
from mpq.train import SUBSET_SIZE, evaluate_top1

SHARED_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
IMAGENET_SPEC = DatasetSpec("imagenet", 1000, 3, 224, (0.5,) * 3, (0.25,) * 3, ("x",) * 1000)
HAS_TIMM = importlib.util.find_spec("timm") is not None


@pytest.mark.parametrize("spec", [EMBEDDED_SPEC, CIFAR10_SPEC, IMAGENET_SPEC], ids=lambda s: s.name)
@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_every_model_builds_for_every_data_set(name, spec):
    model = build_model(name, spec).eval()
    x = torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size)
    with torch.no_grad():
        assert model(x).shape == (1, spec.num_classes)


def test_small_inputs_get_small_input_stems():
    resnet = build_model("resnet18", CIFAR10_SPEC)
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    assert isinstance(resnet.maxpool, torch.nn.Identity)
    mobilenet = build_model("mobilenetv2", CIFAR10_SPEC)
    assert mobilenet.features[0][0].stride == (1, 1)
    embedded = build_model("resnet18", EMBEDDED_SPEC)
    assert embedded.conv1.in_channels == 1 and embedded.conv1.stride == (2, 2)


@pytest.mark.skipif(HAS_TIMM, reason="timm is installed: the missing-timm error cannot occur")
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_transformers_without_timm_say_what_to_install(name):
    with pytest.raises(ModelError, match="needs timm"):
        build_model(name, CIFAR10_SPEC)


@pytest.mark.skipif(not HAS_TIMM, reason="timm not installed")
@pytest.mark.parametrize("spec", [EMBEDDED_SPEC, CIFAR10_SPEC, IMAGENET_SPEC], ids=lambda s: s.name)
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_transformers_build_for_every_data_set(name, spec):
    model = build_model(name, spec).eval()
    x = torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size)
    with torch.no_grad():
        assert model(x).shape == (1, spec.num_classes)


@pytest.mark.skipif(not HAS_TIMM, reason="timm not installed")
def test_transformer_variants_follow_the_input_size():
    vit = {spec.name: build_model("vit", spec) for spec in (EMBEDDED_SPEC, CIFAR10_SPEC, IMAGENET_SPEC)}
    assert vit["imagenet"].patch_embed.num_patches == 14 * 14 and vit["imagenet"].embed_dim == 192
    assert vit["cifar10"].patch_embed.num_patches == 8 * 8 and len(vit["cifar10"].blocks) == 12
    assert vit["embedded"].patch_embed.num_patches == 7 * 7 and vit["embedded"].embed_dim == 96
    swin = build_model("swin", CIFAR10_SPEC)
    assert swin.patch_embed.proj.kernel_size == (2, 2) and swin.layers[0].blocks[0].window_size == (4, 4)
    assert checkpoint_path("deit", "cifar10") == checkpoint_path("vit", "cifar10")  # same network


def _saved(tmp_path, name, payload, suffix=".pth"):
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(payload, str(path))
    else:
        torch.save(payload, path)
    return str(path)


@pytest.mark.parametrize("layout", ["plain", "model", "ema", "ddp", "safetensors"])
@pytest.mark.parametrize("name", ["resnet18", "vit"])
def test_user_imagenet_weights_load_from_any_usual_layout(name, layout, tmp_path):
    """A user's own timm / torchvision checkpoint, saved as their training scripts do."""
    if name == "vit" and not HAS_TIMM:
        pytest.skip("timm not installed")
    torch.manual_seed(0)
    source = build_model(name, IMAGENET_SPEC).eval()
    state = {k: v.clone().contiguous() for k, v in source.state_dict().items()}
    decoy = {k: torch.zeros_like(v) for k, v in state.items()}
    payload, suffix = {
        "plain": (state, ".pth"),                                              # torch.save(model.state_dict())
        "model": ({"model": state, "epoch": 3}, ".pth"),                       # torchvision references
        "ema": ({"state_dict": decoy, "state_dict_ema": state}, ".pth.tar"),   # timm train.py: EMA first
        "ddp": ({f"module.{k}": v for k, v in state.items()}, ".pth"),          # saved from DDP
        "safetensors": (state, ".safetensors"),                                # timm / HF hub files
    }[layout]
    loaded = load_model(name, IMAGENET_SPEC, _saved(tmp_path, name, payload, suffix))
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(loaded(x), source(x), atol=1e-5)


def test_weights_that_are_no_state_dict_or_do_not_fit_are_clear(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read weights"):
        load_model("resnet18", IMAGENET_SPEC, str(junk))
    with pytest.raises(ModelError, match="holds no state dict"):
        load_model("resnet18", IMAGENET_SPEC, _saved(tmp_path, "list", {"model": [1, 2]}))
    other = build_model("resnet50", IMAGENET_SPEC).state_dict()
    with pytest.raises(ModelError, match="does not fit resnet18 on imagenet"):
        load_model("resnet18", IMAGENET_SPEC, _saved(tmp_path, "r50", other))


def test_unknown_model_lists_valid_names():
    with pytest.raises(ModelError) as error:
        build_model("alexnet", CIFAR10_SPEC)
    assert all(name in str(error.value) for name in MODEL_NAMES)


def test_missing_or_mismatched_weights_are_clear(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model("resnet18", CIFAR10_SPEC, str(tmp_path / "none.pt"))
    with pytest.raises(ModelError, match="does not fit"):
        load_model("resnet18", CIFAR10_SPEC, str(checkpoint_path("mobilenetv2", "cifar10")))


CHECKPOINTS = [("mobilenetv2", "embedded"), ("resnet18", "embedded"), ("vit", "embedded"),
               ("mobilenetv2", "cifar10"), ("resnet18", "cifar10")]


@pytest.fixture(scope="module")
def splits_by_dataset():
    cache = {}

    def get(dataset):
        if dataset not in cache:
            if dataset == "cifar10" and not (SHARED_CIFAR10 / "test.npz").is_file():
                pytest.skip(f"CIFAR-10 npz not found at {SHARED_CIFAR10}")
            cache[dataset] = load_splits(dataset, SHARED_CIFAR10 if dataset == "cifar10" else None)
        return cache[dataset]
    return get


@pytest.mark.parametrize("name, dataset", CHECKPOINTS)
def test_committed_checkpoint_reaches_its_recorded_accuracy(name, dataset, splits_by_dataset):
    """Fails if the weights, the model definition or the preprocessing drift."""
    if name in TIMM_MODELS and not HAS_TIMM:
        pytest.skip("timm not installed")
    splits = splits_by_dataset(dataset)
    meta = read_checkpoint(checkpoint_path(name, dataset))["meta"]
    recorded = meta["top1_test_subset"]
    assert recorded["n"] == SUBSET_SIZE
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(name, splits.spec)
    measured = evaluate_top1(model, splits.test.head(recorded["n"]), "cpu", batch_size=250)
    assert abs(measured - recorded["top1"]) <= 0.005, (measured, recorded)
