"""The dynamic batcher with several instances, in process (no HTTP): a batch that formed while every instance
waited is shared out among the idle instances, and the split results equal running each request alone."""

from __future__ import annotations

import asyncio

import numpy as np

from bushu import engines
from bushu.serve import service
from bushu.serve.config import ModelDefaults
from bushu.serve.manager import ModelManager
from bushu.serve.protocol import InferRequest
from bushu.serve.repository import Repository

CLS_OUT = "save_infer_model/scale_0.tmp_1"


def _run_concurrently(repo, xs):
    async def main():
        manager = ModelManager(Repository(str(repo), ModelDefaults()), ModelDefaults())
        await manager.load_all()
        try:
            # submitted in one loop iteration: all 8 are queued before the 500 ms queue delay runs out
            res = await asyncio.gather(*(service.infer(manager, "cls", "", InferRequest({"x": x})) for x in xs))
            return res, manager.get("cls", "").stats
        finally:
            await manager.close()

    return asyncio.run(main())


def test_a_formed_batch_is_shared_among_idle_instances(tmp_path, ppocr_cls):
    (tmp_path / "cls" / "1").mkdir(parents=True)
    (tmp_path / "cls" / "1" / "model.onnx").symlink_to(ppocr_cls)
    (tmp_path / "cls" / "config.pbtxt").write_text(
        "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 500000 }\n"
        "instance_group { count: 2 kind: KIND_CPU }\n")
    rng = np.random.default_rng(5)
    xs = [rng.random((1, 3, 48, 192), dtype=np.float32) for _ in range(8)]
    res, stats = _run_concurrently(tmp_path, xs)
    # one batch of 8 formed; the instance that took it kept 4 and left 4 to the other, which ran them at once
    # (without the share: one execution of 8, or of 8 after waiting out the delay)
    assert stats.execution_count == 2 and set(stats.batches) == {4}, stats.batches
    assert stats.durations["queue"][1] / 8 < 400e6  # nobody waited out the 500 ms delay
    ref = engines.open_session(str(ppocr_cls), "ort", spin=False)
    for x, r in zip(xs, res):
        np.testing.assert_allclose(r.outputs[CLS_OUT], ref.run({"x": x})[CLS_OUT], rtol=1e-5, atol=1e-6)


def test_batches_stack_into_a_reused_staging_buffer_and_split_right(tmp_path, ppocr_cls):
    """Successive merged batches (of different sizes) on one instance are stacked into the same buffer; every
    request still gets its own result, and a later batch doesn't change an earlier batch's answers."""
    from bushu.serve.config import EngineSection
    from bushu.serve.model import ModelVersion
    from bushu.serve.repository import Repository as Repo

    (tmp_path / "cls" / "1").mkdir(parents=True)
    (tmp_path / "cls" / "1" / "model.onnx").symlink_to(ppocr_cls)
    src = Repo(str(tmp_path), ModelDefaults()).source("cls")
    mv = ModelVersion("cls", "1", src.versions["1"], src.config, EngineSection("ort", 1, "all"), configured=False,
                      defaults=ModelDefaults())
    rng = np.random.default_rng(6)
    ref = engines.open_session(str(ppocr_cls), "ort", spin=False)
    kept, buffers = [], set()
    for sizes in ((1, 2, 1), (3, 1), (1, 1, 1, 1, 1, 1, 1, 1)):
        xs = [rng.random((n, 3, 48, 192), dtype=np.float32) for n in sizes]
        out = mv.execute([InferRequest({"x": x}) for x in xs])
        buffers.add(mv._staging[0, "x"].ctypes.data)
        kept.append((xs, [o[CLS_OUT].copy() for o in out], out))
    assert len(buffers) == 1  # one staging buffer, reused
    for xs, copies, out in kept:
        for x, c, o in zip(xs, copies, out):
            np.testing.assert_allclose(o[CLS_OUT], ref.run({"x": x})[CLS_OUT], rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(o[CLS_OUT], c)
