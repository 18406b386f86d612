"""The evaluation data bushu ships: deterministic, well-formed, and read correctly by the real models."""

from __future__ import annotations

import numpy as np
import pytest

from bushu import datasets
from bushu.engines import open_session


def test_digits_split_is_fixed_and_disjoint():
    a, b = datasets.digits(), datasets.digits()
    x_tr, y_tr, x_te, y_te = a
    assert x_tr.shape[1:] == (1, 8, 8) and x_tr.dtype == np.float32 and 0 <= x_tr.min() and x_tr.max() <= 1
    assert len(x_tr) + len(x_te) == 1797 and len(x_te) == 449
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert set(np.unique(y_te)) == set(range(10))


def test_text_lines_match_rapidocr_preprocessing():
    lines = datasets.text_lines(12, seed=3)
    assert [t.text for t in lines] == [t.text for t in datasets.text_lines(12, seed=3)]
    assert len({t.text for t in lines}) > 8
    for t in lines:
        assert t.x.dtype == np.float32 and t.x.shape[:3] == (1, 3, 48) and t.x.shape[3] >= 320
        assert -1.0 <= t.x.min() and t.x.max() <= 1.0
    # a 96x40 white image becomes 48 high and 20 wide, padded with zeros to 320
    x = datasets.rec_preprocess(np.full((96, 40, 3), 255, np.uint8))
    assert x.shape == (1, 3, 48, 320) and np.all(x[..., :20] == 1.0) and np.all(x[..., 20:] == 0.0)


def test_ppocr_decode_merges_repeats_and_drops_blanks():
    keys = ["blank", "a", "b", " "]
    steps = [0, 1, 1, 0, 1, 2, 2, 0, 3, 2]
    logits = np.eye(4, dtype=np.float32)[steps][None]
    assert datasets.ppocr_decode(logits, keys) == ["aab b"]


def test_ppocr_rec_reads_rendered_lines(ppocr_rec):
    sess = open_session(str(ppocr_rec), "ort")
    lines = datasets.text_lines(20, seed=11)
    read = [datasets.ppocr_decode(next(iter(sess.run({"x": t.x}).values())))[0] for t in lines]
    assert np.mean([r == t.text for r, t in zip(read, lines)]) >= 0.85


def test_sentences_cover_several_topics():
    s = datasets.sentences()
    topics = {t for t, _ in s}
    assert len(s) >= 200 and len(topics) >= 8
    texts = [x for _, x in s]
    assert len(set(texts)) == len(texts) and all(x.endswith(".") and len(x.split()) >= 5 for x in texts)


def test_photos_are_rgb_uint8():
    pytest.importorskip("skimage")
    photos = datasets.photos()
    assert len(photos) >= 4
    assert all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 for p in photos.values())
