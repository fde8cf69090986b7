"""Post-processing decided from validation: a stray component is planted in one class's prediction;
keeping the largest component helps that class and hurts the other (which has two true parts), so
only the first is post-processed, in the model directory and in prediction."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medcore.engine.amp import choose_precision
from medcore.engine.distributed import DistContext
from medcore.engine.segmentation import SegmentationEvaluator, postprocessing_decision
from medcore.inferers.model_dir import read_spec, save_model_dir
from medcore.inferers.postprocess import largest_component_helps
from medcore.inferers.predict import predict_volume
from medcore.io import Image

LABELS = {"background": 0, "organ": 1, "lesion": 2}
INFERENCE = {"roi_size": [16, 16, 16], "overlap": 0.5, "mode": "gaussian", "sw_batch_size": 2, "tta": False}


class Echo(nn.Module):
    """A network whose prediction is its input: logits are the one-hot of the rounded image."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.config = {"name": "echo"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x[:, 0].round().long().clamp(0, 2), 3).movedim(-1, 1).float() * self.scale


def reference_and_prediction() -> tuple[torch.Tensor, torch.Tensor]:
    ref = torch.zeros(24, 24, 16, dtype=torch.uint8)
    ref[2:8, 2:8, 2:8] = 1
    ref[14:18, 14:18, 2:6] = 2  # the lesion has two true parts
    ref[14:18, 2:6, 10:14] = 2
    pred = ref.clone()
    pred[19:22, 19:22, 10:13] = 1  # a stray organ component, far from the organ
    return ref, pred


def test_largest_component_kept_only_where_validation_dice_improves(tmp_path):
    ref, pred = reference_and_prediction()
    cases = [{"image": pred[None].float(), "label": ref, "id": "case0"}]
    plan = {"labels": LABELS, "num_classes": 3, "inference": INFERENCE, "target_spacing": [1.0, 1.0, 1.0]}
    metrics = SegmentationEvaluator(cases, plan)(Echo(), DistContext(), choose_precision("cpu", "auto"))
    assert metrics["val_dice_organ"] < 0.95 and metrics["val_dice_largest_organ"] == 1.0
    assert metrics["val_dice_lesion"] == 1.0 and metrics["val_dice_largest_lesion"] < 0.8

    decision = postprocessing_decision(metrics, LABELS)
    assert decision["keep_largest"] == ["organ"]
    assert decision["configs"] == [{"name": "KeepLargestConnectedComponent", "applied_labels": [1],
                                    "independent": True, "connectivity": None}]
    assert largest_component_helps({"a": 0.5, "b": math.nan}, {"a": 0.5, "b": 0.9}) == []  # ties and NaN: no

    model_dir = save_model_dir(tmp_path / "model", Echo(), inference=INFERENCE, labels=LABELS,
                               postprocessing=decision["configs"])
    spec = read_spec(model_dir)
    assert spec.postprocessing == decision["configs"]
    image = Image(pred[None].float())
    out = predict_volume(Echo(), spec, image, device="cpu")
    assert torch.equal(out.data[0], ref)  # the stray is gone, both lesion parts stay
    plain = predict_volume(Echo(), read_spec(save_model_dir(tmp_path / "plain", Echo(), inference=INFERENCE,
                                                           labels=LABELS)), image, device="cpu")
    assert torch.equal(plain.data[0], pred)
