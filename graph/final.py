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

    def test_accuracy(self, bits: dict[str, int], final_model: dict, settings) -> dict:
        """Top-1 / loss on the test split of ``bits`` under the search's own quantizer (round-to-nearest
        on the task's calibration images) and of full precision, measuring only what is not known yet:
        the final model (``final_model``, what ``final_model()`` returned) is that very quantization when
        ``settings`` say so, and the project's checkpoints record their FP top-1 on published test splits
        (mpq.models.recorded_test_top1). On the default task that saves two of the final step's passes
        over 10,000 test images on a CPU."""
        from mpq.models import recorded_test_top1
        from mpq.quant import QuantConfig, Quantizer, evaluate

        t = self.task
        test = self.splits.test
        images, labels = test.normalized(t.device), test.labels.to(t.device)
        if settings.repeats_search(t.calib_size, t.seed):
            result = {"test_acc": final_model["top1_torch"], "test_loss": final_model["loss_torch"]}
        else:
            quantizer = Quantizer(self.model, self.calib_images, QuantConfig(act_bits=t.act_bits))
            quantized = evaluate(quantizer.apply(bits), images, labels)
            result = {"test_acc": quantized.top1, "test_loss": quantized.loss}
        recorded = recorded_test_top1(t.model, t.dataset, t.weights)
        fp = recorded if recorded is not None else evaluate(self.model, images, labels).top1
        return {**result, "fp_test_acc": fp, "fp_test_acc_source": "measured" if recorded is None else "checkpoint",
                "test_images": len(labels)}

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
