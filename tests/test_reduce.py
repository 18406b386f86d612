"""bushu reduce on a real model and real engines: ORT vs OpenVINO at a tolerance tight enough that FP32 rounding
differences count, so the first divergent node is real and the reduced model must reproduce it alone."""

from __future__ import annotations

import numpy as np
import pytest

import bushu
from bushu import engines
from bushu.compare.metrics import Tolerance, diff

TIGHT = Tolerance(atol=1e-7, rtol=1e-7, min_cosine=1.0)


@pytest.mark.skipif("openvino" not in engines.available(), reason="openvino not installed")
def test_reduce_ppocr_cls_ort_vs_openvino(ppocr_cls, tmp_path):
    out = tmp_path / "reduced.onnx"
    part, result = bushu.reduce(ppocr_cls, out, engines=("ort", "openvino"), tol=TIGHT)
    assert result, result.render()
    assert result.nodes_after < 10 < result.nodes_before
    assert result.first_divergence
    m = bushu.load(out)
    with np.load(result.inputs) as z:
        feed = {k: z[k] for k in z.files}
    a = engines.open_session(m, "ort").run(feed)
    b = engines.open_session(m, "openvino").run(feed)
    assert any(not diff(b[k], a[k], tol=TIGHT) for k in a)  # the written files reproduce the mismatch
    assert all(diff(b[k], a[k]) for k in a)  # at the default tolerance the engines agree: it is rounding
    with pytest.raises(bushu.BushuError, match="exists"):
        bushu.reduce(ppocr_cls, out, tol=TIGHT)
