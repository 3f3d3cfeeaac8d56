"""Parse and check ONNX bytes into a `Graph` of plain nodes and numpy weights.

Everything memserve cannot run is refused here, each with a message that
names the node: external data, subgraphs (control flow), ops without a kernel.

A model is data, never a path: a tensor anywhere in it (initializers, sparse
initializers, Constant values, tensor attributes, subgraphs, functions) that
names external data is refused before anything reads it, so no load can make
the daemon open a file. Node count and subgraph nesting are bounded, and the
bytes of the parsed model and of every initializer are charged to the load's
budget (budget.py) before they are taken.
"""
from __future__ import annotations

import heapq
import math
import dataclasses
from dataclasses import dataclass, field

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from .. import budget
from ..errors import ModelParseError, ResourceExhausted, UnsupportedModel
from ..kernels import INTERNAL_DOMAIN, STORAGE_DTYPES, Node, lookup
from ..kernels.control import CONTROL_FLOW
from ..limits import MAX_NODES, MAX_SUBGRAPH_DEPTH

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass
class GraphInput:
    name: str
    dtype: np.dtype
    dims: list[int | None]  # None: left open by the model
    dim_names: list[str]


@dataclass
class Graph:
    opset: int
    nodes: list[Node]  # topological order, Constant nodes already folded into weights
    weights: dict[str, np.ndarray]
    inputs: list[GraphInput]
    outputs: list[str]
    name: str = ""
    producer: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Branch:
    """A subgraph: an If's branch (inlined by the compiler), or a Loop's or Scan's body (planned on its own)."""

    nodes: list[Node]
    outputs: list[str]
    weights: dict[str, np.ndarray]
    inputs: list[GraphInput] = field(default_factory=list)  # a body's formal inputs (an If's branch has none)


def scoped(branch: Branch, prefix: str) -> Branch:
    """The branch with the names it defines (its initializers and its nodes' outputs) renamed `prefix` +
    name, and every read of them (its nodes', and those of subgraphs inside that do not define the name
    themselves) renamed alike. They are the branch's own: sibling branches and the outer graph may use the
    same names, which inlining would otherwise mix up."""
    mapping = {name: prefix + name for name in branch.weights}
    mapping.update({o: prefix + o for n in branch.nodes for o in n.outputs if o})
    return Branch([dataclasses.replace(_renamed(n, mapping), outputs=[mapping.get(o, o) for o in n.outputs])
                   for n in branch.nodes], [mapping.get(o, o) for o in branch.outputs],
                  {mapping[k]: v for k, v in branch.weights.items()}, branch.inputs)


def _renamed(node: Node, mapping: dict[str, str]) -> Node:
    if not mapping:
        return node
    attrs = dict(node.attrs)
    for key, value in node.attrs.items():
        if isinstance(value, Branch):  # names it defines (its initializers, inputs, outputs) shadow ours
            own = set(value.weights) | {v.name for v in value.inputs} | {o for n in value.nodes for o in n.outputs}
            inner = {k: v for k, v in mapping.items() if k not in own}
            attrs[key] = Branch([_renamed(n, inner) for n in value.nodes], [inner.get(o, o) for o in value.outputs],
                                value.weights, value.inputs)
    return dataclasses.replace(node, inputs=[mapping.get(i, i) for i in node.inputs],
                               captures=[mapping.get(c, c) for c in node.captures], attrs=attrs)


def import_onnx(data: bytes) -> Graph:
    try:
        return _import(_parse(data))
    finally:
        budget.release(len(data))  # the parsed ModelProto is dropped here


def _import(model: onnx.ModelProto) -> Graph:
    opsets = _opsets(model)
    opset = opsets[""]
    g = model.graph
    weights = {init.name: _initializer(init) for init in g.initializer}
    unsupported: list[str] = []
    nodes = _import_nodes(g, opsets, weights, unsupported)
    if unsupported:
        shown = ", ".join(unsupported[:5]) + (f" and {len(unsupported) - 5} more" if len(unsupported) > 5 else "")
        raise UnsupportedModel(f"model uses ops memserve does not implement: {shown}")
    inputs = [_graph_input(v) for v in g.input if v.name not in weights]
    for v in g.output:
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            element_type(v.type.tensor_type.elem_type, f"graph output {v.name!r}")
        elif not v.type.HasField("tensor_type"):
            raise UnsupportedModel(f"graph output {v.name!r} is not a tensor (a sequence or map); "
                                   "for scikit-learn classifiers export with options={'zipmap': False}")
    outputs = [v.name for v in g.output]
    return Graph(
        opset=opset,
        nodes=_topological(nodes, {i.name for i in inputs} | set(weights)),
        weights=weights,
        inputs=inputs,
        outputs=outputs,
        name=g.name,
        producer=model.producer_name,
        metadata={p.key: p.value for p in model.metadata_props},
    )


def _parse(data: bytes) -> onnx.ModelProto:
    if not data:
        raise ModelParseError("model is empty: send the ONNX file's bytes after the load options")
    budget.charge(len(data), "the parsed model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError, RecursionError) as exc:
        raise ModelParseError(f"model bytes are not an ONNX ModelProto ({exc})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ModelParseError("model bytes are not an ONNX model: no graph or no nodes")
    _check_structure(model)
    budget.charge(len(data), "the ONNX checker's copy of the model")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, RecursionError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelParseError(f"model fails the ONNX checker: {first}") from None
    budget.release(len(data))  # the checker's copy is gone
    return model


def _check_structure(model: onnx.ModelProto) -> None:
    """Bound the node count and nesting; refuse external data in every tensor of the model."""
    nodes = 0
    stack = [(model.graph, 0, "graph")]
    stack += [(f, 1, f"function {f.name!r}") for f in model.functions]
    while stack:
        g, depth, where = stack.pop()
        if depth > MAX_SUBGRAPH_DEPTH:
            raise UnsupportedModel(f"{where} nests subgraphs {depth} deep; memserve accepts at most "
                                   f"{MAX_SUBGRAPH_DEPTH} levels")
        for t in getattr(g, "initializer", ()):
            _no_external(t, f"initializer {t.name!r}")
        for sp in getattr(g, "sparse_initializer", ()):
            _no_external_sparse(sp, f"sparse initializer {sp.values.name!r}")
        nodes += len(g.node)
        if nodes > MAX_NODES:
            raise UnsupportedModel(f"model has more than {MAX_NODES} nodes (subgraphs and functions included); "
                                   "that is memserve's bound on a model")
        for index, n in enumerate(g.node):
            name = n.name or f"{n.op_type}_{index}"
            for a in n.attribute:
                what = f"node {name!r} ({n.op_type}) attribute {a.name!r}"
                if a.HasField("t"):
                    _no_external(a.t, what)
                for t in a.tensors:
                    _no_external(t, what)
                if a.HasField("sparse_tensor"):
                    _no_external_sparse(a.sparse_tensor, what)
                for sp in a.sparse_tensors:
                    _no_external_sparse(sp, what)
                if a.HasField("g"):
                    stack.append((a.g, depth + 1, f"{what} subgraph"))
                stack += [(sub, depth + 1, f"{what} subgraph") for sub in a.graphs]


def _no_external(t: TensorProto, what: str) -> None:
    if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
        raise UnsupportedModel(
            f"{what} keeps its data in an external file; memserve reads no files named by a model: save it "
            "with onnx.save_model(model, path, save_as_external_data=False) and upload that one file")


def _no_external_sparse(sp: onnx.SparseTensorProto, what: str) -> None:
    _no_external(sp.values, what)
    _no_external(sp.indices, what)


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    opsets = {("" if imp.domain == "ai.onnx" else imp.domain): imp.version for imp in model.opset_import}
    opsets.setdefault("", onnx.defs.onnx_opset_version())  # a model of ai.onnx.ml ops alone needs none
    return opsets


def _initializer(init: TensorProto, what: str = "") -> np.ndarray:
    what = what or f"initializer {init.name!r}"
    _charge_tensor(init, what)
    try:
        return numpy_helper.to_array(init)
    except MemoryError:
        raise ResourceExhausted(f"{what} does not fit in host memory") from None
    except Exception as exc:  # onnx raises several types for bad tensors
        raise ModelParseError(f"{what} cannot be read: {exc}") from None


def _charge_tensor(t: TensorProto, what: str) -> None:
    """Charge a tensor's decoded size before decoding it (its dims may claim far more than it carries)."""
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, ValueError, TypeError):
        itemsize = 8
    if any(d < 0 for d in t.dims):
        raise ModelParseError(f"{what} has a negative dimension in {list(t.dims)}")
    budget.charge(math.prod(t.dims) * itemsize, what)


def _import_nodes(g: onnx.GraphProto, opsets: dict[str, int], weights: dict[str, np.ndarray],
                  unsupported: list[str]) -> list[Node]:
    """A graph's nodes; Constant nodes go to `weights`, unknown ops to `unsupported`."""
    nodes = []
    for index, proto in enumerate(g.node):
        node = _node(proto, index, opsets, unsupported)
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            weights[node.outputs[0]] = _constant_value(node)
            continue
        if node.op_type == "Reshape" and "shape" in node.attrs and len(node.inputs) == 1:
            # Reshape before opset 5 takes its shape as an attribute: make it the input later opsets have.
            name = f"{node.name}:shape"
            weights[name] = np.asarray(node.attrs.pop("shape"), np.int64)
            node.inputs.append(name)
        if node.op_type == "ZipMap":
            raise UnsupportedModel(f"node {node.name!r} (ZipMap) outputs a sequence of maps; export the "
                                   "scikit-learn classifier with options={'zipmap': False}")
        # The compiler's own ops (an ElementwiseChain's program indexes memory) are never a model's to name.
        if node.domain == INTERNAL_DOMAIN or (lookup(node.domain, node.op_type) is None and node.op_type not in CONTROL_FLOW):
            domain = f"{node.domain}." if node.domain else ""
            unsupported.append(f"{node.name!r} ({domain}{node.op_type})")
            continue
        nodes.append(node)
    return nodes


def _branch(g: onnx.GraphProto, opsets: dict[str, int], unsupported: list[str]) -> tuple[Branch, set[str]]:
    """A subgraph and the outer names it reads."""
    weights = {init.name: _initializer(init) for init in g.initializer}
    nodes = _import_nodes(g, opsets, weights, unsupported)
    produced = set(weights) | {o for n in nodes for o in n.outputs}
    outer = {i for n in nodes for i in n.inputs + n.captures if i and i not in produced}
    outer |= {o.name for o in g.output if o.name not in produced}
    formal = [_formal_input(v) for v in g.input]
    outer -= {v.name for v in formal}
    available = outer | set(weights) | {v.name for v in formal}
    return Branch(_topological(nodes, available), [o.name for o in g.output], weights, formal), outer


def _formal_input(v: onnx.ValueInfoProto) -> GraphInput:
    """A body's input: its type must be declared; an undeclared shape is taken from what the op feeds it."""
    t = v.type.tensor_type
    if v.type.WhichOneof("value") is None:  # untyped (functions' expansions): the op's feed decides
        return GraphInput(v.name, None, None, [])
    if not v.type.HasField("tensor_type"):
        raise UnsupportedModel(f"subgraph input {v.name!r} is not a tensor")
    dtype = element_type(t.elem_type, f"subgraph input {v.name!r}") if t.elem_type else None
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in t.shape.dim] \
        if t.HasField("shape") else None
    return GraphInput(v.name, dtype, dims, [])


def _node(proto: onnx.NodeProto, index: int, opsets: dict[str, int], unsupported: list[str]) -> Node:
    name = proto.name or f"{proto.op_type}_{index}"
    opset = opsets.get("" if proto.domain == "ai.onnx" else proto.domain, opsets[""])
    attrs, captures = {}, set()
    for a in proto.attribute:
        if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
            if proto.op_type not in CONTROL_FLOW or a.type != AttributeProto.GRAPH:
                raise UnsupportedModel(
                    f"node {name!r} ({proto.op_type}) has a subgraph in attribute {a.name!r}; memserve runs "
                    f"subgraphs of {', '.join(sorted(CONTROL_FLOW))} only")
            attrs[a.name], outer = _branch(a.g, opsets, unsupported)
            captures |= outer
            continue
        value = helper.get_attribute_value(a)
        attrs[a.name] = value.decode() if isinstance(value, bytes) else value
    node = Node(proto.op_type, name, list(proto.input), list(proto.output), attrs, opset, proto.domain,
                sorted(captures))
    no_training_input = len(node.inputs) < 3 or not node.inputs[2]
    if node.op_type == "Dropout" and len([o for o in node.outputs if o]) == 1 and no_training_input:
        node.op_type, node.inputs = "Identity", node.inputs[:1]  # without its mask, inference Dropout is the identity
    return node


def _constant_value(node: Node) -> np.ndarray:
    a = node.attrs
    if "value" in a:
        return _initializer(a["value"], f"node {node.name!r} (Constant) value")
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in a:
            return np.asarray(a[key], dtype=dtype)
    raise UnsupportedModel(f"node {node.name!r} (Constant): only tensor and numeric values are supported")


def _graph_input(v: onnx.ValueInfoProto) -> GraphInput:
    t = v.type.tensor_type
    if not v.type.HasField("tensor_type") or not t.HasField("shape"):
        raise UnsupportedModel(f"graph input {v.name!r} is not a tensor with a known rank")
    dtype = element_type(t.elem_type, f"graph input {v.name!r}")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in t.shape.dim]
    names = [d.dim_param for d in t.shape.dim]
    return GraphInput(v.name, dtype, dims, names)


def element_type(elem_type: int, what: str) -> np.dtype:
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        dtype = None
    if dtype not in STORAGE_DTYPES:
        name = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else elem_type
        raise UnsupportedModel(f"{what} has element type {name}; memserve takes "
                               f"{', '.join(sorted(d.name for d in STORAGE_DTYPES))}")
    return dtype


def _topological(nodes: list[Node], available: set[str]) -> list[Node]:
    """Kahn's order; ONNX requires sorted graphs, but exporters do not all comply.

    The order is that of passes over the list, each taking, in list order, every node whose inputs
    are known by then: a sorted list (the usual case, checked first) keeps its order. Otherwise it
    is found in O(n log n): each node waits for a count of unknown inputs, and is queued by
    (pass, position) when its last one becomes known."""
    known = set(available) | {""}
    for n in nodes:
        if not all(i in known for i in n.inputs + n.captures):
            return _kahn(nodes, available)
        known.update(n.outputs)
    return list(nodes)


def _kahn(nodes: list[Node], available: set[str]) -> list[Node]:
    """_topological's order for a list that is not sorted."""
    known = set(available) | {""}
    readers: dict[str, list[int]] = {}  # unknown name -> the nodes waiting for it
    waiting = [0] * len(nodes)  # per node, how many of its distinct inputs are unknown
    for k, n in enumerate(nodes):
        for name in set(n.inputs + n.captures) - known:
            readers.setdefault(name, []).append(k)
            waiting[k] += 1
    earliest = [1] * len(nodes)  # the first pass that could take each node, from its inputs known so far
    queue = [(1, k) for k in range(len(nodes)) if not waiting[k]]  # sorted, so already a heap
    ordered = []
    while queue:
        p, k = heapq.heappop(queue)
        ordered.append(nodes[k])
        for name in nodes[k].outputs:
            if name in known:
                continue
            known.add(name)
            for r in readers.pop(name, ()):  # known from node k in pass p: this pass for nodes after k
                earliest[r] = max(earliest[r], p if r > k else p + 1)
                waiting[r] -= 1
                if not waiting[r]:
                    heapq.heappush(queue, (earliest[r], r))
    if len(ordered) < len(nodes):
        rest = [n for k, n in enumerate(nodes) if waiting[k]]
        missing = sorted({i for n in rest for i in n.inputs + n.captures if i not in known})[:5]
        raise ModelParseError(f"graph has a cycle or undefined tensors: {missing}")
    return ordered
