"""The ONNX backend node tests: every case of every op memserve implements passes or is explained."""
import pytest

from memserve.kernels import lookup

from .run import KNOWN_FAILURES, per_op_table, run_all, summary

# The ops this release promises (issue 3), by domain.
PROMISED = {
    "": """Conv ConvTranspose BatchNormalization MaxPool AveragePool GlobalAveragePool GlobalMaxPool Resize Pad Clip
        LeakyRelu HardSigmoid HardSwish Sigmoid Mul Concat Split Slice Upsample MatMul Gemm LayerNormalization
        Softmax LogSoftmax Erf Gelu Sqrt Pow Exp Log Neg Abs Reciprocal Min Max ReduceMean ReduceSum ReduceMax
        ReduceMin Transpose Gather Unsqueeze Squeeze Expand Where Equal Less Greater Not And Or Shape
        ConstantOfShape Range Cast ArgMax Trilu Einsum Dropout Tile Add Sub Div Relu Tanh Identity Reshape
        Flatten""".split(),
    "ai.onnx.ml": """Scaler Normalizer LinearClassifier LinearRegressor TreeEnsembleClassifier TreeEnsembleRegressor
        ArrayFeatureExtractor""".split(),
}


@pytest.fixture(scope="module")
def results():
    return run_all()


def test_every_promised_op_is_implemented():
    missing = [f"{d}.{op}" if d else op for d, ops in PROMISED.items() for op in ops if lookup(d, op) is None]
    assert missing == []


def test_no_case_of_an_implemented_op_fails(results):
    print(summary(results))
    failed = {r.name: r.reason for r in results if r.status == "failed" and r.name not in KNOWN_FAILURES}
    assert failed == {}


def test_promised_ops_pass_their_cases(results):
    table = {op: (p, f) for op, p, f, _ in per_op_table(results)}
    promised = {op for ops in PROMISED.values() for op in ops}
    without_a_pass = sorted(op for op in promised if op in table and table[op][0] == 0)
    assert without_a_pass == []
