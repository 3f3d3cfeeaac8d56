"""Hypothesis strategies for hostile input: ONNX models, load options, Execute / ModelInfer requests.

Every model strategy yields `Hostile(kind, data, note)`: the bytes to upload and a short
description for the failure report. Models are structurally valid protobufs built with
onnx.helper (except the `garbage` strategy, which cuts and flips valid ones); whether they
pass the ONNX checker is up to chance, and both sides of that line are wanted.
"""
from __future__ import annotations

import os
import string
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from memserve.kernels import REGISTRY
from tritonclient.grpc import service_pb2 as kpb  # Triton's own v2 stubs: memserve's share their proto package
from memserve_api.pb.memserve.v1 import memserve_pb2 as pb

ML = "ai.onnx.ml"
OPS = sorted(REGISTRY)  # (domain, op_type)
OPSETS = (11, 13, 17, 18, 21)

# ONNX element types memserve computes with, and a few it refuses.
GOOD_TYPES = [TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT8, TensorProto.INT16,
              TensorProto.INT32, TensorProto.INT64, TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32,
              TensorProto.UINT64, TensorProto.BOOL]
BAD_TYPES = [TensorProto.STRING, TensorProto.BFLOAT16, TensorProto.COMPLEX64, TensorProto.FLOAT8E4M3FN,
             TensorProto.INT4, 0, 999]
ELEM_TYPES = st.one_of(st.sampled_from(GOOD_TYPES), st.sampled_from(BAD_TYPES))

HUGE = [2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1]
NEG = [-1, -2, -(2**31), -(2**63)]
DIMS = st.one_of(st.integers(0, 4), st.integers(0, 4), st.integers(1, 4), st.sampled_from(HUGE), st.sampled_from(NEG))
INT_ATTRS = st.one_of(st.integers(-3, 8), st.sampled_from(HUGE + NEG))
FLOAT_ATTRS = st.one_of(st.floats(-10, 10), st.sampled_from([float("nan"), float("inf"), float("-inf"), 0.0,
                                                             1e-45, 1e38, -1e38]))
STRING_VALUES = ["", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID", "constant", "reflect", "edge", "wrap",
                 "nearest", "linear", "cubic", "half_pixel", "align_corners", "asymmetric", "tf_crop_and_resize",
                 "pytorch_half_pixel", "floor", "ceil", "round_prefer_ceil", "stretch", "not_larger", "not_smaller",
                 "tanh", "none", "SOFTMAX", "LOGISTIC", "PROBIT", "SOFTMAX_ZERO", "BRANCH_LEQ", "LEAF", "SUM",
                 "AVERAGE", "MAX", "L1", "L2", "ij,jk->ik", "...ii->...i", "i,i", "ab,bc", "->", "i->ii", "\x00",
                 "é" * 3]
STRINGS = st.one_of(st.sampled_from(STRING_VALUES), st.text(max_size=12))

# Where external data may point: files the daemon can read, devices, its own state, nothing.
STATE_FILE = "@STATE@"  # a file inside the daemon's --state-dir (absolute, and relative to its cwd)
STATE_DIR = "/nonexistent"  # set by the harness before anything is drawn
LOCATIONS = ["/etc/passwd", "../../../../../../../../etc/passwd", "README.md", "pyproject.toml", "/dev/zero",
             "/dev/urandom", "/proc/self/environ", "weights.bin", "", STATE_FILE, STATE_FILE + "rel"]


@dataclass
class Hostile:
    kind: str
    data: bytes
    note: str = ""
    extra: dict = field(default_factory=dict)

    def __repr__(self) -> str:  # what a failing example prints: enough to rebuild it
        return f"Hostile({self.kind!r}, <{len(self.data)} bytes>, {self.note!r})"


def model_bytes(nodes, inputs, outputs, inits=(), opset: int = 17, ml: bool = False, ir: int = 8,
                sparse=()) -> bytes:
    g = helper.make_graph(nodes, "fuzz", list(inputs), list(outputs), list(inits), sparse_initializer=list(sparse))
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(ML, 3)] if ml else [])
    m = helper.make_model(g, opset_imports=imports, producer_name="fuzz")
    m.ir_version = ir
    return m.SerializeToString()


def vi(name: str, elem: int, shape) -> onnx.ValueInfoProto:
    """shape None: a rank-1 tensor of unknown length (the checker wants a shape on graph outputs)."""
    return helper.make_tensor_value_info(name, elem, [None] if shape is None else shape)


def np_type(elem: int):
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem))
    except Exception:  # noqa: BLE001
        return None


# -- tensors with small concrete data -----------------------------------------------------

SPECIAL_INTS = [0, 1, -1, 2, 3, 7, 2**31 - 1, -(2**31), 2**40, 2**62, 2**63 - 1, -(2**63)]


@st.composite
def small_array(draw, dtype=None, max_rank: int = 3):
    dtype = dtype or np_type(draw(st.sampled_from(GOOD_TYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=max_rank)))
    n = int(np.prod(shape, dtype=np.int64))
    if dtype.kind == "b":
        vals = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        pool = [v for v in SPECIAL_INTS if info.min <= v <= info.max]
        vals = draw(st.lists(st.one_of(st.integers(max(info.min, -5), min(info.max, 9)), st.sampled_from(pool)),
                             min_size=n, max_size=n))
    else:
        vals = draw(st.lists(FLOAT_ATTRS, min_size=n, max_size=n))
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(vals, dtype=np.float64 if dtype.kind == "f" else None).astype(dtype).reshape(shape)


@st.composite
def tensor_proto(draw, name: str = "t"):
    return numpy_helper.from_array(draw(small_array()), name)


# -- random attributes, from the op's schema or not ------------------------------------------

def _schema(domain: str, op: str, opset: int):
    try:
        return onnx.defs.get_schema(op, opset if domain == "" else 3, domain)
    except Exception:  # noqa: BLE001 - ops newer than the opset
        try:
            return onnx.defs.get_schema(op, domain)
        except Exception:  # noqa: BLE001
            return None


A = AttributeProto


@st.composite
def attr_value(draw, attr_type):
    if attr_type == A.INT:
        return draw(INT_ATTRS)
    if attr_type == A.FLOAT:
        return draw(FLOAT_ATTRS)
    if attr_type == A.STRING:
        return draw(STRINGS)
    if attr_type == A.INTS:
        return draw(st.lists(INT_ATTRS, max_size=8))
    if attr_type == A.FLOATS:
        return draw(st.lists(FLOAT_ATTRS, max_size=8))
    if attr_type == A.STRINGS:
        return draw(st.lists(STRINGS, max_size=6))
    if attr_type == A.TENSOR:
        return draw(tensor_proto())
    return draw(st.one_of(INT_ATTRS, FLOAT_ATTRS, STRINGS, st.lists(INT_ATTRS, min_size=1, max_size=4)))


def make_attr(name, value):
    if isinstance(value, list) and not value:
        return helper.make_attribute(name, [], attr_type=A.INTS)
    return helper.make_attribute(name, value)


@st.composite
def attributes(draw, schema):
    attrs = {}
    known = dict(schema.attributes) if schema is not None else {}
    for name, a in known.items():
        if a.required or draw(st.integers(0, 2)) == 0:
            attrs[name] = draw(attr_value(a.type))
    if draw(st.integers(0, 11)) == 0:  # an attribute the op does not define, or a wrong type
        name = draw(st.sampled_from(list(known) + ["bogus", "axis", "axes", "perm"]) if known else st.just("bogus"))
        attrs[name] = draw(attr_value(draw(st.sampled_from([A.INT, A.FLOAT, A.STRING, A.INTS, A.TENSOR]))))
    return [make_attr(k, v) for k, v in attrs.items()]


# -- strategy 1a: one random op ------------------------------------------------------------------

@st.composite
def random_op_model(draw):
    domain, op = draw(st.sampled_from(OPS))
    opset = draw(st.sampled_from(OPSETS))
    schema = _schema(domain, op, opset)
    lo, hi = (schema.min_input, min(schema.max_input, 4)) if schema else (1, 3)
    n_in = draw(st.integers(max(lo - 1, 0), max(hi, lo)) if draw(st.integers(0, 9)) == 0 else
                st.integers(lo, max(hi, lo)))
    lo, hi = (schema.min_output, min(schema.max_output, 3)) if schema else (1, 2)
    n_out = draw(st.integers(lo, max(hi, lo)))
    first_type = draw(ELEM_TYPES) if draw(st.integers(0, 6)) == 0 else draw(st.sampled_from(GOOD_TYPES))
    inputs, inits, names = [], [], []
    for k in range(n_in):
        source = draw(st.sampled_from(["input", "input", "init", "init", "omit"]))
        name = f"i{k}"
        elem = first_type if draw(st.booleans()) else draw(st.sampled_from(GOOD_TYPES))
        if source == "omit" and k > 0:
            names.append("")
        elif source == "init" and np_type(elem) is not None and np_type(elem).kind in "biuf":
            inits.append(numpy_helper.from_array(draw(small_array(np_type(elem))), name))
            names.append(name)
        else:
            dims = draw(st.lists(DIMS, max_size=4))
            if dims and draw(st.booleans()):
                dims[0] = "N"  # an open batch dimension
            if draw(st.integers(0, 11)) == 0 and dims:
                dims[-1] = draw(st.sampled_from(["M", None]))  # open, and left for input_shapes
            inputs.append(vi(name, elem, dims))
            names.append(name)
    outs = [f"o{k}" for k in range(n_out)]
    node = helper.make_node(op, names, outs, name=f"fuzz_{op}", domain=domain, )
    node.attribute.extend(draw(attributes(schema)))
    out_type = draw(st.sampled_from([first_type, TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL]))
    outputs = [vi(o, out_type, None) for o in outs]
    data = model_bytes([node], inputs, outputs, inits, opset, ml=domain == ML)
    return Hostile("op", data, f"{domain + '.' if domain else ''}{op} opset {opset}: {helper.printable_node(node)}; "
                   f"inputs {[(v.name, v.type.tensor_type.elem_type, [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]) for v in inputs]}; "
                   f"inits {[(t.name, t.data_type, list(t.dims)) for t in inits]}")


# -- strategy 1b: huge folded shapes ---------------------------------------------------------------

def _c(name, value, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


@st.composite
def huge_shape_model(draw):
    """Small models whose folded (or planned) tensors ask for 2**28..2**62 elements."""
    k = draw(st.integers(28, 62))
    kind = draw(st.sampled_from(["ConstantOfShape", "Expand", "Tile", "Range", "RangeFloat", "Resize", "Pad",
                                 "Concat", "Upsample", "MatMulBig", "ShapeOverflow"]))
    from_input = draw(st.booleans())  # the big op's data is a graph input (planned, not folded)
    reduce = draw(st.booleans())  # a ReduceSum makes the output small; the big tensor is only an intermediate
    dtype = draw(st.sampled_from([TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT8, TensorProto.BOOL]))
    npd = np_type(dtype)
    split = draw(st.integers(0, 2))
    big = [2 ** (k // 2), 2 ** (k - k // 2)] if split == 1 else ([2**k] if split == 0 else [2**k, 2**k])
    inits, inputs, nodes = [], [], []
    x = "x"
    if from_input:
        inputs.append(vi("x", dtype, ["N", 1]))
    else:
        inits.append(numpy_helper.from_array(np.ones((1, 1), npd), "x"))
    opset = 17
    if kind == "ConstantOfShape":
        inits.append(_c("shape", big))
        value = numpy_helper.from_array(np.ones(1, npd), "value")
        nodes.append(helper.make_node("ConstantOfShape", ["shape"], ["big"], value=value))
    elif kind == "Expand":
        inits.append(_c("shape", [1] * max(0, 2 - len(big)) + big))
        nodes.append(helper.make_node("Expand", [x, "shape"], ["big"]))
    elif kind == "Tile":
        reps = (big + [1, 1])[:2]
        inits.append(_c("reps", reps))
        nodes.append(helper.make_node("Tile", [x, "reps"], ["big"]))
    elif kind == "Range":
        inits += [_c("start", 0), _c("limit", 2**k), _c("delta", draw(st.sampled_from([1, 1, -1, 2**k])))]
        nodes.append(helper.make_node("Range", ["start", "limit", "delta"], ["big"]))
    elif kind == "RangeFloat":
        limit = draw(st.sampled_from([float(2**k), float("inf"), float("nan"), 1e300]))
        delta = draw(st.sampled_from([1.0, 1e-30, float("nan"), 5e-324, -0.0]))
        inits += [_c("start", 0.0, np.float64), _c("limit", limit, np.float64), _c("delta", delta, np.float64)]
        nodes.append(helper.make_node("Range", ["start", "limit", "delta"], ["big"]))
    elif kind == "Resize":
        mode = draw(st.sampled_from(["nearest", "linear", "cubic"]))
        if draw(st.booleans()):
            inits += [_c("roi", [], np.float32), _c("scales", [1.0, 1.0, float(2 ** (k // 2)), float(2 ** (k - k // 2))],
                                                      np.float32)]
            ins = ["x4", "roi", "scales"]
        else:
            inits += [_c("roi", [], np.float32), _c("sizes", [1, 1] + big[:1] + [2 ** (k - k // 2)])]
            ins = ["x4", "roi", "", "sizes"]
        nodes.append(helper.make_node("Reshape", [x, "s4"], ["x4"]))
        inits.append(_c("s4", [-1, 1, 1, 1]))
        nodes.append(helper.make_node("Resize", ins, ["big"], mode=mode))
    elif kind == "Upsample":
        inits.append(_c("scales", [1.0, float(2**k)], np.float32))
        nodes.append(helper.make_node("Upsample", [x, "scales"], ["big"]))
        opset = 9
    elif kind == "Pad":
        inits.append(_c("pads", [0, 0, big[0], big[-1]]))
        nodes.append(helper.make_node("Pad", [x, "pads"], ["big"], mode=draw(st.sampled_from(["constant", "edge",
                                                                                            "reflect", "wrap"]))))
    elif kind == "Concat":  # x concatenated with itself k times: 2**k elements from one
        cur = x
        for j in range(k):
            nodes.append(helper.make_node("Concat", [cur, cur], [f"c{j}"], axis=1))
            cur = f"c{j}"
        nodes.append(helper.make_node("Identity", [cur], ["big"]))
    elif kind == "MatMulBig":  # an outer product of two planned vectors
        inits.append(_c("shape", [2 ** (k // 2), 1]))
        inits.append(_c("shape2", [1, 2 ** (k - k // 2)]))
        nodes += [helper.make_node("Expand", [x, "shape"], ["a"]), helper.make_node("Expand", [x, "shape2"], ["b"]),
                  helper.make_node("MatMul", ["a", "b"], ["big"])]
    else:  # dims whose product overflows int64
        inits.append(_c("shape", [1, 2**62, 2**62, 16]))
        nodes.append(helper.make_node("Expand", [x, "shape"], ["big"]))
    out_dtype = dtype
    if kind in ("Range", "RangeFloat", "ConstantOfShape") and not reduce:
        out_dtype = {"Range": TensorProto.INT64, "RangeFloat": TensorProto.DOUBLE}.get(kind, dtype)
    if reduce:
        if kind.startswith("Range"):
            out_dtype = TensorProto.INT64 if kind == "Range" else TensorProto.DOUBLE
        nodes.append(helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0))
        nodes[-1].input[0] = "big"
        y = "y"
    else:
        y = "big"
    data = model_bytes(nodes, inputs, [vi(y, out_dtype, None)], inits, opset)
    return Hostile("huge", data, f"{kind} 2**{k} split={split} from_input={from_input} reduce={reduce} "
                   f"dtype={TensorProto.DataType.Name(dtype)}")


# -- strategy 1c: deep nesting and control flow ---------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes | str) -> bytes:
    """A length-delimited protobuf field: the python protobuf refuses to build messages nested past
    100 levels, so deep If chains are serialized by hand."""
    payload = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _graph(nodes: list[bytes], name: str, output: str) -> bytes:
    out_vi = vi(output, TensorProto.FLOAT, None).SerializeToString()
    return b"".join(_field(1, n) for n in nodes) + _field(2, name) + _field(12, out_vi)


def _if_node(cond: str, output: str, then_g: bytes, else_g: bytes) -> bytes:
    def attr(name, g):
        return _field(1, name) + _field(6, g) + _varint(20 << 3) + _varint(AttributeProto.GRAPH)

    return _field(1, cond) + _field(2, output) + _field(4, "If") + _field(5, attr("then_branch", then_g)) + \
        _field(5, attr("else_branch", else_g))


def if_chain(depth: int, outer: str, leaf: str) -> bytes:
    """A NodeProto (bytes) computing `y` through `depth` nested Ifs on `cond`; only the then side is deep."""
    def leaf_graph(tag: str) -> bytes:
        if leaf == "outer":
            node = helper.make_node("Identity", [outer], [f"r{tag}"])
        else:
            node = helper.make_node("Constant", [], [f"r{tag}"], value=numpy_helper.from_array(
                np.ones(2, np.float32), f"v{tag}"))
        return _graph([node.SerializeToString()], f"g{tag}", f"r{tag}")

    g = leaf_graph("leaf")
    for level in range(depth - 1):
        g = _graph([_if_node("cond", f"r{level}", g, leaf_graph(f"e{level}"))], f"g{level}", f"r{level}")
    return _if_node("cond", "y", g, leaf_graph("top"))


@st.composite
def nested_model(draw):
    kind = draw(st.sampled_from(["if", "if", "loop", "scan", "if_in_loop", "chain", "wide"]))
    depth = draw(st.sampled_from([1, 2, 10, 20, 30, 31, 32, 33, 49, 50, 51, 64, 100, 150, 300]))
    cond_input = draw(st.integers(0, 4)) == 0
    inits = [numpy_helper.from_array(np.ones(2, np.float32), "x")]
    inputs = []
    if cond_input:
        inputs.append(vi("cond", TensorProto.BOOL, []))
    else:
        inits.append(numpy_helper.from_array(np.array(draw(st.booleans())), "cond"))
    leaf = draw(st.sampled_from(["outer", "const"]))
    appended = b""  # NodeProto bytes added to the graph by hand
    if kind == "if":
        nodes, appended = [], if_chain(depth, "x", leaf)
    elif kind in ("loop", "scan", "if_in_loop"):
        body_nodes = []
        if kind == "if_in_loop":
            body_nodes = [onnx.NodeProto.FromString(if_chain(min(depth, 10), "x", leaf))]
            body_nodes[0].output[0] = "yb"
        ident = helper.make_node("Identity", ["yb" if body_nodes else "v_in"], ["v_out"])
        cond_id = helper.make_node("Identity", ["c_in"], ["c_out"])
        body = helper.make_graph(body_nodes + [ident, cond_id], "body",
                                 [vi("iter", TensorProto.INT64, []), vi("c_in", TensorProto.BOOL, []),
                                  vi("v_in", TensorProto.FLOAT, None)],
                                 [vi("c_out", TensorProto.BOOL, []), vi("v_out", TensorProto.FLOAT, None)])
        inits.append(_c("trip", draw(st.sampled_from([0, 1, 2**62]))))
        if kind == "scan":
            sbody = helper.make_graph([helper.make_node("Identity", ["s"], ["s2"]),
                                       helper.make_node("Identity", ["e"], ["e2"])], "sbody",
                                      [vi("s", TensorProto.FLOAT, None), vi("e", TensorProto.FLOAT, None)],
                                      [vi("s2", TensorProto.FLOAT, None), vi("e2", TensorProto.FLOAT, None)])
            nodes = [helper.make_node("Scan", ["x", "x"], ["y", "ys"], body=sbody, num_scan_inputs=1)]
        else:
            nodes = [helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body)]
    elif kind == "chain":  # a long chain of cheap ops
        length = draw(st.sampled_from([100, 1000, 3000]))
        op = draw(st.sampled_from(["Relu", "Identity", "Neg", "Unsqueeze", "Flatten"]))
        nodes, cur = [], "x"
        for j in range(length):
            if op == "Unsqueeze":
                inits.append(_c(f"ax{j}", [0])) if j == 0 else None
                nodes.append(helper.make_node("Unsqueeze", [cur, "ax0"], [f"h{j}"]))
            else:
                nodes.append(helper.make_node(op, [cur], [f"h{j}"]))
            cur = f"h{j}"
        nodes.append(helper.make_node("Identity", [cur], ["y"]))
        if draw(st.booleans()):  # the chain on a graph input, so it is planned, not folded
            inits = [t for t in inits if t.name != "x"]
            inputs.append(vi("x", TensorProto.FLOAT, ["N", 2]))
    else:  # one node with very many inputs
        n = draw(st.sampled_from([100, 2000]))
        nodes = [helper.make_node("Sum", ["x"] * n, ["y"])]
    data = model_bytes(nodes, inputs, [vi("y", TensorProto.FLOAT, None)], inits, 17)
    if appended:  # ModelProto.graph (7) is merged field by field: this appends to graph.node (1)
        data += _field(7, _field(1, appended))
    return Hostile("nested", data, f"{kind} depth={depth} cond_input={cond_input} leaf={leaf}")


# -- strategy 1d: external data everywhere ------------------------------------------------------

def external(t: TensorProto, location: str, offset=None, length=None) -> TensorProto:
    t.ClearField("raw_data")
    for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        t.ClearField(f)
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", offset), ("length", length)):
        if v is not None:
            e = t.external_data.add()
            e.key, e.value = k, str(v)
    return t


@st.composite
def external_model(draw):
    place = draw(st.sampled_from(["initializer", "constant_value", "sparse_value", "sparse_indices", "if_branch_init",
                                  "if_branch_constant", "tensors_attr", "sparse_initializer", "cos_value",
                                  "tree_tensor", "nested_if_constant"]))
    location = draw(st.sampled_from(LOCATIONS))
    if location.startswith(STATE_FILE):
        secret = os.path.join(STATE_DIR, "secret.bin")
        location = secret if location == STATE_FILE else os.path.relpath(secret)
    offset = draw(st.sampled_from([None, 0, 4, -1, 2**63]))
    length = draw(st.sampled_from([None, 8, 16, 0, -1, 2**40]))
    n = 4  # uint8 elements the tensor claims
    ext = lambda name: external(TensorProto(name=name, data_type=TensorProto.UINT8, dims=[n]), location,  # noqa: E731
                                offset, length)
    inputs, inits, sparse = [], [], []
    out_t = TensorProto.UINT8
    ml = False
    if place == "initializer":
        inits.append(ext("w"))
        nodes = [helper.make_node("Identity", ["w"], ["y"])]
    elif place == "constant_value":
        nodes = [helper.make_node("Constant", [], ["y"], value=ext("v"))]
    elif place in ("sparse_value", "sparse_indices"):
        values = numpy_helper.from_array(np.arange(2, dtype=np.uint8), "sv")
        indices = numpy_helper.from_array(np.array([0, 1], np.int64), "si")
        if place == "sparse_value":
            values = ext("sv")
            values.dims[:] = [2]
        else:
            indices = external(indices, location, offset, length)
        sp = helper.make_sparse_tensor(values, indices, [n])
        nodes = [helper.make_node("Constant", [], ["y"], sparse_value=sp)]
    elif place in ("if_branch_init", "if_branch_constant", "nested_if_constant"):
        if place == "if_branch_init":
            then_g = helper.make_graph([helper.make_node("Identity", ["bw"], ["r"])], "then", [],
                                       [vi("r", out_t, None)], [ext("bw")])
        else:
            then_g = helper.make_graph([helper.make_node("Constant", [], ["r"], value=ext("bv"))], "then", [],
                                       [vi("r", out_t, None)])
        else_g = helper.make_graph([helper.make_node("Constant", [], ["r2"], value=numpy_helper.from_array(
            np.zeros(n, np.uint8), "z"))], "else", [], [vi("r2", out_t, None)])
        inits.append(numpy_helper.from_array(np.array(draw(st.booleans())), "cond"))
        node = helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)
        if place == "nested_if_constant":
            outer_then = helper.make_graph([node], "outer", [], [vi("y", out_t, None)])
            node = helper.make_node("If", ["cond"], ["y"], then_branch=outer_then,
                                    else_branch=helper.make_graph([helper.make_node("Identity", ["cz"], ["y2"])],
                                                                  "oe", [], [vi("y2", out_t, None)]))
            inits.append(numpy_helper.from_array(np.zeros(n, np.uint8), "cz"))
        nodes = [node]
    elif place == "tensors_attr":
        inits.append(numpy_helper.from_array(np.zeros(n, np.uint8), "w"))
        node = helper.make_node(draw(st.sampled_from(["Identity", "Relu", "Constant"])), ["w"], ["y"])
        node.attribute.append(helper.make_attribute("value_tensors", [ext("a"), ext("b")]))
        nodes = [node]
    elif place == "sparse_initializer":
        values = ext("spv")
        values.dims[:] = [2]
        sparse.append(helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([0, 1], np.int64), "spi"),
                                                [n]))
        sparse[-1].values.name = "sw"
        nodes = [helper.make_node("Identity", ["sw"], ["y"])]
    elif place == "cos_value":
        inits.append(_c("shape", [n]))
        nodes = [helper.make_node("ConstantOfShape", ["shape"], ["y"], value=ext("cv"))]
    else:  # a TreeEnsembleRegressor's thresholds as an external tensor
        ml = True
        inputs.append(vi("x", TensorProto.FLOAT, [1, 2]))
        t = ext("nv")
        t.data_type = TensorProto.FLOAT
        t.dims[:] = [1]
        nodes = [helper.make_node("TreeEnsembleRegressor", ["x"], ["y"], domain=ML, nodes_treeids=[0],
                                  nodes_nodeids=[0], nodes_featureids=[0], nodes_modes=["LEAF"],
                                  nodes_truenodeids=[0], nodes_falsenodeids=[0], nodes_values_as_tensor=t,
                                  target_ids=[0], target_nodeids=[0], target_treeids=[0], target_weights=[1.0])]
        out_t = TensorProto.FLOAT
    data = model_bytes(nodes, inputs, [vi("y", out_t, None)], inits, 17, ml=ml, sparse=sparse)
    return Hostile("external", data, f"{place} location={location!r} offset={offset} length={length}",
                   {"location": location})


# -- strategy 1e: garbage bytes -------------------------------------------------------------

def _valid_models() -> list[bytes]:
    from models import mlp_bytes

    x = vi("x", TensorProto.FLOAT, ["N", 4])
    sm = model_bytes([helper.make_node("Softmax", ["x"], ["y"])], [x], [vi("y", TensorProto.FLOAT, None)])
    cond = numpy_helper.from_array(np.array(True), "c")
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"])], "t", [], [vi("r", TensorProto.FLOAT, None)])
    iff = model_bytes([helper.make_node("If", ["c"], ["y"], then_branch=g, else_branch=g)], [x],
                      [vi("y", TensorProto.FLOAT, None)], [cond])
    return [mlp_bytes(sizes=(8, 16, 4)), sm, iff]


VALID = None


@st.composite
def garbage_model(draw):
    global VALID
    VALID = VALID or _valid_models()
    base = bytearray(draw(st.sampled_from(VALID)))
    how = draw(st.sampled_from(["truncate", "flip", "insert", "random", "truncate+flip", "empty", "repeat"]))
    if how == "empty":
        base = bytearray()
    if how.startswith("truncate"):
        base = base[: draw(st.integers(0, max(len(base) - 1, 0)))]
    if "flip" in how and base:
        for _ in range(draw(st.integers(1, 30))):
            pos = draw(st.integers(0, len(base) - 1))
            base[pos] ^= 1 << draw(st.integers(0, 7))
    if how == "insert":
        pos = draw(st.integers(0, len(base)))
        base[pos:pos] = draw(st.binary(min_size=1, max_size=64))
    if how == "random":
        base = bytearray(draw(st.binary(max_size=4096)))
    if how == "repeat":
        base = base * draw(st.integers(2, 5))
    return Hostile("garbage", bytes(base), how)


def hostile_models():
    return st.one_of(random_op_model(), huge_shape_model(), nested_model(), external_model(), garbage_model())


# -- load options ---------------------------------------------------------------------------

U32 = st.one_of(st.integers(0, 4), st.sampled_from([8, 1000, 2**16, 2**31 - 1, 2**31, 2**32 - 1]))
U64 = st.one_of(st.integers(0, 2000), st.sampled_from([10**6, 2**32, 2**53, 2**63 - 1, 2**63, 2**64 - 1]))


@st.composite
def load_options(draw, input_names=("x", "i0", "i1")) -> pb.LoadOptions:
    o = pb.LoadOptions(
        name=draw(st.one_of(st.just(""), st.text(string.ascii_letters + "-_./:\x00é", max_size=20))),
        workspace=draw(st.sampled_from(["", "private", "auto", "shared:fz", "shared:", "shared:auto.1", "bogus",
                                        "shared:" + "x" * 300, "\x00"])),
        max_batch=draw(U32),
        instances=draw(st.one_of(st.just(0), st.just(1), U32)),
        replace=draw(st.booleans()),
    )
    for name in draw(st.lists(st.sampled_from(list(input_names) + ["nope", ""]), max_size=2, unique=True)):
        o.input_shapes[name].dims.extend(draw(st.lists(DIMS, max_size=5)))
    if draw(st.booleans()):
        o.dynamic_batching.enabled = draw(st.booleans())
        o.dynamic_batching.max_queue_delay_us = draw(U64)
        o.dynamic_batching.preferred_batch_sizes.extend(draw(st.lists(U32, max_size=3)))
    return o


@st.composite
def model_options(draw) -> pb.LoadOptions:
    """Mostly the options a user sends (so the model itself is what gets tested), sometimes hostile ones."""
    if draw(st.integers(0, 4)) == 0:
        return draw(load_options())
    o = pb.LoadOptions(max_batch=draw(st.sampled_from([0, 1, 2, 8])),
                       workspace=draw(st.sampled_from(["private", "private", "auto", "shared:fz"])),
                       instances=draw(st.sampled_from([1, 1, 1, 2])))
    return o


FRAMINGS = ["normal"] * 6 + ["options_twice", "chunk_first", "no_options", "no_chunks", "tiny_chunks"]


# -- execute requests -------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    """A fixed model the request fuzzing targets (loaded by the harness)."""

    name: str
    inputs: tuple[tuple[str, str, tuple[int, ...]], ...]  # (name, numpy dtype, shape with -1 for batch)
    max_batch: int


PB_DTYPES = {"float32": pb.FLOAT32, "float16": pb.FLOAT16, "float64": pb.FLOAT64, "int8": pb.INT8,
             "int16": pb.INT16, "int32": pb.INT32, "int64": pb.INT64, "uint8": pb.UINT8, "uint16": pb.UINT16,
             "uint32": pb.UINT32, "uint64": pb.UINT64, "bool": pb.BOOL}
KS_DTYPES = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "int8": "INT8", "int16": "INT16",
             "int32": "INT32", "int64": "INT64", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
             "uint64": "UINT64", "bool": "BOOL"}
WEIRD_DIMS = st.sampled_from([-(2**63), -(2**31), -2, -1, 0, 1, 2, 3, 5, 2**31, 2**32, 2**62, 2**63 - 1])
NAMES = st.one_of(st.sampled_from(["", "x", "a", "b", "c", "probs", "\x00", "é", "x" * 1000]), st.text(max_size=8))


@dataclass
class Tensor:
    name: str
    dtype: str  # numpy name, or a bogus label
    shape: list[int]
    data: bytes


@st.composite
def valid_tensors(draw, spec: Spec) -> list[Tensor]:
    batch = draw(st.integers(1, max(spec.max_batch, 1)))
    out = []
    for name, dtype, shape in spec.inputs:
        dims = [batch if d == -1 else d for d in shape]
        n = int(np.prod(dims, dtype=np.int64)) * np.dtype(dtype).itemsize
        data = draw(st.one_of(st.binary(min_size=n, max_size=n),
                              st.just(np.ones(n // np.dtype(dtype).itemsize, dtype).tobytes())))
        out.append(Tensor(name, dtype, dims, data))
    return out


MUTATIONS = ["drop", "dup", "extra", "dtype", "shape", "reshape", "batch0", "batch_over", "data_len", "rename",
             "huge_shape_empty", "neg_shape", "empty_data"]


@st.composite
def mutate(draw, tensors: list[Tensor], spec: Spec) -> tuple[list[Tensor], list[str]]:
    done = []
    for m in draw(st.lists(st.sampled_from(MUTATIONS), max_size=3)):
        if not tensors and m not in ("extra",):
            continue
        k = draw(st.integers(0, max(len(tensors) - 1, 0)))
        t = tensors[k] if tensors else None
        if m == "drop":
            tensors.pop(k)
        elif m == "dup":
            tensors.insert(k, Tensor(t.name, t.dtype, list(t.shape), t.data))
        elif m == "extra":
            tensors.append(Tensor(draw(NAMES), "float32", [1], b"\0" * 4))
        elif m == "dtype":
            t.dtype = draw(st.sampled_from(list(PB_DTYPES) + ["bogus"]))
        elif m == "shape":
            t.shape = draw(st.lists(WEIRD_DIMS, max_size=6))
        elif m == "reshape":  # same element count, other shape
            n = int(np.prod(t.shape, dtype=np.int64))
            t.shape = draw(st.sampled_from([[n], [1, n], [n, 1], [1] * 7 + [n], list(reversed(t.shape))]))
        elif m == "batch0" and t.shape:
            t.shape[0], t.data = 0, b""
        elif m == "batch_over" and t.shape:
            rows = spec.max_batch + draw(st.integers(1, 3))
            per = len(t.data) // max(t.shape[0], 1)
            t.shape[0], t.data = rows, (t.data[:per] or b"\0") * rows
        elif m == "data_len":
            t.data = t.data[: draw(st.integers(0, len(t.data)))] + draw(st.binary(max_size=9))
        elif m == "rename":
            t.name = draw(NAMES)
        elif m == "huge_shape_empty":  # an element count that wraps to 0 bytes in int64
            t.shape, t.data = draw(st.sampled_from([[2**62, 4], [2**32, 2**32], [2**63 - 1, 2, 0], [0, 2**63 - 1],
                                                    [2**61, 8], [-(2**62), -4]])), b""
        elif m == "neg_shape":
            t.shape = draw(st.sampled_from([[-1, -len(t.data) or -1], [-2, -2], [-1], [len(t.data), -1, -1]]))
        elif m == "empty_data":
            t.data = b""
        done.append(m)
    return tensors, done


def native_tensor(t: Tensor, bogus_code: int) -> pb.Tensor:
    code = PB_DTYPES.get(t.dtype, bogus_code)
    return pb.Tensor(name=t.name, dtype=code, shape=t.shape, data=t.data)


@st.composite
def native_request(draw, specs: list[Spec]) -> tuple[pb.ExecuteRequest, str, bool]:
    """(request, description, whether the harness must fill in the model's id)."""
    spec = draw(st.sampled_from(specs))
    tensors, done = draw(mutate(draw(valid_tensors(spec)), spec))
    bogus = draw(st.sampled_from([0, 13, 99, 2**31 - 1, -1]))
    req = pb.ExecuteRequest(inputs=[native_tensor(t, bogus) for t in tensors],
                            priority=draw(st.one_of(st.integers(0, 7), st.integers(0, 7), U32)),
                            timeout_us=draw(st.one_of(st.just(0), st.just(0), st.just(0), U64)),
                            id=draw(st.one_of(st.just(""), st.text(max_size=12))))
    ref = draw(st.sampled_from(["name"] * 6 + ["id"] * 3 + ["bogus_name", "bogus_id", "none"]))
    if ref == "name":
        req.model.name = spec.name
    elif ref == "id":
        req.model.id = 0  # the harness puts the model's id here
    elif ref == "bogus_name":
        req.model.name = draw(NAMES)
    elif ref == "bogus_id":
        req.model.id = draw(U32)
    return req, f"{spec.name}: {done} ref={ref}", ref == "id"


KS_BOGUS_TYPES = ["BYTES", "FP8", "BF16", "", "fp32", "FP32 ", "INT128", "\x00"]
CONTENT_FIELDS = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                  "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
                  "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
                  "FP32": "fp32_contents", "FP64": "fp64_contents", "FP16": None}
OUT_OF_RANGE = {"int_contents": [1000, -1000, 2**31 - 1, -(2**31)], "uint_contents": [300, 70000, 2**32 - 1],
                "int64_contents": [2**63 - 1, -(2**63)], "uint64_contents": [2**64 - 1],
                "fp32_contents": [float("nan"), float("inf"), 3.4e38], "fp64_contents": [1e308, float("-inf")],
                "bool_contents": [True]}


@st.composite
def kserve_request(draw, specs: list[Spec]) -> tuple[kpb.ModelInferRequest, str]:
    spec = draw(st.sampled_from(specs))
    tensors, done = draw(mutate(draw(valid_tensors(spec)), spec))
    req = kpb.ModelInferRequest(model_name=spec.name, id=draw(st.one_of(st.just(""), st.text(max_size=12))))
    encoding = draw(st.sampled_from(["raw", "raw", "typed", "mixed"]))
    for k, t in enumerate(tensors):
        datatype = KS_DTYPES.get(t.dtype, draw(st.sampled_from(KS_BOGUS_TYPES)))
        if draw(st.integers(0, 12)) == 0:
            datatype = draw(st.sampled_from(KS_BOGUS_TYPES + list(CONTENT_FIELDS)))
            done.append(f"datatype={datatype!r}")
        inp = req.inputs.add(name=t.name, datatype=datatype, shape=t.shape)
        typed = encoding == "typed" or (encoding == "mixed" and k % 2 == 1)
        if not typed:
            req.raw_input_contents.append(t.data)
            continue
        fld = CONTENT_FIELDS.get(datatype) or draw(st.sampled_from(list(OUT_OF_RANGE)))
        if t.dtype in PB_DTYPES and len(t.data) % np.dtype(t.dtype).itemsize == 0:
            values = np.frombuffer(t.data, t.dtype).tolist()
        else:
            values = list(t.data)
        if fld == "bool_contents":
            values = [bool(v) for v in values]
        elif fld in ("fp32_contents", "fp64_contents"):
            values = [float(v) for v in values]
        else:
            lo, hi = {"int_contents": (-(2**31), 2**31 - 1), "uint_contents": (0, 2**32 - 1),
                      "int64_contents": (-(2**63), 2**63 - 1), "uint64_contents": (0, 2**64 - 1)}[fld]
            values = [min(max(int(v) if v == v and abs(v) != float("inf") else 0, lo), hi) for v in values]
        if values and draw(st.integers(0, 3)) == 0:
            values[draw(st.integers(0, len(values) - 1))] = draw(st.sampled_from(OUT_OF_RANGE[fld]))
            done.append(f"out_of_range {fld}")
        getattr(inp.contents, fld).extend(values)
    if encoding == "mixed" and len(tensors) < 2 and draw(st.booleans()):
        req.raw_input_contents.append(b"\0" * 4)  # more raw buffers than inputs
    for key in draw(st.lists(st.sampled_from(["priority", "timeout", "sequence_id", "bogus"]), max_size=3,
                             unique=True)):
        p = req.parameters[key]
        which = draw(st.sampled_from(["int64", "uint64", "bool", "string", "double"]))
        if which == "int64":
            p.int64_param = draw(st.sampled_from([-(2**63), -1, 0, 1, 2, 8, 2**63 - 1]))
        elif which == "uint64":
            p.uint64_param = draw(st.sampled_from([0, 1, 2, 9, 2**63, 2**64 - 1]))
        elif which == "bool":
            p.bool_param = True
        elif which == "string":
            p.string_param = draw(st.sampled_from(["", "1", "-5", "high"]))
        else:
            p.double_param = draw(st.sampled_from([float("nan"), -1.5, 1e300]))
    for name in draw(st.lists(st.sampled_from(["y", "probs", "o1", "o2", "nope", ""]), max_size=3)):
        req.outputs.add(name=name)
    req.model_version = draw(st.sampled_from(["", "", "1"] * 4 + ["2", "\x00"]))
    if draw(st.integers(0, 30)) == 0:
        req.model_name = draw(NAMES)
    return req, f"{spec.name}: {done} encoding={encoding}"
