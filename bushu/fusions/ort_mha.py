"""MultiHeadAttention (ONNX Runtime contrib op, ``com.microsoft``) from multi-head self-attention.

The block :mod:`.ort_attention` matches, where Q, K and V are three (B,S,D) values (projections of any kind):

    y = Reshape(Transpose(Softmax(heads(Q) @ heads(K)^T * scale + mask) @ heads(V), [0,2,1,3]), (B,S,D))
      == MultiHeadAttention(Q, K, V, attention_bias=mask, num_heads=N, scale=scale)

It keeps the Q/K/V MatMuls (ORT's Attention packs them into one, see ``ort-attention``); which is faster depends on
the model and the machine, so ``--target ort`` measures each and keeps what wins.
"""

from __future__ import annotations

import onnx_ir as ir

from ..passes.registry import PassContext, register
from .ort_attention import fuse


@register("ort-mha", "[--target ort] MultiHeadAttention (com.microsoft) from self-attention, projections kept", "ort")
def run(model: ir.Model, ctx: PassContext) -> int:
    return fuse(model, ctx, "ort-mha", "MultiHeadAttention")
