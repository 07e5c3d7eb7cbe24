"""Deployable artifacts of the final quantized model: integer checkpoint and QDQ ONNX.

    python -m mpq.export RUN_ID [--runs-dir runs] [--final-ptq rtn|reconstruct] [--calib-final N]
                                [--recon-iters N] [--keep-first-last-8bit] [--device cpu] [--no-onnx]

For a run that already exists: reads its task (``run.db``) and allocation
(``bits.json``), quantizes the model (round-to-nearest or reconstruction,
``mpq.ptq_final``), and writes into the run folder

* ``quantized.pt``: integer weights, per-channel scales, bias, activation
  parameters and the bit map (format: ``mpq.ptq_model``; ``load_quantized``);
* ``quantized.onnx`` (needs the ``onnx`` package): the network with
  QuantizeLinear / DequantizeLinear pairs (uint8) on every layer input and a
  DequantizeLinear (per output channel, axis 0) on every weight; weights of at
  most 4 bits are stored as INT4 (2-bit ones use its [-2, 1] part, or [-1, 2]
  where a reconstructed channel chose the mirrored grid, ``mpq.ptq_stack.grid_of``), 5..8-bit
  ones as INT8 with their true range. Opset 21 (the first with INT4 in
  DequantizeLinear);
* ``export.json``: sizes (next to the budget), top-1 of the PyTorch
  fake-quantized model and of ``onnxruntime`` on the test split (when installed).

Only the ONNX part needs ``onnx`` / ``onnxruntime`` (``pip install tap-mpq[export]``);
they are imported lazily, so mpq stays torch / numpy / scipy otherwise.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import sqlite3
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mpq.data import DatasetSpec, spread_indices
from mpq.ptq_final import FINAL_PTQ_MODES, FinalPTQ, final_quantize
from mpq.ptq_model import QuantizedNet
from mpq.quant import evaluate

OPSET = 21
"""ONNX opset of the file (21: DequantizeLinear takes INT4 / UINT4)."""
_EXPORTER_OPSET = 20
"""The highest opset of torch's TorchScript exporter; the file is lifted to ``OPSET`` afterwards (every
operator it emits, Conv / Gemm / Relu / Clip / Add / pooling / Flatten / Q / DQ, has the same meaning
in 21; only new integer types were added)."""


class ExportError(ValueError):
    """A run or checkpoint cannot be exported; one line for the user."""


def onnx_bytes(net: QuantizedNet, example: torch.Tensor) -> bytes:
    """The QDQ ONNX model of ``net`` (see the module doc) as serialized bytes."""
    import onnx

    module = net.to_module()
    buffer = io.BytesIO()
    torch.onnx.export(module, (example.cpu(),), buffer, dynamo=False, opset_version=_EXPORTER_OPSET,
                      input_names=["images"], output_names=["logits"], do_constant_folding=False,
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    model = onnx.load_from_string(buffer.getvalue())
    _quantize_weights(model, net)
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = OPSET
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _quantize_weights(model, net: QuantizedNet) -> None:
    """Replace each layer's float weight initializer by integers + a per-channel DequantizeLinear."""
    from onnx import TensorProto, helper, numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    new_nodes = []
    for name, q in net.layers.items():
        weight_name = f"{name}.layer.weight"
        if weight_name not in initializers:
            raise ExportError(f"ONNX export lost the weight of {name}")
        model.graph.initializer.remove(initializers[weight_name])
        dtype = TensorProto.INT4 if q.bits <= 4 else TensorProto.INT8
        values = q.weight_int.to(torch.int32).numpy()
        channels = values.shape[0]
        model.graph.initializer.extend([
            helper.make_tensor(f"{name}.weight_int", dtype, values.shape, values.flatten().tolist()),
            numpy_helper.from_array(q.scale.numpy().astype(np.float32), f"{name}.weight_scale"),
            helper.make_tensor(f"{name}.weight_zero", dtype, [channels], [0] * channels),
        ])
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}.weight_int", f"{name}.weight_scale",
                                                               f"{name}.weight_zero"], [weight_name],
                                          name=f"{name}.weight_dequantize", axis=0))
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes + nodes)  # weight DQ nodes first: the graph stays topologically sorted


def onnx_top1(data: bytes, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500,
              optimized: bool = False) -> float:
    """Top-1 (0..1) of the ONNX model in onnxruntime (CPU) on normalized ``images``.

    ``optimized=False`` runs the graph as written (the check against PyTorch: same arithmetic);
    ``True`` lets onnxruntime fuse Q / DQ pairs into integer kernels as a deployment would, which
    moves some logits (on the embedded MobileNetV2 with 2/4/8-bit layers: 32 of 1,000
    predictions changed, top-1 -0.2 points; tests/test_export.py)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    correct = 0
    for s in range(0, len(images), batch_size):
        logits = session.run(["logits"], {"images": images[s:s + batch_size].cpu().numpy()})[0]
        correct += int((logits.argmax(1) == labels[s:s + batch_size].cpu().numpy()).sum())
    return correct / max(len(images), 1)


def read_run(run_dir: Path) -> tuple[dict, dict]:
    """(task dict, bits.json) of an existing run folder."""
    db, bits_file = run_dir / "run.db", run_dir / "bits.json"
    if not bits_file.is_file():
        raise ExportError(f"{bits_file} not found: the run has no final allocation yet")
    if not db.is_file():
        raise ExportError(f"{db} not found")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("select config from runs limit 1").fetchone()
    finally:
        conn.close()
    if row is None:
        raise ExportError(f"{db} has no run row")
    return json.loads(row[0])["task"], json.loads(bits_file.read_text())


def file_sizes(paths: dict[str, Path], net: QuantizedNet, budget_mb: float | None) -> dict:
    sizes = {f"{k}_bytes": p.stat().st_size for k, p in paths.items()}
    sizes["packed_weights_bytes"] = net.weight_bytes()
    if budget_mb is not None:
        sizes["budget_bytes"] = int(budget_mb * 2**20)
    return sizes


def export_final(model: nn.Module, model_name: str, spec: DatasetSpec, bits: dict[str, int], calib: torch.Tensor,
                 test_images: torch.Tensor, test_labels: torch.Tensor, settings: FinalPTQ, out_dir: Path,
                 act_bits: int | None = 8, budget_mb: float | None = None, onnx: bool = True,
                 check_images: int = 2000) -> dict:
    """Quantize ``bits`` the final way, write ``quantized.pt`` (and ``quantized.onnx``) into ``out_dir``;
    returns what ``export.json`` holds (top-1 of both, sizes, seconds)."""
    net, info = final_quantize(model, bits, calib, settings, act_bits)
    net.meta.update({"model": model_name, "dataset": spec.name})
    paths = {"checkpoint": net.save(out_dir / "quantized.pt", model_name, spec)}
    module = net.to_module()
    measured = evaluate(module, test_images.cpu(), test_labels.cpu(), per_image=True)
    result = {**info, "top1_torch": measured.top1, "loss_torch": measured.loss, "test_images": len(test_labels)}
    if onnx and importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):
        data = onnx_bytes(net, test_images[:1])
        paths["onnx"] = out_dir / "quantized.onnx"
        paths["onnx"].write_bytes(data)
        # the check runs on ``check_images`` test images spread over the split (onnxruntime on a CPU is
        # the slow part; CIFAR-10's test file is sorted by class, so its head would be two classes);
        # PyTorch's top-1 on them is read from the pass above, not measured again
        spread = torch.from_numpy(spread_indices(len(test_labels), check_images))
        x, y = test_images[spread.to(test_images.device)].cpu(), test_labels[spread.to(test_labels.device)].cpu()
        result.update({"check_images": len(y), "top1_torch_checked": int(measured.correct[spread].sum()) / len(spread),
                       "top1_onnxruntime": onnx_top1(data, x, y),
                       "top1_onnxruntime_optimized": onnx_top1(data, x, y, optimized=True)})
    elif onnx:
        result["onnx"] = "skipped: pip install onnx onnxruntime (tap-mpq[export])"
    result["sizes"] = file_sizes(paths, net, budget_mb)
    result["paths"] = {k: str(p) for k, p in paths.items()}
    (out_dir / "export.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def export_run(run_dir: Path, settings: FinalPTQ, device: str = "cpu", data_root: str | None = None,
               onnx: bool = True) -> dict:
    """``export_final`` for an existing run folder (task from ``run.db``, allocation from ``bits.json``)."""
    from mpq.data import calibration_batch, load_splits
    from mpq.models import load_model
    from mpq.task import Task

    task_dict, bits_json = read_run(run_dir)
    task = Task.from_dict(task_dict)
    splits = load_splits(task.dataset, data_root or task.data_root, seed=task.seed)
    model = load_model(task.model, splits.spec, task.weights).to(device)
    calib, _ = calibration_batch(splits, settings.calib_images(task.calib_size), settings.seed, device)
    test = splits.test
    return export_final(model, task.model, splits.spec, bits_json["bits"], calib, test.normalized(device),
                        test.labels.to(device), settings, run_dir, task.act_bits, bits_json.get("size_mb"), onnx)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mpq.export", description=__doc__.splitlines()[0])
    p.add_argument("run_id", help="a run folder name under --runs-dir")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--final-ptq", default="rtn", choices=FINAL_PTQ_MODES)
    p.add_argument("--calib-final", type=int, help="calibration images (default: 1024 for reconstruct, "
                   "the run's own for rtn)")
    p.add_argument("--recon-iters", type=int, default=FinalPTQ.iters)
    p.add_argument("--keep-first-last-8bit", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="calibration draw (the run's task seed for RTN: 0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", help="override the run's data root")
    p.add_argument("--no-onnx", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mpq.data import DataError
    from mpq.models import ModelError

    try:
        settings = FinalPTQ(mode=args.final_ptq, calib_size=args.calib_final, iters=args.recon_iters,
                            keep_first_last_8bit=args.keep_first_last_8bit, seed=args.seed)
        run_dir = Path(args.runs_dir) / args.run_id
        if not run_dir.is_dir():
            raise ExportError(f"no run {args.run_id!r} under {args.runs_dir}")
        result = export_run(run_dir, settings, args.device, args.data_root, onnx=not args.no_onnx)
    except (ExportError, ValueError, DataError, ModelError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in result.items() if k != "bits"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
