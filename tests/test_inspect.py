"""bushu.inspect: exact FLOPs on hand-written graphs, plausible totals on the real models checked against
independent estimates, unknown-cost listing, problems, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

import bushu
from bushu.cli.main import main as cli_main
from bushu.errors import BushuError
from bushu.inspect import node_costs

REC_SHAPE = {"x": (1, 3, 48, 320)}


def one_node(text: str):
    """The cost of the single non-Constant node of a model written in ONNX text."""
    model = ir.from_onnx_text(text)
    costs = [c for c in node_costs(model) if c.op_type != "Constant"]
    assert len(costs) == 1, costs
    return costs[0]


# ---------------------------------------------------------------- exact FLOPs on hand-written graphs


def test_conv_groups_strides_dilations_bias():
    c = one_node("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4,9,9] x, float[6,2,3,3] w, float[6] b) => (float[?,?,?,?] y) {
            y = Conv<group=2, strides=[2,2], dilations=[2,2], pads=[1,1,1,1]>(x, w, b)
        }""")
    # out = (9 + 2 - 2*(3-1) - 1) / 2 + 1 = 4; MACs per output = C/group * k*k = 2*9; + one bias add per output
    assert c.output_shapes == ((1, 6, 4, 4),)
    assert c.flops == 2 * (6 * 4 * 4) * (2 * 9) + 6 * 4 * 4
    assert c.bytes_read == 4 * (4 * 81 + 6 * 2 * 9 + 6) and c.bytes_written == 4 * 96


def test_conv_transpose():
    c = one_node("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4,5,5] x, float[4,3,3,3] w) => (float[?,?,?,?] y) {
            y = ConvTranspose<strides=[2,2]>(x, w)
        }""")
    # out = (5-1)*2 + 3 = 11; every input pixel scatters into Cout * k*k outputs
    assert c.output_shapes == ((1, 3, 11, 11),)
    assert c.flops == 2 * (4 * 5 * 5) * (3 * 3 * 3)


def test_gemm_trans_b_with_bias():
    c = one_node("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[3,5] a, float[4,5] b, float[4] c) => (float[?,?] y) { y = Gemm<transB=1>(a, b, c) }""")
    assert c.flops == 2 * 3 * 4 * 5 + 3 * 4


def test_matmul_broadcasting():
    c = one_node("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,1,3,5] a, float[4,5,6] b) => (float[?,?,?,?] y) { y = MatMul(a, b) }""")
    assert c.output_shapes == ((2, 4, 3, 6),)
    assert c.flops == 2 * (2 * 4 * 3 * 6) * 5


@pytest.mark.parametrize("equation,shapes,expected", [
    ("bij,bjk->bik", ([2, 3, 4], [2, 4, 5]), 2 * 2 * 3 * 4 * 5),  # a batched matmul: 2 x MACs
    ("...ij,...jk", ([2, 3, 4], [2, 4, 5]), 2 * 2 * 3 * 4 * 5),  # ellipsis and implicit output
    ("ii->", ([5, 5],), 5),  # a trace: one add per element summed
    ("ij->ji", ([3, 4],), 0),  # a transpose moves data, computes nothing
])
def test_einsum(equation, shapes, expected):
    args = ", ".join(f"float[{','.join(map(str, s))}] x{i}" for i, s in enumerate(shapes))
    names = ", ".join(f"x{i}" for i in range(len(shapes)))
    c = one_node(f"""<ir_version: 8, opset_import: ["" : 17]>
        g ({args}) => (float y) {{ y = Einsum<equation="{equation}">({names}) }}""")
    assert c.flops == expected


def test_elementwise_and_normalization_factors():
    model = ir.from_onnx_text("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,8] x, float[8] b) => (float[?,?] y) {
            s = Add(x, b)
            t = Sigmoid(s)
            y = Softmax<axis=-1>(t)
        }""")
    flops = {c.op_type: c.flops for c in node_costs(model)}
    assert flops == {"Add": 16, "Sigmoid": 4 * 16, "Softmax": 5 * 16}


def test_unknown_cost_is_listed_not_zero():
    model = ir.from_onnx_text("""<ir_version: 8, opset_import: ["" : 17, "custom.ops" : 1]>
        g (float[2,8] x) => (float[?,?] y) {
            t = custom.ops.Fancy(x)
            y = Relu(t)
        }""")
    r = bushu.inspect(model, engines=())
    fancy = next(c for c in r.unknown if c.op_type == "Fancy")
    assert fancy.flops is None and "no cost formula" in fancy.note
    relu = next(c for c in r.nodes if c.op_type == "Relu")  # its input shape is unknown: listed as well
    assert relu in r.unknown and relu.flops is None and "'t'" in relu.note
    assert r.total_flops == 0 and "unknown" in str(r)


# ---------------------------------------------------------------- the real models


def conv_and_matmul_flops_by_ort(path, feed_shape):
    """2 x MACs (+ bias) of every Conv and MatMul, from weight shapes in the file and the output/operand shapes
    ONNX Runtime produces when every Conv/MatMul tensor is exposed as an output: no shape inference involved."""
    proto = onnx.load(str(path))
    consts = {o: n.attribute[0].t for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    consts.update({t.name: t for t in proto.graph.initializer})
    heavy = [n for n in proto.graph.node if n.op_type in ("Conv", "MatMul")]
    wanted = sorted({n.output[0] for n in heavy} | {n.input[0] for n in heavy if n.op_type == "MatMul"})
    known = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in wanted if n not in known)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random(feed_shape, dtype=np.float32)
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))
    total = {"Conv": 0, "MatMul": 0}
    for n in heavy:
        y = outs[n.output[0]].shape
        if n.op_type == "Conv":
            w = list(consts[n.input[1]].dims)
            total["Conv"] += 2 * math.prod(y) * math.prod(w[1:]) + (math.prod(y) if len(n.input) > 2 else 0)
        else:
            total["MatMul"] += 2 * math.prod(y) * outs[n.input[0]].shape[-1]
    return total


@pytest.fixture(scope="module")
def rec(ppocr_rec):
    return bushu.inspect(ppocr_rec, REC_SHAPE)


def by_op(result, op):
    return sum(c.flops for c in result.nodes if c.op_type == op and not c.graph)


def test_ppocr_rec_totals_match_an_independent_count(rec, ppocr_rec):
    expected = conv_and_matmul_flops_by_ort(ppocr_rec, REC_SHAPE["x"])
    assert by_op(rec, "Conv") == expected["Conv"]
    assert by_op(rec, "MatMul") == expected["MatMul"]
    assert not rec.unknown, [c.note for c in rec.unknown[:3]]
    heavy = expected["Conv"] + expected["MatMul"]
    assert heavy <= rec.total_flops <= 1.1 * heavy  # the rest is element-wise work
    assert 0.5e9 <= rec.total_flops <= 1.5e9
    assert rec.total_bytes > 0 and all(c.bytes is not None for c in rec.nodes)


def test_ppocr_rec_summary(rec, ppocr_rec):
    proto = onnx.load(str(ppocr_rec))
    weights = [n.attribute[0].t for n in proto.graph.node if n.op_type == "Constant"]
    assert rec.parameter_count == sum(math.prod(t.dims) for t in weights)  # weights live in Constant nodes
    assert rec.parameter_bytes == sum(len(t.raw_data) or 4 * math.prod(t.dims) for t in weights)
    assert rec.node_count == len(proto.graph.node) and rec.subgraph_node_count == 0
    assert rec.op_types["Conv"] == sum(n.op_type == "Conv" for n in proto.graph.node)
    assert rec.opsets == {"": 12} and rec.ir_version == proto.ir_version
    assert rec.inputs[0].shape == ("p2o.DynamicDimension.0", 3, "?", "p2o.DynamicDimension.1")
    assert rec.outputs[0].shape[-1] == 6625
    names = {n.name for n in proto.graph.node}
    assert {c.name for c in rec.nodes} <= names  # the profiler joins on the model's own node names
    assert rec.problems == () and rec.engines["ort"] == "ok"
    text = rec.render()
    assert "p2o.Conv.28" in text and "problems    none" in text


def test_unbound_dims_list_costs_as_unknown(ppocr_rec):
    r = bushu.inspect(ppocr_rec, engines=())
    assert r.unbound and r.unbound[0].name == "x"
    convs = [c for c in r.nodes if c.op_type == "Conv"]
    assert convs and all(c in r.unknown for c in convs)
    assert "--shape x:" in r.render()


def test_inspect_leaves_the_model_alone(ppocr_cls):
    model = bushu.load(ppocr_cls)
    before = bushu.ir.to_proto(model).SerializeToString()
    r = bushu.inspect(model, {"x": (1, 3, 48, 192)}, engines=())
    assert bushu.ir.to_proto(model).SerializeToString() == before
    assert r.total_flops > 0 and not r.unknown
    assert r.outputs[0].shape == (None, 2)  # the file's -1 is shown as unknown


def test_ppocr_det(ppocr_det):
    r = bushu.inspect(ppocr_det, {"x": (1, 3, 320, 320)}, engines=())
    assert not r.unknown
    assert by_op(r, "ConvTranspose") > 0 and by_op(r, "Conv") > 0.9 * r.total_flops
    head = next(c for c in r.nodes if c.op_type == "Sigmoid")
    assert head.output_shapes == ((1, 1, 320, 320),)


def test_silero_vad_control_flow(silero_vad):
    r = bushu.inspect(silero_vad, {"input": (1, 576), "state": (2, 1, 128)})
    proto = onnx.load(str(silero_vad))
    in_bodies = 0
    stack = [a.g for n in proto.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    while stack:
        g = stack.pop()
        in_bodies += len(g.node)
        stack += [a.g for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    assert r.node_count == len(proto.graph.node) and r.subgraph_node_count == in_bodies
    assert r.op_types["LSTM"] == 4 and r.op_types["If"] >= 1  # bodies are counted in the histogram
    assert r.parameter_count > 300_000  # the weights are Constant nodes inside the branches
    top_if = next(c for c in r.nodes if c.op_type == "If" and not c.graph)
    body = [c for c in r.nodes if c.graph.startswith(f"{top_if.name}.")]
    assert body and {c.graph.split("/")[0] for c in body} == {f"{top_if.name}.then_branch", f"{top_if.name}.else_branch"}
    # ONNX shape inference does not propagate values into If bodies, so silero's branches lose their shapes
    # after a Pad with computed pads: the body nodes are listed with the reason, and so is the If
    assert top_if in r.unknown and "have unknown cost" in top_if.note
    body_conv = next(c for c in body if c.op_type == "Conv")
    assert body_conv in r.unknown and "shape" in body_conv.note
    assert all(c in r.unknown or c.known for c in r.nodes)
    assert any(p.engine == "openvino" for p in r.problems)  # OpenVINO can't convert it (Conv rank in an If)


def test_digits_cnn(digits_onnx):
    r = bushu.inspect(digits_onnx, {"input": (1, 1, 8, 8)}, engines=("ort",))
    convs = [c for c in r.nodes if c.op_type == "Conv"]
    # Conv(1→16), Conv(16→32) at 8x8, Conv(32→64) at 4x4 after the max-pool, 3x3 kernels with bias
    assert [c.flops for c in convs] == [2 * 16 * 64 * 9 + 16 * 64, 2 * 32 * 64 * 16 * 9 + 32 * 64,
                                        2 * 64 * 16 * 32 * 9 + 64 * 16]
    assert r.engines == {"ort": "ok"}


# ---------------------------------------------------------------- problems


def test_problems_unused_initializer_dead_node_unsupported_op(ppocr_cls):
    model = bushu.load(ppocr_cls)
    spare = ir.Value(name="spare_weights", const_value=ir.tensor(np.ones((3, 4), np.float32)))
    model.graph.register_initializer(spare)
    first = next(n for n in model.graph if n.op_type == "Conv")
    dead = ir.node("Relu", [first.outputs[0]], name="dead_relu")
    model.graph.insert_after(first, dead)
    weird = ir.node("Weird", [first.outputs[0]], domain="custom.ops", name="weird_op", version=1)
    model.opset_imports["custom.ops"] = 1
    model.graph.insert_after(first, weird)
    r = bushu.inspect(model, {"x": (1, 3, 48, 192)})
    kinds = {(p.kind, p.subject) for p in r.problems}
    assert ("unused-initializer", "spare_weights") in kinds
    assert ("dead-node", "dead_relu") in kinds and ("dead-node", "weird_op") in kinds
    # ORT refuses an unknown op even in a dead node; OpenVINO's frontend converts only what reaches an output
    assert {(p.kind, p.subject, p.engine) for p in r.problems if p.engine} == {("unsupported-op", "custom.ops.Weird", "ort")}
    assert sum(p.kind == "dead-node" for p in r.problems) == 2  # nothing else in PP-OCR cls is dead
    assert "custom.ops.Weird" in r.render()


def test_unused_input_and_ops_the_engines_cannot_run():
    model = ir.from_onnx_text("""<ir_version: 8, opset_import: ["" : 17, "custom.ops" : 1]>
        g (double[1,2,5,5] x, double[3,2,3,3] w, float[4] unused, float[2,3] a) => (double[?,?,?,?] y, float[?,?] z) {
            y = Conv(x, w)
            z = custom.ops.Fancy(a)
        }""")
    r = bushu.inspect(model)
    found = {(p.kind, p.subject, p.engine) for p in r.problems}
    assert ("unused-input", "unused", None) in found
    assert {("unsupported-op", "Conv", "ort"), ("unsupported-op", "custom.ops.Fancy", "ort"),
            ("unsupported-op", "custom.ops.Fancy", "openvino")} <= found
    assert "tensor(double)" in next(p.detail for p in r.problems if p.subject == "Conv" and p.engine == "ort")
    with pytest.raises(Exception, match="Conv"):  # the check agrees with ONNX Runtime itself
        one_conv = ir.from_onnx_text("""<ir_version: 8, opset_import: ["" : 17]>
            g (double[1,2,5,5] x, double[3,2,3,3] w) => (double[?,?,?,?] y) { y = Conv(x, w) }""")
        ort.InferenceSession(bushu.ir.to_bytes(one_conv), providers=["CPUExecutionProvider"])
    half = ir.from_onnx_text("""<ir_version: 8, opset_import: ["" : 17]>
        g (float16[1,2,5,5] x, float16[3,2,3,3] w) => (float16[?,?,?,?] y) { y = Conv(x, w) }""")
    assert bushu.inspect(half, engines=("ort",)).problems == ()  # ORT runs float16 Conv between Casts


# ---------------------------------------------------------------- bindings and CLI


def test_bad_bindings_are_refused(ppocr_rec):
    for shapes, words in [({"x": (1, 3)}, "rank"), ({"y": (1, 3, 48, 320)}, "no input 'y'"),
                          ({"x": (1, 4, 48, 320)}, "dim 1"), ({"nope": 3}, "no symbolic dim 'nope'")]:
        with pytest.raises(BushuError, match=words):
            bushu.inspect(ppocr_rec, shapes, engines=())


def test_symbolic_dim_binding(ppocr_rec, rec):
    r = bushu.inspect(ppocr_rec, {"p2o.DynamicDimension.0": 1, "?": 48, "p2o.DynamicDimension.1": 320}, engines=())
    assert r.total_flops == rec.total_flops and not r.unknown


def test_cli_json_and_bad_shape(ppocr_cls, capsys):
    assert cli_main(["inspect", str(ppocr_cls), "--shape", "x:1x3x48x192", "--json", "--engines", "ort"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "inspect" and data["total_flops"] > 0 and data["engines"] == {"ort": "ok"}
    conv = next(n for n in data["nodes"] if n["op_type"] == "Conv")
    assert conv["name"] and conv["flops"] > 0 and conv["bytes_read"] > 0 and data["unknown"] == []
    assert cli_main(["inspect", str(ppocr_cls), "--shape", "x:1x3", "--engines", "none"]) == 2
    assert "rank" in capsys.readouterr().err
    assert cli_main(["inspect", str(ppocr_cls), "--shape", "x=abc"]) == 2


def test_flops_are_written_with_a_space(ppocr_rec, digits_onnx):
    assert "1.46 GFLOPs, " in bushu.inspect(ppocr_rec, {"x": (1, 3, 48, 320)}, engines=()).render()
    assert "  0 FLOPs, " in bushu.inspect(digits_onnx, engines=()).render()  # open dims: nothing known, said plainly
