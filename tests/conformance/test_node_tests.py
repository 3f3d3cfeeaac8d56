"""The ONNX backend node tests: every case of every op memserve implements passes or is explained."""
import pytest

from memserve.kernels import lookup

from .run import KNOWN_FAILURES, in_scope, per_op_table, run_all, summary

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


# What the modes passed when these floors were set (onnx 1.23.2): a drop is a regression.
FROZEN_FLOOR, PUBLIC_FLOOR, BARE_FLOOR = 1680, 1679, 1417


def test_the_frozen_mode_passes_at_least_its_floor(results):
    assert sum(r.status == "passed" for r in results) >= FROZEN_FLOOR


@pytest.mark.parametrize("plan_values,floor", [(True, PUBLIC_FLOOR), (False, BARE_FLOOR)])
def test_the_public_path_runs_the_cases_as_written(daemon, plan_values, floor):
    """Through the daemon's gRPC API with the client, no input frozen (parameter inputs planned with the
    case's values as input_values, or not): nothing an implemented op computes differs from the expected
    outputs, and every refusal is a clear UNSUPPORTED naming the node."""
    public = run_all(target=daemon.target, plan_values=plan_values)
    print(summary(public))
    failed = {r.name: r.reason for r in public if r.status == "failed" and r.name not in KNOWN_FAILURES}
    assert failed == {}
    assert sum(r.status == "passed" for r in public) >= floor
    refused = [r for r in public if r.status == "unsupported" and in_scope(r)]
    assert all(r.reason.startswith(("node ", "graph input", "graph output", "input ", "output ", "model ", "dtype "))
               or "not supported" in r.reason for r in refused), [r.reason for r in refused][:5]
