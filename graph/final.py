"""The orchestrator's two direct uses of mpq/ (no proxy code runs here):

* the layer table shown in the prompts (mpq.features.describe_layers);
* the final measurement: the best proxy's allocation (layer -> bits, already
  computed in the sandbox) applied to the model, top-1 on the held-out test
  split, next to full precision;
* the final model: that allocation quantized once more as the run's
  ``FinalPTQ`` says (round-to-nearest or reconstruction) and exported
  (``quantized.pt``, ``quantized.onnx``, ``export.json``; mpq.export).
"""
from __future__ import annotations

from dataclasses import dataclass

from mpq.task import Task


@dataclass
class TaskModel:
    """Model, data splits and calibration batch of a task, loaded once."""

    task: Task

    def __post_init__(self) -> None:
        from mpq.data import calibration_batch, load_splits
        from mpq.models import load_model

        t = self.task
        self.splits = load_splits(t.dataset, t.data_root, seed=t.seed)
        self.model = load_model(t.model, self.splits.spec, t.weights).to(t.device).eval()
        self.calib_images, self.calib_labels = calibration_batch(self.splits, t.calib_size, t.seed, t.device)

    def describe_layers(self) -> str:
        from mpq.features import describe_layers, extract_features

        return describe_layers(extract_features(self.model, self.calib_images, self.calib_labels, with_grad=False))

    def test_accuracy(self, bits: dict[str, int]) -> dict:
        """Top-1 / loss on the test split of the model quantized with ``bits``, and of full precision."""
        from mpq.quant import QuantConfig, Quantizer, evaluate

        quantizer = Quantizer(self.model, self.calib_images, QuantConfig(act_bits=self.task.act_bits))
        test = self.splits.test
        images, labels = test.normalized(self.task.device), test.labels.to(self.task.device)
        quantized = evaluate(quantizer.apply(bits), images, labels)
        full = evaluate(quantizer.apply({}, act_quant=False), images, labels)
        return {"test_acc": quantized.top1, "test_loss": quantized.loss, "fp_test_acc": full.top1,
                "test_images": quantized.images}

    def final_model(self, bits: dict[str, int], settings, run_dir, budget_mb: float | None) -> dict:
        """Quantize ``bits`` the final way, export it into ``run_dir``; what ``export.json`` holds."""
        from pathlib import Path

        from mpq.data import calibration_batch
        from mpq.export import export_final

        calib, _ = calibration_batch(self.splits, settings.calib_images(self.task.calib_size), settings.seed,
                                     self.task.device)
        test = self.splits.test
        return export_final(self.model, self.task.model, self.splits.spec, bits, calib,
                            test.normalized(self.task.device), test.labels.to(self.task.device), settings,
                            Path(run_dir), self.task.act_bits, budget_mb)
