"""``bushu.optimize``: graph passes and fusions to standard ONNX, each verified on ONNX Runtime.

The pipeline (:mod:`.pipeline`) is a list of pass names (:mod:`.registry`). With ``verify="each"`` every pass runs
on a structural copy of the model that shares its weights (``ir.Model.clone``: nodes and values are new, tensors
are not copied); the copy replaces the model only when its outputs match the original's (:mod:`.verify`), else the
pass is rolled back, named with the first divergent node, and the pipeline goes on.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import onnx
import onnx_ir as ir

from .. import engines
from .. import ir as bir
from ..compare.metrics import Tolerance
from ..engines.base import EngineOptions
from ..errors import BushuError
from ..inputs import check_feed
from ..progress import progress
from ..timing import Latency, measure_interleaved
from . import ort_target, pipeline, registry
from .registry import FOLD_SIZE_LIMIT, PassContext, PassOptions
from .result import OptimizeResult, Step, initializer_bytes, op_counts
from .tidy import tidy
from .verify import DEFAULT_TOL, Verifier, first_divergent_node, make_feeds

__all__ = ["OptimizeResult", "check_model", "optimize"]

MAX_ROUNDS = 6  # silero VAD with sr bound: nested Ifs inline one level per round (fold, then inline)
VERIFY_EACH_LIMIT = 1 << 30  # bytes of weights; above it each pass would cost a full ORT load, so verify at the end


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def check_model(model: ir.Model | str | os.PathLike) -> str | None:
    """``onnx.checker`` full check (types and shapes too) of a model or of a file (read by the checker itself);
    the first line of its complaint, or None. A model in memory that fits one protobuf is checked without its large
    weights' data (:func:`_check_written`), whose sizes :func:`bushu.ir.to_chunks` checks against their types and
    shapes instead: the checker would parse a copy of them (0.05-0.1 s for 45 MB, holding the GIL)."""
    if not isinstance(model, (str, os.PathLike)) and bir.fits_one_proto(model):
        try:
            _, proto, weights = bir.to_chunks(model, STRIP_BYTES)
        except BushuError as e:
            return _first_line(e)
        except Exception:  # noqa: BLE001 -- a graph onnx-ir can't serialize: the checker's own words, below
            pass
        else:
            return _check_written(proto, weights)
    try:
        if isinstance(model, (str, os.PathLike)):
            onnx.checker.check_model(os.fspath(model), full_check=True)
        elif bir.fits_one_proto(model):
            onnx.checker.check_model(bir.to_proto(model), full_check=True)
        else:  # the checker reads a model over 2 GB only from a path
            with tempfile.TemporaryDirectory(prefix="bushu-check-") as d:
                path = bir.save(model, os.path.join(d, "model.onnx"), external_data=True, force=True)
                onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # the checker raises ValidationError, InferenceError or others by version
        return _first_line(e)
    return None


STRIP_BYTES = 1024  # initializers above this size are checked by type and shape, not re-read (_check_written)


def _check_written(proto: onnx.ModelProto, weights: Mapping[str, tuple[int, Sequence[int]]]) -> str | None:
    """:func:`check_model` of a model written from ``proto`` by :func:`bushu.ir.to_chunks`: the main graph's
    initializers over ``STRIP_BYTES`` are not in ``proto`` (they went to the file from their arrays' memory);
    ``weights`` gives each one's ONNX type and dims. They are declared as graph inputs of that type and shape
    (``proto`` is consumed), so the full check (graph, types, shapes, opsets) runs without the checker parsing the
    weights (0.1 s for 45 MB). What that leaves unchecked, that a tensor's bytes fit its shape, holds by
    construction: onnx-ir writes a tensor from an array of that shape, or copies the input's tensor, which the
    input's check read."""
    declared = {i.name for i in proto.graph.input}
    proto.graph.input.extend(onnx.helper.make_tensor_value_info(name, dtype, dims)
                             for name, (dtype, dims) in weights.items() if name not in declared)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # noqa: BLE001 -- as in check_model
        return _first_line(e)
    return None


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
        raise BushuError(f"{name} is invalid in a way bushu can't copy: {_first_line(e)}") from e


def _run_step(name: str, work: ir.Model, ctx: PassContext, verifier: Verifier | None, feeds) -> tuple[ir.Model, Step]:
    info = registry.get(name)
    t0 = time.perf_counter()
    if verifier is None:
        count = info.run(work, ctx)
        return work, Step(name, count, time.perf_counter() - t0, "kept" if count else "unchanged")
    candidate = work.clone()
    try:
        count = info.run(candidate, ctx)
    except Exception as e:  # a pass bug must not lose the user's model: roll it back and say so
        return work, Step(name, 0, time.perf_counter() - t0, "crashed", f"{type(e).__name__}: {e}")
    if not count:
        return work, Step(name, 0, time.perf_counter() - t0, "unchanged")
    failure = verifier.check(candidate)
    if failure is None:
        return candidate, Step(name, count, time.perf_counter() - t0, "kept")
    where = first_divergent_node(work, candidate, feeds[0], verifier.tol) if failure.output else None
    return work, Step(name, count, time.perf_counter() - t0, "rolled back", failure.reason, where)


def _sweep(names: list[str], work: ir.Model, ctx: PassContext, verifier: Verifier | None, feeds,
           show_progress: bool, on_change=None) -> tuple[ir.Model, list[Step]]:
    """Run the pipeline to a fixed point: rounds over ``names`` until one keeps nothing (so optimizing the output
    again is a no-op), at most ``MAX_ROUNDS``. A pass is skipped when it changed nothing at its last run and no
    pass has changed the model since: it would change nothing again (passes are functions of the model). A pass
    rolled back once is not retried: it is named once in the report. ``on_change()`` is called at the first kept
    step."""
    steps: list[Step] = []
    generation = 0  # how many kept steps so far
    clean: dict[str, int] = {}  # pass name -> the generation at which it last ran and changed nothing
    for round_ in range(MAX_ROUNDS):
        failed = {s.name for s in steps if s.status in ("rolled back", "crashed")}
        todo = [n for n in names if n not in failed]
        kept = 0
        for pass_name in progress(todo, total=len(todo), desc=f"optimize round {round_ + 1}", enabled=show_progress):
            if clean.get(pass_name) == generation:
                continue
            work, step = _run_step(pass_name, work, ctx, verifier, feeds)
            steps.append(step)
            if step.status == "kept":
                if not generation and on_change is not None:
                    on_change()
                generation += 1
                kept += 1
            elif step.status == "unchanged":
                clean[pass_name] = generation
        if not kept:
            break
    return work, steps


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
    name = str(src.meta.get("bushu.path") or src.graph.name or "model")
    names = pipeline.select(level, passes, skip)
    ort_target.check_target(target)
    source = bir.source_path(src)
    if output is not None and source is not None and os.path.realpath(output) == str(source) and not force:
        raise BushuError(f"refusing to overwrite the input {output}: choose another output path or pass --force")
    # The original as a file when we read it from one: the checker and ONNX Runtime read it themselves, without
    # serializing the weights again (a model passed in memory may differ from the file it came from).
    original: ir.Model | str = str(source) if given is not None and source else src
    verify = verify or ("each" if bir.weight_bytes(src) < VERIFY_EACH_LIMIT else "end")
    if verify not in ("each", "end", "off"):
        raise BushuError(f"unknown --verify '{verify}': choose each, end or off")
    # The loaded model rather than its file: the same content, checked without parsing the weights again.
    invalid = check_model(src if bir.fits_one_proto(src) else original)
    if invalid and not allow_invalid:
        raise BushuError(f"{name} fails onnx.checker ({invalid}): fix the model, or pass --allow-invalid to "
                         "optimize it anyway")
    work = _clone(src, name) if invalid else src.clone()
    work.meta.update({k: v for k, v in src.meta.items() if k != "bushu.path"})
    edits = []  # what changed the model before the passes: fixed dims, opset conversion
    if static_shapes:
        from ..edit import set_dims  # bushu.edit imports this package

        edits = [f"--shape: {e}" for e in set_dims(work, static_shapes)]
        synth = {**synth, "shapes": {**dict(static_shapes), **(synth.get("shapes") or {})}}
    samples = default_samples(src, verify) if samples is None else samples
    feeds = make_feeds(src, inputs, samples, **synth) if (verify != "off" or latency or target != "generic") else []
    if edits and inputs is not None:
        specs, _ = engines.model_specs(work)
        for f in feeds:
            check_feed(f, specs, source="inputs (against the shapes --shape fixed)")
    verifier = Verifier(original, feeds, tol) if verify != "off" else None  # runs the original on first use
    opset_before = src.opset_imports.get("", 1)
    if opset is not None and opset != opset_before:
        work = bir.convert_opset(work, opset)
        edits.append(f"--opset: {opset_before} -> {opset}")
        failure = verifier.check(work) if verifier else None
        if failure:
            raise BushuError(f"converting to opset {opset} changed the outputs ({failure.reason}): keep the "
                             "model's opset")
    ctx = PassContext(PassOptions(fold_size_limit=fold_size_limit))
    # NOTE: the reference run starts at the first kept step, not before: a run that changes nothing needs none.
    on_change = (lambda: verifier.prefetch(pool)) if verifier is not None else None
    work, steps = _sweep(names, work, ctx, verifier if verify == "each" else None, feeds, show_progress, on_change)
    if target != "generic":  # engine-specific fusions, each verified and timed (after the generic passes)
        work, target_steps = ort_target.apply(work, target, ctx, verifier, feeds, skip=pipeline.split_names(skip))
        steps = [*steps, *target_steps]
    tidy(work)
    unchanged = not edits and not any(s.status == "kept" for s in steps)
    with tempfile.TemporaryDirectory(prefix="bushu-opt-") as tmp:
        target_path = output if output is not None else os.path.join(tmp, "model.onnx")
        verify_error = None
        if unchanged and isinstance(original, str) and bir.fits_one_proto(src):
            # Nothing to write but the input: its bytes (checked above), not a re-serialization of the same graph.
            written = bir.save_bytes(Path(original).read_bytes(), target_path) if output is not None else original
            checker_error = None  # the input's check above: it passed (or --allow-invalid skips the output's)
            ctx.note("no pass changed the model: the output is the input file, not serialized, checked or run again")
        else:
            # Serialized once: the final check and the latency read the file; the checker, that protobuf without
            # its weights.
            checking = None
            if bir.fits_one_proto(work):
                chunks, proto, weights = bir.to_chunks(work, STRIP_BYTES)
                written = bir.save_bytes(chunks, target_path)
                # ONNX Runtime verifies the written file in the pool thread (the reference run, queued before, is
                # done when it starts) while this thread checks the proto. From a path, ORT reads and parses the
                # file with the GIL released; from bytes it holds the GIL for the whole parse (0.15-0.4 s on 45 MB),
                # which would stall this thread.
                if verifier is not None and not unchanged:
                    checking = pool.submit(verifier.check, str(written))
                checker_error = _check_written(proto, weights) if not invalid else None
            else:
                written = bir.save(work, target_path, force=force)
                checker_error = check_model(written) if not invalid else None
            if verifier is not None:
                if not unchanged:
                    failure = checking.result() if checking is not None else verifier.check(str(written))
                    verify_error = failure.reason if failure else None
                else:
                    ctx.note("verify: no pass changed the model: the output is the input graph, not run again")
        lat_before, lat_after = _latencies(original, str(written), feeds[0]) if latency else (None, None)
    result = OptimizeResult(
        model=name, output=str(output) if output is not None else None, level=level if not passes else "custom",
        verify=verify, opset_before=opset_before, opset_after=work.opset_imports.get("", 1),
        nodes_before=op_counts(src), nodes_after=op_counts(work), initializer_bytes_before=initializer_bytes(src),
        initializer_bytes_after=initializer_bytes(work), steps=tuple(steps),
        notes=(*(e for e in edits if e.startswith("--shape")),
               *(f"{t} (x{n})" if n > 1 else t for t, n in sorted(ctx.notes.items()))),
        checker_error=checker_error, verify_error=verify_error, latency_before=lat_before, latency_after=lat_after,
        seconds=time.perf_counter() - t_start,
    )
    return work, result
