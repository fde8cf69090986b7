"""Inference: sliding window with blending, flip TTA, whole-volume prediction and model directories.

``sliding_window_inference`` (MONAI-identical grid and weights, leaner stitching), ``flip_tta``,
``predict_volume``/``predict_file`` (preprocess, window, invert onto the original grid, argmax),
``save_model_dir``/``load_model_dir`` (``model.json`` + ``weights.safetensors``, no pickle) and the
``medcore predict`` CLI in ``medcore.inferers.cli``.
"""

from medcore.inferers.model_dir import FORMAT_VERSION, ModelSpec, load_model_dir, make_spec, read_spec, save_model_dir
from medcore.inferers.predict import predict_file, predict_probabilities, predict_volume
from medcore.inferers.sliding_window import blend_weights, sliding_window_inference, window_starts
from medcore.inferers.tta import flip_combinations, flip_tta

__all__ = ["FORMAT_VERSION", "ModelSpec", "load_model_dir", "make_spec", "read_spec", "save_model_dir",
           "predict_file", "predict_probabilities", "predict_volume", "blend_weights",
           "sliding_window_inference", "window_starts", "flip_combinations", "flip_tta"]
