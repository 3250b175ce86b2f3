"""The kinds of file `ftlab.export` writes, in names and words, without torch: the command line
builds its ``export`` options from them whatever command it runs (`ftlab.export` re-exports them)."""
from __future__ import annotations

FORMATS = ("torchscript", "onnx")
QUANTIZATIONS = ("none", "int8")
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}
FILE_SUFFIXES = (".pt", ".pth", ".onnx")  # an --out ending so names a model file, not a folder
FORMAT_HELP = ("A file that takes RGB uint8 images (N, 3, H, W) and returns class probabilities, with normalisation, "
               "resize and crop inside; it needs only torch (TorchScript) or onnxruntime (ONNX). labels.json beside "
               "it names the classes and the preprocessing.")
QUANTIZE_HELP = {
    "torchscript": "int8 quantizes the Linear layers (the head, and any Linear in the backbone) dynamically, "
                   "with torch.ao.quantization.quantize_dynamic; convolutions stay float32",
    "onnx": "int8 quantizes the MatMul and Gemm nodes (the Linear layers) dynamically, with "
            "onnxruntime.quantization.quantize_dynamic; convolutions stay float32",
}
