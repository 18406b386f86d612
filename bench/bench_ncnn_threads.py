"""ncnn's OpenMP wait policy, alone and under CPU contention (run it under ``flock -x /tmp/bushu-quiet.lock``).

ncnn's PyPI wheel runs its layers on GNU OpenMP (libgomp), whose idle threads spin before they sleep. Candidates,
each in its own worker process (libgomp reads its policy once, when it loads):

- ``libgomp default`` (bushu's): ncnn imported with no OpenMP variables set (spin 300,000 times, then sleep);
- ``openmp_blocktime=0``: the same, with ncnn's ``Option.openmp_blocktime = 0`` on the net;
- ``GOMP_SPINCOUNT=N``: idle threads spin N times, then sleep (``OMP_WAIT_POLICY=PASSIVE`` is N = 0);
- ``1 thread``: the default policy, ``threads=1`` (no thread to wait for).

The parent asks the workers in turn (round-robin, the order rotated every round) to run a model back to back for a
short budget (with a 0.1 s pause before each, so an idle worker's threads have stopped spinning), so that
background load hits every candidate alike; per round, each candidate's median latency is
divided by the default's. Phase ``quiet``: nothing else runs. Phase ``contended``: a separate process spins on one
core for the whole phase; its loop count per second while each candidate runs says how much CPU ncnn left it.

    flock -x /tmp/bushu-quiet.lock .venv/bin/python bench/bench_ncnn_threads.py --rounds 12 --out docs/dev/serve-bench.md

With ``--out``, the section (from the line ``MARKER`` on) replaces the one already in that file or is appended to it
(bench_serve.py keeps it when it rewrites the file).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

MODELS = ("ppocr-cls", "ppocr-rec", "silero-vad")
MARKER = "<!-- bench_ncnn_threads.py -->"
SETTLE_S = 0.1  # libgomp's default spin (GOMP_SPINCOUNT 300000) lasts ~20 ms here
CANDIDATES = ("libgomp default", "openmp_blocktime=0", "GOMP_SPINCOUNT=10000", "OMP_WAIT_POLICY=PASSIVE",
              "1 thread")


def _feed(name: str) -> dict:
    from bushu import zoo

    rng = np.random.default_rng(0)
    if name == "silero-vad":
        return {"input": (0.1 * rng.standard_normal((1, 576))).astype(np.float32),
                "state": np.zeros((2, 1, 128), np.float32), "sr": np.asarray(16000, np.int64)}
    return {"x": rng.random(zoo.MODELS[name].shapes["x"], dtype=np.float32)}


def _worker(candidate: str, conn) -> None:
    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS"):
        os.environ.pop(var, None)
    if candidate.startswith(("GOMP_", "OMP_")):
        var, value = candidate.split("=")
        os.environ[var] = value
    import ncnn  # noqa: F401  libgomp reads the variables set here as it loads
    from bushu import zoo
    from bushu.engines import open_session
    from bushu.engines.base import EngineOptions

    sessions, feeds = {}, {}
    for name in MODELS:
        m = zoo.MODELS[name]
        threads = 1 if candidate == "1 thread" else None
        sessions[name] = open_session(zoo.path(name), "ncnn", EngineOptions(shapes=m.shapes, values=m.values,
                                                                             threads=threads))
        if candidate == "openmp_blocktime=0":
            sessions[name]._net.opt.openmp_blocktime = 0
        feeds[name] = _feed(name)
        for _ in range(5):
            sessions[name].run(feeds[name])
    conn.send("ready")
    clock = time.perf_counter
    while True:
        msg = conn.recv()
        if msg is None:
            return
        name, budget = msg
        sess, feed, times = sessions[name], feeds[name], []
        t0 = clock()
        while clock() - t0 < budget or len(times) < 3:
            t = clock()
            sess.run(feed)
            times.append(clock() - t)
        conn.send(times)


def _spin(counter) -> None:
    n = 0
    while True:
        n += 1
        if n % 100_000 == 0:
            counter.value = n


def _quart(x) -> str:
    q1, q3 = np.quantile(x, [0.25, 0.75])
    return f"{q1:.2f}–{q3:.2f}"


def run(rounds: int, budget: float) -> str:
    ctx = mp.get_context("spawn")
    workers = {}
    for c in CANDIDATES:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(c, child), daemon=True)
        p.start()
        workers[c] = (p, parent)
    for c, (_, conn) in workers.items():
        assert conn.recv() == "ready", c
    out = []
    try:
        for phase in ("quiet", "contended"):
            counter, spinner = ctx.Value("q", 0, lock=False), None
            if phase == "contended":
                spinner = ctx.Process(target=_spin, args=(counter,), daemon=True)
                spinner.start()
                time.sleep(0.5)
            for name in MODELS:
                med = {c: [] for c in CANDIDATES}
                runs = {c: [] for c in CANDIDATES}
                spin = {c: [] for c in CANDIDATES}
                for r in range(rounds):
                    k = r % len(CANDIDATES)
                    order = CANDIDATES[k:] + CANDIDATES[:k]
                    for c in order:
                        time.sleep(SETTLE_S)  # the last candidate's idle threads stop spinning first
                        n0, t0 = counter.value, time.perf_counter()
                        workers[c][1].send((name, budget))
                        times = workers[c][1].recv()
                        spin[c].append((counter.value - n0) / (time.perf_counter() - t0))
                        med[c].append(float(np.median(times)))
                        runs[c] += times
                base = np.array(med[CANDIDATES[0]])
                for c in CANDIDATES:
                    ratio = np.array(med[c]) / base
                    row = [phase, name, c, f"{1e3 * np.median(med[c]):.3f}",
                           f"{np.median(ratio):.2f} ({_quart(ratio)})", f"{1e3 * np.mean(runs[c]):.3f}",
                           f"{1e3 * np.quantile(runs[c], 0.99):.2f}", f"{1e3 * max(runs[c]):.1f}"]
                    if phase == "contended":
                        row.append(f"{np.median(np.array(spin[c]) / np.array(spin[CANDIDATES[0]])):.2f}")
                    else:
                        row.append("")
                    out.append(row)
                    print(" | ".join(row), flush=True)
            if spinner is not None:
                spinner.kill()
                spinner.join()
    finally:
        for p, conn in workers.values():
            conn.send(None)
            p.join(5)
    return "\n".join(["| phase | model | candidate | median ms | ÷ default (IQR) | mean ms | p99 ms | max ms | "
                      "competing process's loops ÷ default |", "|---|---|---|---|---|---|---|---|---|"]
                     + ["| " + " | ".join(r) + " |" for r in out])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--budget", type=float, default=0.3, help="seconds each candidate runs per round")
    ap.add_argument("--out", help="markdown file whose ncnn section to replace (or append)")
    ap.add_argument("--notes", help="a markdown file with the reading of the figures, put under the table")
    args = ap.parse_args()
    from bushu.timing import machine

    t0 = time.time()
    table = run(args.rounds, args.budget)
    cmd = (f"flock -x /tmp/bushu-quiet.lock .venv/bin/python bench/bench_ncnn_threads.py --rounds {args.rounds} "
           f"--budget {args.budget:g}")
    section = [MARKER, "", "## ncnn's OpenMP threads under CPU contention", "",
               f"Command: `{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t0))}, "
               f"{time.time() - t0:.0f} s). Machine: {machine()}.", "",
               "Each candidate is its own worker process with PP-OCR cls (3×48×192), PP-OCRv4 rec (3×48×320) and "
               "silero VAD (one 576-sample window) on ncnn (2 threads); the workers take turns (round-robin, order "
               f"rotated each round, a 0.1 s pause before each turn), {args.rounds} rounds of {args.budget:g} s per "
               "candidate and model. Ratios: median over rounds of the candidate's median latency ÷ the libgomp "
               "default's in the same round (IQR). *contended*: another process spins on one core throughout; its "
               "last column is how many loops that process made while the candidate ran, ÷ the default's.", "",
               table, ""]
    if args.notes:
        section += [Path(args.notes).read_text().strip(), ""]
    text = "\n".join(section)
    print(text)
    if args.out:
        old = Path(args.out).read_text() if Path(args.out).exists() else ""
        head = old.split(MARKER)[0].rstrip("\n")
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text((head + "\n\n" if head else "") + text)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
