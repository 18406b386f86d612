"""A factory for `bushu export`: a small CNN trained (in seconds, deterministically) on scikit-learn's digits.

    bushu export examples/digits_cnn.py:factory -o digits.onnx --dynamic-batch --output-names logits

``factory()`` returns ``(module, example_inputs)``; the example is one real 1x1x8x8 image from the test split.
"""

import torch

from bushu.zoo_torch import digits_cnn


def factory():
    module, (_, _, x_test, _) = digits_cnn(seed=0)
    return module, (torch.from_numpy(x_test[:1]),)
