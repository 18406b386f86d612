"""Deployment files, checked statically (no Docker engine or cluster here): Kubernetes manifests against the
Kubernetes schemas, probes against routes the server really answers, the Dockerfile's commands against the docs and
against bushu's own argument parser, and the Grafana dashboard against the metric names the server exports."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from bushu.cli.main import build_parser
from bushu.serve.app import HttpApp
from bushu.serve.manager import ModelManager
from bushu.serve.metrics import COUNTERS

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def _docs(*kinds):
    docs = [d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    return [d for d in docs if d["kind"] in kinds]


def test_core_manifests_validate_against_kubernetes_schemas():
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate for offline schemas")
    docs = _docs("Deployment", "Service")
    assert {d["kind"] for d in docs} == {"Deployment", "Service"}
    for d in docs:
        kv.validate(d, "1.30", strict=True)  # raises on any schema violation or unknown field


def _probe_paths():
    paths = []
    for d in _docs("Deployment", "ServingRuntime"):
        spec = d["spec"]["template"]["spec"] if d["kind"] == "Deployment" else d["spec"]
        for c in spec["containers"]:
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe in c:
                    paths.append(c[probe]["httpGet"]["path"])
    return paths


def _get(app, path):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "server": ("127.0.0.1", 8000)}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"]


def test_probes_hit_routes_the_server_answers(tmp_path, ppocr_cls):
    paths = _probe_paths()
    assert set(paths) == {"/v2/health/ready", "/v2/health/live"}
    from bushu.serve.repository import Repository

    app = HttpApp(ModelManager(Repository(ppocr_cls)))
    # no model loaded yet: live, but not ready -- what a readiness probe must see during start-up
    assert _get(app, "/v2/health/live") == 200
    assert _get(app, "/v2/health/ready") == 503


def test_kserve_manifests_are_consistent():
    runtime, = _docs("ServingRuntime")
    isvc, = _docs("InferenceService")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1" and isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    assert isvc["spec"]["predictor"]["model"]["protocolVersion"] in runtime["spec"]["protocolVersions"]
    fmt = isvc["spec"]["predictor"]["model"]["modelFormat"]["name"]
    assert fmt in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    args = runtime["spec"]["containers"][0]["args"]
    build_parser().parse_args(["serve", *args])  # exits on an option bushu doesn't have
    port = int(args[args.index("--http-port") + 1])
    assert runtime["spec"]["containers"][0]["ports"][0]["containerPort"] == port


def _dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    return text, entry, cmd


def test_dockerfile_runs_a_valid_bushu_serve_and_matches_the_docs():
    text, entry, cmd = _dockerfile()
    assert entry == ["bushu", "serve"]
    args = build_parser().parse_args([*entry[1:], *cmd])
    assert args.host == "0.0.0.0" and (args.http_port, args.grpc_port, args.metrics_port) == (8000, 8001, 8002)
    exposed = {int(p) for p in re.search(r"^EXPOSE (.*)$", text, re.M).group(1).split()}
    assert exposed == {8000, 8001, 8002}
    assert "/v2/health/ready" in re.search(r"HEALTHCHECK[\s\S]*?CMD (.*)", text).group(1)
    assert 'pip install -c constraints.txt ".[serve]"' in text
    for doc in [ROOT / "docs" / "serving.md", ROOT / "README.md"]:
        if not doc.exists() or "deploy/Dockerfile" not in doc.read_text():
            continue
        docker_lines = [ln.strip() for ln in doc.read_text().splitlines() if ln.strip().startswith("docker ")]
        assert docker_lines, doc
        for line in docker_lines:  # the documented commands are the ones in the Dockerfile's header
            assert f"#   {line}" in text, (doc.name, line)
        for line in docker_lines:
            if line.startswith("docker run"):
                ports = set(re.findall(r"-p (\d+):\d+", line))
                assert {int(p) for p in ports} == exposed
                assert shlex.split(line)[-1] == "bushu-serve"


def test_grafana_dashboard_queries_exported_metrics():
    dash = json.loads((DEPLOY / "grafana" / "bushu.json").read_text())
    exported = set(COUNTERS) | {"nv_inference_pending_request_count", "bushu_batch_size_bucket"}
    used = set()
    for p in dash["panels"]:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            used |= set(re.findall(r"\b(nv_\w+|bushu_\w+)\b", t["expr"]))
    assert used and used <= exported, used - exported
    assert {"nv_inference_request_success", "nv_inference_queue_duration_us", "bushu_batch_size_bucket",
            "nv_inference_pending_request_count"} <= used
