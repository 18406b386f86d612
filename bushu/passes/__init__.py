"""``bushu.optimize``: graph passes and fusions to standard ONNX, each verified on ONNX Runtime.

The pipeline (:mod:`.pipeline`) is a list of pass names (:mod:`.registry`). With ``verify="each"`` every pass runs
on a structural copy of the model that shares its weights (``ir.Model.clone``: nodes and values are new, tensors
are not copied); the copy replaces the model only when its outputs match the original's (:mod:`.verify`), else the
pass is rolled back, named with the first divergent node, and the pipeline goes on.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnx_ir as ir

from .. import engines
from .. import ir as bir
from ..compare.metrics import Tolerance
from ..engines.base import EngineOptions
from ..errors import BushuError
from ..inputs import check_feed
from ..timing import Latency, measure_interleaved
from . import ort_target, pipeline, registry
from .registry import FOLD_SIZE_LIMIT, PassContext, PassOptions
from .result import OptimizeResult, Step, initializer_bytes, op_counts
from .tidy import tidy
from .verify import (
    DEFAULT_TOL,
    STRIP_BYTES,
    Verifier,
    check_model,
    check_written,
    first_line,
    make_feeds,
)

__all__ = ["OptimizeResult", "check_model", "optimize"]

VERIFY_EACH_LIMIT = 1 << 30  # bytes of weights; above it each pass would cost a full ORT load, so verify at the end


def _latencies(before: ir.Model | str, after: ir.Model | str, feed) -> tuple[Latency, Latency]:
    """ONNX Runtime latency (all its optimizations, 2 threads) of the original and the output, timed in alternating
    blocks so that background load hits both alike (spinning off: two sessions share the process)."""
    opts = EngineOptions(opt_level="all", threads=2, spin=False)
    runs = []
    for model in (before, after):
        sess = engines.open_session(model, "ort", opts)
        f = {s.name: feed[s.name] for s in sess.inputs if s.name in feed}
        runs.append(lambda sess=sess, f=f: sess.run(f))
    (a, b), _ = measure_interleaved(runs, rounds=6, warmup_s=0.2, budget_s=1.0)
    return a, b


def _clone(src: ir.Model, name: str) -> ir.Model:
    """Copy a model the checker rejected (``--allow-invalid``): a tensor that nothing defines can't be copied or
    rewritten, so it is named instead of failing deep inside the IR."""
    defined = {v.name for v in src.graph.inputs} | set(src.graph.initializers)
    for node in src.graph:
        for v in node.inputs:
            if v is not None and v.producer() is None and v.name not in defined:
                raise BushuError(f"{name}: node '{node.name}' ({node.op_type}) reads '{v.name}', which no node, "
                                 "input or initializer defines; --allow-invalid can't optimize a graph with a "
                                 "dangling tensor: fix the model first")
    try:
        return src.clone()
    except (RuntimeError, ValueError) as e:
        raise BushuError(f"{name} is invalid in a way bushu can't copy: {first_line(e)}") from e


def optimize(
    model: ir.Model | str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    level: str = "extended",
    passes: str | list[str] | None = None,
    skip: str | list[str] | None = None,
    verify: str | None = None,
    opset: int | None = None,
    static_shapes: Mapping[str, object] | None = None,
    inputs=None,
    samples: int | None = None,
    tol: Tolerance = DEFAULT_TOL,
    fold_size_limit: int = FOLD_SIZE_LIMIT,
    allow_invalid: bool = False,
    latency: bool = True,
    force: bool = False,
    show_progress: bool = True,
    target: str = "generic",
    **synth,
) -> tuple[ir.Model, OptimizeResult]:
    """Optimize ``model`` (an ``ir.Model``, left unchanged, or a path) and return ``(optimized, result)``.

    ``level``: ``basic`` (clean-up), ``extended`` (+ folds into weights, fusions, MatMul+Add → Gemm; the default) or
    ``all`` (+ a second clean-up); ``passes`` replaces the level's list, ``skip`` removes names from it. ``verify``:
    ``each`` (default for weights under 1 GB), ``end`` or ``off``; verification feeds are ``inputs`` (a .npy/.npz
    path or folder, a feed, a list of feeds) or ``samples`` synthesized ones (``synth``: keywords of
    :func:`bushu.inputs.synthesize`; by default 3, and 1 with ``verify="end"`` on a graph without If/Loop/Scan,
    where one random feed reaches every node: see :func:`default_samples`). ``opset`` converts the model first (the fusions need 17/20/23).
    ``static_shapes`` fixes dims in the output before the passes run, as ``bushu edit --shape`` does
    (``{"x": (1, 3, 48, 320)}`` an input's whole shape, ``{"batch": 1}`` a symbolic dim everywhere), so folds
    that need static shapes fire; the feeds are synthesized at those shapes. ``latency`` measures ONNX Runtime
    (all optimizations, 2 threads) before and after. ``output`` saves the result atomically (refusing to
    overwrite the input without ``force``). ``target="ort"`` adds ONNX Runtime contrib fusions (com.microsoft
    ops: the output is for ONNX Runtime only), each kept only where ORT runs faster with it (:mod:`.ort_target`).
    """
    t_start = time.perf_counter()
    if samples is not None and samples < 1:
        raise BushuError(f"--samples {samples}: verification needs at least 1 feed (to skip it: --verify off)")
    if fold_size_limit < 0:
        raise BushuError(f"--fold-limit {fold_size_limit}: give the largest folded tensor in elements, 0 or more "
                         f"(default {FOLD_SIZE_LIMIT})")
    # A thread for what runs outside Python: the original's reference run on ONNX Runtime (which releases the GIL)
    # beside the passes.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bushu-optimize") as pool:
        given = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
        src = bir.load(model) if given is not None else model
        work, result = _optimize(src, given, pool, output, t_start, level=level, passes=passes,
                                 skip=skip, verify=verify, opset=opset, static_shapes=static_shapes, inputs=inputs,
                                 samples=samples, tol=tol, fold_size_limit=fold_size_limit,
                                 allow_invalid=allow_invalid, latency=latency, force=force,
                                 show_progress=show_progress, target=target, synth=synth)
    return work, result


def default_samples(model: ir.Model, verify: str) -> int:
    """How many feeds to synthesize for verification: 3 (values that take different branches, or edge cases a
    single draw misses, show up in one of them), but 1 for ``--verify end`` when the graph has no If/Loop/Scan:
    every node then runs on every feed, a random feed exercises every element, and the original and the output
    each run once instead of three times (on ResNet-18 at 224x224: 0.2 s of ONNX Runtime less)."""
    return 1 if verify == "end" and len(registry.graphs(model)) == 1 else 3


def _optimize(src: ir.Model, given: str | None, pool: ThreadPoolExecutor, output,
              t_start: float, *, level, passes, skip, verify, opset, static_shapes, inputs, samples, tol,
              fold_size_limit, allow_invalid, latency, force, show_progress, target, synth
              ) -> tuple[ir.Model, OptimizeResult]:
    """The steps of :func:`optimize`: check the input, copy it (with ``--shape``/``--opset`` edits), run the passes,
    write and verify the output, time both, report."""
    name = str(src.meta.get("bushu.path") or src.graph.name or "model")
    names = pipeline.select(level, passes, skip)
    ort_target.check_target(target)
    original = _original(src, given, output, force)
    verify = _verify_mode(src, verify)
    invalid = _check_input(src, original, name, allow_invalid)
    work, edits, synth = _working_copy(src, name, invalid, static_shapes, synth)
    feeds = _feeds(src, work, inputs, default_samples(src, verify) if samples is None else samples,
                   needed=verify != "off" or latency or target != "generic", edited=bool(edits), synth=synth)
    verifier = Verifier(original, feeds, tol) if verify != "off" else None  # runs the original on first use
    work = _convert_opset(work, opset, verifier, edits)
    ctx = PassContext(PassOptions(fold_size_limit=fold_size_limit))
    work, steps = _run_passes(names, work, ctx, pool, verifier, verify, feeds, target, skip, show_progress)
    unchanged = not edits and not any(s.status == "kept" for s in steps)
    with tempfile.TemporaryDirectory(prefix="bushu-opt-") as tmp:
        path = output if output is not None else os.path.join(tmp, "model.onnx")
        if unchanged and isinstance(original, str) and bir.fits_one_proto(src):
            written, checker_error, verify_error = _copy_input(original, output, path, ctx)
        else:
            written, checker_error, verify_error = _write_verified(work, path, pool, verifier, unchanged, invalid,
                                                                   force, ctx)
        lat_before, lat_after = _latencies(original, str(written), feeds[0]) if latency else (None, None)
    return work, OptimizeResult(
        model=name, output=str(output) if output is not None else None, level=level if not passes else "custom",
        verify=verify, opset_before=src.opset_imports.get("", 1), opset_after=work.opset_imports.get("", 1),
        nodes_before=op_counts(src), nodes_after=op_counts(work), initializer_bytes_before=initializer_bytes(src),
        initializer_bytes_after=initializer_bytes(work), steps=tuple(steps),
        notes=(*(e for e in edits if e.startswith("--shape")),
               *(f"{t} (x{n})" if n > 1 else t for t, n in sorted(ctx.notes.items()))),
        checker_error=checker_error, verify_error=verify_error, latency_before=lat_before, latency_after=lat_after,
        seconds=time.perf_counter() - t_start,
    )


def _original(src: ir.Model, given: str | None, output, force: bool) -> ir.Model | str:
    """The original as ONNX Runtime reads it for the reference run and the latency: its file when we read it from
    one (without serializing the weights again; a model passed in memory may differ from the file it came from),
    else the model. Refuses an ``output`` that is the input file, unless ``force``."""
    source = bir.source_path(src)
    if output is not None and source is not None and os.path.realpath(output) == str(source) and not force:
        raise BushuError(f"refusing to overwrite the input {output}: choose another output path or pass --force")
    return str(source) if given is not None and source else src


def _verify_mode(src: ir.Model, verify: str | None) -> str:
    verify = verify or ("each" if bir.weight_bytes(src) < VERIFY_EACH_LIMIT else "end")
    if verify not in ("each", "end", "off"):
        raise BushuError(f"unknown --verify '{verify}': choose each, end or off")
    return verify


# Above this many bytes of large main-graph initializers the input is checked in memory without them; below, the
# checker reads the file (measured: 10 MB in initializers, file 7.5 ms vs memory 17 ms, the graph's serialization
# in Python dominating; 47 MB, 103 vs 56 ms; 90 MB, 169 vs 104 ms; weights in Constant nodes, as PP-OCR's, gain
# nothing in memory).
CHECK_IN_MEMORY_BYTES = 24 << 20


def _check_input(src: ir.Model, original: ir.Model | str, name: str, allow_invalid: bool) -> str | None:
    """The checker's complaint about the input (None when it passes); an error unless ``allow_invalid``. A model
    with large weights in its initializers is checked in memory, without parsing them again; others from their
    file when they came from one."""
    strippable = sum(v.const_value.nbytes for v in src.graph.initializers.values()
                     if v.const_value is not None and v.const_value.nbytes > STRIP_BYTES)
    from_file = isinstance(original, str) and (strippable < CHECK_IN_MEMORY_BYTES or not bir.fits_one_proto(src))
    invalid = check_model(original if from_file else src)
    if invalid and not allow_invalid:
        raise BushuError(f"{name} fails onnx.checker ({invalid}): fix the model, or pass --allow-invalid to "
                         "optimize it anyway")
    return invalid


def _working_copy(src: ir.Model, name: str, invalid: str | None, static_shapes, synth: dict
                  ) -> tuple[ir.Model, list[str], dict]:
    """The copy the passes rewrite (sharing the weights), with ``static_shapes`` fixed in it; the edits made, and
    ``synth`` with those shapes for the synthesized feeds."""
    work = _clone(src, name) if invalid else src.clone()
    work.meta.update({k: v for k, v in src.meta.items() if k != "bushu.path"})
    if not static_shapes:
        return work, [], synth
    from ..edit import set_dims  # bushu.edit imports this package

    edits = [f"--shape: {e}" for e in set_dims(work, static_shapes)]
    return work, edits, {**synth, "shapes": {**dict(static_shapes), **(synth.get("shapes") or {})}}


def _feeds(src: ir.Model, work: ir.Model, inputs, samples: int, *, needed: bool, edited: bool, synth: dict):
    """The feeds to verify and time with (none when nothing needs them); given ``inputs`` must fit the shapes
    ``--shape`` fixed."""
    if not needed:
        return []
    feeds = make_feeds(src, inputs, samples, **synth)
    if edited and inputs is not None:
        specs, _ = engines.model_specs(work)
        for f in feeds:
            check_feed(f, specs, source="inputs (against the shapes --shape fixed)")
    return feeds


def _convert_opset(work: ir.Model, opset: int | None, verifier: Verifier | None, edits: list[str]) -> ir.Model:
    """``work`` at ``opset`` (recorded in ``edits``), verified; refused when the conversion changed the outputs."""
    before = work.opset_imports.get("", 1)
    if opset is None or opset == before:
        return work
    work = bir.convert_opset(work, opset)
    edits.append(f"--opset: {before} -> {opset}")
    failure = verifier.check(work) if verifier else None
    if failure:
        raise BushuError(f"converting to opset {opset} changed the outputs ({failure.reason}): keep the model's "
                         "opset")
    return work


def _run_passes(names: list[str], work: ir.Model, ctx: PassContext, pool: ThreadPoolExecutor,
                verifier: Verifier | None, verify: str, feeds, target: str, skip, show_progress: bool
                ) -> tuple[ir.Model, list[Step]]:
    """The pipeline to a fixed point (each pass verified with ``verify="each"``), then the ``target``'s fusions,
    then :func:`tidy`. The reference run of the original starts in ``pool`` at the first kept step, not before: a
    run that changes nothing needs none."""
    on_change = (lambda: verifier.prefetch(pool)) if verifier is not None else None
    work, steps = pipeline.sweep(names, work, ctx, verifier if verify == "each" else None, feeds, show_progress, on_change)
    if target != "generic":  # engine-specific fusions, each verified and timed (after the generic passes)
        work, target_steps = ort_target.apply(work, target, ctx, verifier, feeds, skip=pipeline.split_names(skip))
        steps = [*steps, *target_steps]
    tidy(work)
    return work, steps


def _copy_input(original: str, output, path: str, ctx: PassContext) -> tuple[str | Path, None, None]:
    """No pass changed the model: the output is the input file's bytes (checked on the way in), not a
    re-serialization of the same graph, checked or run again. (written, checker error, verify error)"""
    written = bir.save_bytes(Path(original).read_bytes(), path) if output is not None else original
    ctx.note("no pass changed the model: the output is the input file, not serialized, checked or run again")
    return written, None, None


def _write_verified(work: ir.Model, path: str, pool: ThreadPoolExecutor, verifier: Verifier | None, unchanged: bool,
                    invalid: str | None, force: bool, ctx: PassContext) -> tuple[Path, str | None, str | None]:
    """Write ``work`` to ``path`` (atomically, serialized once), run the checker on it (not with
    ``--allow-invalid``: the input failed it already) and verify it on ONNX Runtime from the file (unless
    verification is off or nothing changed). (written, checker error, verify error)"""
    checking = None
    if bir.fits_one_proto(work):
        # The weights go to the file from their arrays' memory; the checker gets the protobuf without them.
        chunks, proto, weights = bir.to_chunks(work, STRIP_BYTES)
        written = bir.save_bytes(chunks, path)
        # ONNX Runtime verifies the file in the pool thread (the reference run, queued before, is done when it
        # starts) while this thread runs the checker. From a path ORT parses with the GIL released; from bytes it
        # would hold it for the whole parse (0.15-0.4 s on 45 MB).
        if verifier is not None and not unchanged:
            checking = pool.submit(verifier.check, str(written))
        checker_error = check_written(proto, weights) if not invalid else None
    else:
        written = bir.save(work, path, force=force)
        checker_error = check_model(written) if not invalid else None
    verify_error = None
    if verifier is not None and unchanged:
        ctx.note("verify: no pass changed the model: the output is the input graph, not run again")
    elif verifier is not None:
        failure = checking.result() if checking is not None else verifier.check(str(written))
        verify_error = failure.reason if failure else None
    return written, checker_error, verify_error
