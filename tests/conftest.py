"""Shared fixtures: the real models (from PyPI wheels and bushu.zoo_torch), exported once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import bushu.zoo as zoo  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ppocr_rec() -> Path:
    return zoo.path("ppocr-rec")


@pytest.fixture(scope="session")
def ppocr_det() -> Path:
    return zoo.path("ppocr-det")


@pytest.fixture(scope="session")
def ppocr_cls() -> Path:
    return zoo.path("ppocr-cls")


@pytest.fixture(scope="session")
def silero_vad() -> Path:
    return zoo.path("silero-vad")


@pytest.fixture(scope="session")
def speech_16k():
    """1 s of real speech, mono float32 at 16 kHz (tests/data/speech-16k.wav: `espeak-ng -v en -s 150 -w s.wav
    "bushu deploys neural networks on every engine"`, resampled 22050 -> 16000 Hz with scipy.signal.resample_poly,
    2048 samples of silence before, cut at 1 s)."""
    import wave

    import numpy as np

    with wave.open(str(ROOT / "tests" / "data" / "speech-16k.wav")) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768


@pytest.fixture(scope="session")
def torch_zoo():
    """``torch_zoo("digits-cnn", legacy=False) -> Path``: cached ONNX exports of bushu.zoo_torch models."""
    import bushu.zoo_torch as zt

    return lambda name, legacy=False: zt.onnx_path(name, legacy=legacy)


@pytest.fixture(scope="session")
def digits_onnx(torch_zoo) -> Path:
    return torch_zoo("digits-cnn")


@pytest.fixture(scope="session")
def minilm_onnx(torch_zoo) -> Path:
    return torch_zoo("minilm")


def run_cli(*args: str, cwd: str | Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``bushu ARGS`` in a subprocess (as a user would) and capture its output."""
    return subprocess.run([sys.executable, "-m", "bushu", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def wrong_pass(monkeypatch):
    """``wrong_pass(factor)`` registers, for one test, a 'fold' named ``perturb-weight`` that scales the first Conv's
    weight by ``factor`` into a new initializer ``perturbed``: a pass that changes the results. Returns its name."""
    import numpy as np

    from bushu.passes import registry
    from bushu.passes._rewire import new_initializer

    def register(factor: float) -> str:
        def perturb(model, ctx):
            conv = next(n for n in model.graph if n.op_type == "Conv")
            w = conv.inputs[1].const_value.numpy()
            conv.replace_input_with(1, new_initializer(model.graph, (w * factor).astype(np.float32), "perturbed"))
            return 1

        monkeypatch.setitem(registry._PASSES, "perturb-weight",
                            registry.PassInfo("perturb-weight", "test only", "fold", perturb))
        return "perturb-weight"

    return register
