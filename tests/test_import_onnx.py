"""ONNX importer: graphs of MatMul/Gemm, Add, Relu and Clip give the network onnx's
reference evaluator computes; anything else is refused naming the node and its op type.
Needs onnx (in the ``dev`` extra; ``pip install 'spdnn[onnx]'``)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

onnx = pytest.importorskip("onnx", reason="the ONNX importer needs onnx (pip install 'spdnn[onnx]')")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from spdnn.engines.reference import ReferenceEngine  # noqa: E402
from spdnn.errors import FormatError, OptionError  # noqa: E402
from spdnn.models import from_onnx, read_model  # noqa: E402


def make_model(nodes, inits, n_in=6, out="y", opset=13, sparse_inits=()):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, n_in])],
                              [helper.make_tensor_value_info(out, TensorProto.DOUBLE, [None, None])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
                              sparse_initializer=list(sparse_inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def weights(rng, n_in, n_out, density=1.0):
    w = rng.standard_normal((n_in, n_out))
    return w * (rng.random((n_in, n_out)) < density)


def check_same(model, net, rng, n_in=6):
    x = rng.random((30, n_in)) * (rng.random((30, n_in)) < 0.7)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = ReferenceEngine(precision="fp64").run(net, sp.csr_matrix(x), outputs="activations").outputs
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.array_equal(got.argmax(1), want.argmax(1))


def test_matmul_add_relu_clip_gemm(rng, tmp_path):
    w1, b1, w2, b2, w3 = weights(rng, 6, 5), rng.standard_normal(5), weights(rng, 5, 5, 0.2), rng.standard_normal(5), \
        weights(rng, 4, 5)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat", axis=1),
             helper.make_node("MatMul", ["f", "w1"], ["h1"], name="mm1"),
             helper.make_node("Add", ["b1", "h1"], ["h2"], name="add1"),
             helper.make_node("Relu", ["h2"], ["h3"], name="relu1"),
             helper.make_node("MatMul", ["h3", "w2"], ["h4"], name="mm2"),
             helper.make_node("Add", ["h4", "b2"], ["h5"], name="add2"),
             helper.make_node("Clip", ["h5", "lo", "hi"], ["h6"], name="clip"),
             helper.make_node("Gemm", ["h6", "w3", "b3"], ["y"], name="gemm", transB=1)]
    model = make_model(nodes, {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": rng.standard_normal((1, 4)),
                               "lo": np.array(0.0), "hi": np.array(1.5)})
    onnx.checker.check_model(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    net = read_model(path)
    assert net.widths == (6, 5, 5, 4)
    assert net.activations == ("relu", "relu", "identity")
    assert [float(c) for c in net.caps] == [math.inf, 1.5, math.inf]
    assert net.bias_rules == ("dense",) * 3
    assert [net.is_dense(k) for k in range(3)] == [True, not (np.count_nonzero(w2) <= 0.25 * 25), True]
    check_same(model, net, rng)


def test_identity_aliases_of_initializers(rng):
    """Exporters share equal initializers through Identity nodes (torch.onnx gave one when two
    layers' weights were equal): the alias is the same constant, not a step of the chain."""
    w = weights(rng, 4, 4)
    nodes = [helper.make_node("Identity", ["w"], ["w_again"], name="alias"),
             helper.make_node("MatMul", ["x", "w"], ["h1"], name="mm1"),
             helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
             helper.make_node("Identity", ["h2"], ["h3"], name="noop"),
             helper.make_node("MatMul", ["h3", "w_again"], ["y"], name="mm2")]
    model = make_model(nodes, {"w": w}, n_in=4)
    onnx.checker.check_model(model)
    net = from_onnx(model)
    assert net.widths == (4, 4, 4) and net.activations == ("relu", "identity")
    check_same(model, net, rng, n_in=4)


def test_clip_attributes_of_old_opsets_and_constants(rng):
    w = weights(rng, 6, 3)
    nodes = [helper.make_node("Constant", [], ["w"], name="const", value=numpy_helper.from_array(w)),
             helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Clip", ["h"], ["y"], name="clip", min=0.0, max=2.0)]
    model = make_model(nodes, {}, opset=6)
    net = from_onnx(model)
    assert net.activations == ("relu",) and float(net.caps[0]) == 2.0
    assert not np.any(net.bias[0])                                   # no Add: zero bias
    check_same(model, net, rng)


def test_sparse_initializer(rng):
    w = weights(rng, 6, 4, 0.2)
    rows, cols = np.nonzero(w)
    values = numpy_helper.from_array(w[rows, cols], "w")
    indices = numpy_helper.from_array(np.ravel_multi_index((rows, cols), w.shape).astype(np.int64), "w_idx")
    sparse = helper.make_sparse_tensor(values, indices, w.shape)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    model = make_model(nodes, {}, sparse_inits=[sparse])
    net = from_onnx(model, storage="sparse")
    assert not net.is_dense(0) and net.layers[0].nnz == np.count_nonzero(w)
    assert np.array_equal(net.layers[0].toarray(), w)


REFUSED = {
    "sigmoid": ([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                 helper.make_node("Sigmoid", ["h"], ["y"], name="squash")], r"node 'squash' \(Sigmoid\) is not supported"),
    "clip -1": ([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                 helper.make_node("Clip", ["h", "neg"], ["y"], name="clip")], r"node 'clip' \(Clip\): a lower bound of -1"),
    "weight input": ([helper.make_node("MatMul", ["x", "x"], ["y"], name="square")], r"node 'square' \(MatMul\)"),
    "two adds": ([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                  helper.make_node("Add", ["h", "b"], ["h2"], name="add1"),
                  helper.make_node("Add", ["h2", "b"], ["y"], name="add2")], r"node 'add2' \(Add\): a bias must follow"),
    "gemm alpha": ([helper.make_node("Gemm", ["x", "w"], ["y"], name="g", alpha=2.0)], r"node .g. \(Gemm\): .*alpha=2.0"),
    "relu first": ([helper.make_node("Relu", ["x"], ["y"], name="r")], r"node .r. \(Relu\) comes before any MatMul"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_nodes_are_refused_naming_node_and_op(name, rng, tmp_path):
    nodes, message = REFUSED[name]
    model = make_model(nodes, {"w": weights(rng, 6, 6), "b": np.zeros(6), "neg": np.array(-1.0)})
    with pytest.raises(OptionError, match=message):
        from_onnx(model)
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    with pytest.raises(FormatError, match="bad.onnx: " + message):
        read_model(path)


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\xff\x00 not protobuf")
    with pytest.raises(FormatError, match="junk.onnx: not an ONNX model"):
        read_model(path)
