"""Accuracy algorithms: each changes weights (SmoothQuant may insert a per-channel Mul) to make quantization lose less.

* :mod:`.bias_correction` — fold the mean output error of each quantized layer back into its bias.
* :mod:`.smoothquant` — move activation outliers into the weights of MatMul/Gemm in transformers.
* :mod:`.cle` — cross-layer equalization of Conv → [ReLU] → Conv chains (depthwise-separable CNNs).
* :mod:`.adaround` — learned rounding of the weights per layer (opt-in), on the converted model.
"""
