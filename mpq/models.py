"""Model registry, input-size-aware stems, and weight loading.

Stems follow the input size (``DatasetSpec.image_size``):
- 224 (ImageNet): torchvision's architectures unchanged.
- 32 (CIFAR-10): the usual CIFAR stem: ResNet gets a 3x3 stride-1 first conv and
  no max-pool; MobileNetV2 a stride-1 first conv and a stride-1 second stage
  (total stride 8, as in the common CIFAR MobileNetV2).
- 28 (embedded MNIST-5k, 1 channel): a light small-input variant sized for a
  2-core CPU search: ResNet18 with a 3x3 stride-2 stem and no max-pool,
  MobileNetV2 at width 0.5 with a stride-1 first conv (total stride 16).

- Transformers (timm): ImageNet gets timm's architecture unchanged (ViT-Ti/16,
  DeiT-Ti/16, Swin-T); small inputs get the variants of ``SMALL_INPUT_VARIANTS``
  (smaller patches so that a 32x32 image still makes 64-256 tokens, and a
  narrower, shallower net for the 2-core embedded search).

Weights: ``None`` = the project's own checkpoint (``mpq/checkpoints``), a file
path, or ``"torchvision"`` (ImageNet-pretrained, needs a machine that can fetch them).
A file may be a project checkpoint, a plain ``state_dict`` as torchvision and
timm save them, a training checkpoint holding one (``state_dict``, ``model``,
``state_dict_ema``, ``model_ema``; a DDP ``module.`` prefix is dropped), or a
``.safetensors`` file: a user's own ImageNet weights load without any download.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tv

from mpq.data import PUBLISHED_TEST_SPLIT, DatasetSpec

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
TORCHVISION_MODELS = ("mobilenetv2", "resnet18", "resnet50")
TIMM_MODELS = {  # registry name -> timm architecture (built at the data set's input size)
    "vit": "vit_tiny_patch16_224",
    "deit": "deit_tiny_patch16_224",   # the same network as ViT-Ti/16 (DeiT differs in its recipe)
    "swin": "swin_tiny_patch4_window7_224",
}
MODEL_NAMES = TORCHVISION_MODELS + tuple(TIMM_MODELS)

_VIT_CIFAR = dict(patch_size=4)          # ViT-Ti (192 wide, 12 blocks, 3 heads), 8x8 tokens
_VIT_EMBEDDED = dict(patch_size=4, embed_dim=96, depth=6, num_heads=3, mlp_ratio=2.0)  # 7x7 tokens
SMALL_INPUT_VARIANTS: dict[tuple[str, str], dict] = {
    # (model, input class) -> timm keyword arguments over the ImageNet architecture.
    # cifar: 32..64 pixels; embedded: under 32 (28x28 MNIST, sized for a 2-core CPU search).
    ("vit", "cifar"): _VIT_CIFAR,
    ("deit", "cifar"): _VIT_CIFAR,
    ("vit", "embedded"): _VIT_EMBEDDED,
    ("deit", "embedded"): _VIT_EMBEDDED,
    # Swin: 2x2 patches give 16x16 tokens, 4x4 windows; stages at 16, 8, 4, 2 tokens a side.
    # Width 48 (Swin-T: 96) keeps the fp16 checkpoint at ~14 MB.
    ("swin", "cifar"): dict(patch_size=2, window_size=4, embed_dim=48, depths=(2, 2, 6, 2),
                            num_heads=(2, 4, 8, 16)),
    # 28x28: 14x14 tokens, one 7x7 window, two stages (14 and 7 a side).
    ("swin", "embedded"): dict(patch_size=2, window_size=7, embed_dim=32, depths=(2, 2),
                               num_heads=(2, 4)),
}


class ModelError(Exception):
    """A model cannot be built or its weights loaded; one line for the user."""


def build_model(name: str, spec: DatasetSpec) -> nn.Module:
    """An untrained model for ``spec`` (classes, channels, input size)."""
    if name not in MODEL_NAMES:
        raise ModelError(f"unknown model '{name}'; valid: {', '.join(MODEL_NAMES)}")
    if name in TIMM_MODELS:
        return _build_timm(name, spec)
    if name == "mobilenetv2":
        return _mobilenetv2(spec)
    return _resnet(name, spec)


def _resnet(name: str, spec: DatasetSpec) -> nn.Module:
    model = getattr(tv, name)(num_classes=spec.num_classes)
    if spec.image_size <= 64:
        stride = 2 if spec.image_size < 32 else 1
        model.conv1 = nn.Conv2d(spec.in_channels, 64, 3, stride=stride, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif spec.in_channels != 3:
        model.conv1 = nn.Conv2d(spec.in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model


def _mobilenetv2(spec: DatasetSpec) -> nn.Module:
    # torchvision's default setting: (expansion t, channels c, repeats n, stride s)
    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
               [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
    width = 1.0
    if spec.image_size == 32:
        setting[1][3] = 1          # CIFAR: keep 32x32 through the 24-channel stage
    elif spec.image_size < 32:
        width = 0.5                # embedded: small and fast on a CPU
    model = tv.MobileNetV2(num_classes=spec.num_classes, width_mult=width,
                           inverted_residual_setting=setting)
    if spec.image_size <= 64 or spec.in_channels != 3:
        first = model.features[0][0]
        stride = 1 if spec.image_size <= 64 else 2
        model.features[0][0] = nn.Conv2d(spec.in_channels, first.out_channels, 3,
                                         stride=stride, padding=1, bias=False)
    return model


def _build_timm(name: str, spec: DatasetSpec) -> nn.Module:
    if importlib.util.find_spec("timm") is None:
        raise ModelError(f"model '{name}' needs timm: pip install timm")
    import timm

    kwargs = dict(pretrained=False, num_classes=spec.num_classes, in_chans=spec.in_channels,
                  img_size=spec.image_size)
    kwargs.update(SMALL_INPUT_VARIANTS.get((name, input_class(spec)), {}))
    try:
        return timm.create_model(TIMM_MODELS[name], **kwargs)
    except (AssertionError, ValueError, RuntimeError) as error:  # e.g. a size the windows do not tile
        raise ModelError(f"{name} cannot be built for {spec.image_size}x{spec.image_size} inputs: "
                         f"{error}") from None


def input_class(spec: DatasetSpec) -> str:
    """Which stem family an input size gets: embedded (< 32 px), cifar (32..64 px) or imagenet."""
    if spec.image_size < 32:
        return "embedded"
    return "cifar" if spec.image_size <= 64 else "imagenet"


# --------------------------------------------------------------------------
# Weights


CHECKPOINT_ALIASES = {"deit": "vit"}
"""Models that are the same network as another here (DeiT-Ti is ViT-Ti: DeiT changed
the recipe, not the architecture), so they share its checkpoint."""


def checkpoint_path(name: str, dataset: str) -> Path:
    return CHECKPOINT_DIR / f"{CHECKPOINT_ALIASES.get(name, name)}_{dataset}.pt"


def load_model(name: str, spec: DatasetSpec, weights: str | None = None) -> nn.Module:
    """Build ``name`` for ``spec`` and load its weights; the model is in eval mode."""
    model = build_model(name, spec)
    if weights == "torchvision":
        _load_torchvision_weights(model, name, spec)
    else:
        path = Path(weights) if weights else checkpoint_path(name, spec.name)
        if not path.is_file():
            hint = "" if weights else f" (train one: python -m mpq.train --model {name} --dataset {spec.name})"
            raise ModelError(f"no weights for {name} on {spec.name}: {path} not found{hint}")
        state = read_state_dict(path)
        try:
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        except RuntimeError as error:
            raise ModelError(f"{path} does not fit {name} on {spec.name}: "
                             f"{_first_mismatch(str(error))}") from None
    return model.eval()


def recorded_test_top1(name: str, dataset: str, weights: str | None = None) -> float | None:
    """The FP test top-1 that ``mpq.train`` recorded in the project's checkpoint, where it was measured
    on the same test split as ``dataset``'s (``mpq.data.PUBLISHED_TEST_SPLIT``); None otherwise (user
    weights, a seeded split, no record). Saves a full test pass on a CPU (10,000 CIFAR-10 images)."""
    split = PUBLISHED_TEST_SPLIT.get(dataset)
    path = checkpoint_path(name, split) if split else None
    if weights or path is None or not path.is_file():
        return None
    meta = read_checkpoint(path).get("meta", {})
    return float(meta["top1"]) if meta.get("dataset") == split and "top1" in meta else None


def read_checkpoint(path: Path) -> dict:
    """A project checkpoint: {"state_dict": ..., "meta": {...}}; no pickled code."""
    return torch.load(path, map_location="cpu", weights_only=True)


_STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
"""Where training scripts keep the weights (timm's train.py saves ``state_dict`` and
``state_dict_ema``; torchvision's reference scripts ``model`` and ``model_ema``);
EMA weights first, as timm's own loader does."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights in ``path``: a project checkpoint, a plain state dict, a training
    checkpoint holding one, or a ``.safetensors`` file (no pickled code is run)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # installed with timm

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unreadable, not a checkpoint, or pickled code
        raise ModelError(f"cannot read weights from {path}: {str(error).splitlines()[0]}") from None
    if isinstance(state, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} holds no state dict (expected tensors by name, or one under "
                         f"{', '.join(_STATE_DICT_KEYS)})")
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _first_mismatch(message: str) -> str:
    """The first concrete problem of load_state_dict's error (missing / unexpected key, shape)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[1][:300] if len(lines) > 1 else lines[0][:300]


def save_checkpoint(model: nn.Module, path: Path, meta: dict) -> None:
    """fp16 weights (half the size, accuracy checked after the round trip);
    BatchNorm statistics stay fp32."""
    state = {}
    for key, value in model.state_dict().items():
        keep_fp32 = "running_" in key or not value.is_floating_point()
        state[key] = value.detach().cpu() if keep_fp32 else value.detach().cpu().half()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "meta": meta}, path)


def _load_torchvision_weights(model: nn.Module, name: str, spec: DatasetSpec) -> None:
    if name not in TORCHVISION_MODELS or spec.image_size != 224 or spec.num_classes != 1000:
        raise ModelError(f"torchvision weights exist only for {', '.join(TORCHVISION_MODELS)} "
                         "on 224x224 ImageNet (1000 classes)")
    builder = {"mobilenetv2": tv.mobilenet_v2, "resnet18": tv.resnet18, "resnet50": tv.resnet50}[name]
    try:
        pretrained = builder(weights="DEFAULT")
    except Exception as error:  # offline machines cannot fetch them
        raise ModelError(f"cannot fetch torchvision weights for {name}: {error}") from None
    model.load_state_dict(pretrained.state_dict())
