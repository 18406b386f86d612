"""The README's demo, quick mode, end to end as a user runs it."""

from __future__ import annotations

import json


def test_quick_demo_runs_every_step(tmp_path, cli):
    r = cli("demo", "--quick", "-o", tmp_path / "demo", "--json", timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    steps = {s["name"]: s for s in doc["steps"]}
    assert all(s["ok"] for s in steps.values()), steps
    assert {"inspect", "run", "compare engines", "export MiniLM"} <= set(steps)
    assert (tmp_path / "demo" / "minilm.onnx").stat().st_size > 10_000_000
    for s in steps.values():
        if s["artifact"]:
            json.loads(open(s["artifact"]).read())
