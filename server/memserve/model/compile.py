"""compile(model bytes, options) -> Plan: the whole load-time pipeline.

1. Import: parse and check the ONNX graph (onnx_import).
2. Inputs: fix every open dimension, the leading one at the maximum batch.
3. Shapes and folding: run each op's shape function in topological order.
   A node whose inputs are all known is computed now: from weights alone it
   is folded into a new weight (FOLD); from tensor shapes of a batched model
   it becomes a small VALUE recomputed once per batch size (BIND), such as
   the Shape -> Gather -> Concat -> Reshape chains exporters emit. Only the
   rest runs per request (RUN). Nodes nothing needs are dropped. An If with
   a runtime condition becomes both branches, each step guarded by the
   condition, and a Select per output (kernels/control.py).
4. Storage: graph inputs arrive per request; weights (initializers,
   Constant nodes, folded results) go to the weight block; alias ops
   (Reshape, Flatten, Identity, ...) become views of their input's bytes;
   graph outputs are written straight into per-request I/O memory;
   everything else is work memory.
5. Lifetimes and offsets: each work tensor lives from the step that writes it
   to the last step that reads it or any alias of it; the greedy planner
   places them (planner.py).
6. Weights: laid out at aligned offsets and digested, so that a second load
   of the same weights can share the first copy.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import logging
from dataclasses import dataclass, field

import numpy as np

from .. import budget, limits
from ..device import align_up
from ..errors import InvalidArgument, MemserveError, ModelParseError, ResourceExhausted, UnsupportedModel
from ..kernels import INTERNAL_DOMAIN, NARROW_DTYPES, NARROW_OPS, Node, OpDef, TensorInfo, evaluate, lookup, node_error
from ..planner import Lifetime, plan_offsets
from . import loops
from .chains import chain_elementwise
from .fuse import fuse
from .onnx_import import Graph, import_onnx, scoped
from .plan import (BATCH, BIND, FIXED, INPUT, IO, RUN, VALUE, WEIGHT, WORK, IOSpec, OpenDim, Placement, Plan, Step,
                   TensorSlot, infer_all)

FOLD = "fold"
SMALL_CONSTANT = 64  # elements; weights this small keep their value for shape functions
BIND_LIMIT = 4096  # elements; a shape-derived value larger than this is computed per request
MAX_HOST_VALUES = 16 << 20  # bytes of plan-time values a loaded model may keep on the host


@dataclass(frozen=True)
class CompileOptions:
    max_batch: int = 0  # 0: 1 when the model leaves its batch dimension open
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    input_values: dict[str, np.ndarray] = field(default_factory=dict)  # to plan with (Plan.key_of)
    leading_batch: bool = True  # False: an open leading dimension is one like any other (a Loop's body)
    fuse: bool = True  # False: no fused kernels (a device without the cpu's compiled kernels)


def _copy_infer(node: Node, ins: list[TensorInfo | None]) -> list[TensorInfo]:
    return [TensorInfo(ins[0].dtype, ins[0].shape)]


def _copy_build(node, ins, outs):
    def run(i, o):
        np.copyto(o[0], i[0])

    return run


# Internal: a graph output that is an input, a weight, a value, or a second
# name for another output's bytes needs its own copy in I/O memory.
COPY = OpDef("Copy", _copy_infer, _copy_build)


log = logging.getLogger("memserve.compile")


def compile_model(data: bytes, options: CompileOptions = CompileOptions()) -> Plan:
    """Model bytes come from a client: whatever they make the compiler raise is a clear status."""
    with _model_errors("the model"):
        return build_plan(import_onnx(data), options)


@contextlib.contextmanager
def _model_errors(what: str):
    """Turn a failure on untrusted model content into INVALID_ARGUMENT (or RESOURCE_EXHAUSTED) naming
    `what`; the traceback goes to the log, since it may also be a compiler bug."""
    try:
        yield
    except MemserveError:
        raise
    except MemoryError:
        raise ResourceExhausted(f"{what} needs more host memory than there is") from None
    except RecursionError:
        raise ModelParseError(f"{what} nests too deeply to compile") from None
    except Exception as exc:  # noqa: BLE001 - any other failure: the model's content is not valid
        log.warning("compiling %s failed", what, exc_info=True)
        raise ModelParseError(f"{what} cannot be compiled: {type(exc).__name__}: {exc}") from None


def build_plan(graph: Graph, options: CompileOptions) -> Plan:
    inputs, max_batch, dims = _resolve_inputs(graph, options)
    values = _planning_values(inputs, options.input_values)
    walk = _Walk(graph, inputs, batched=max_batch > 0 or bool(dims) or bool(values), values=values,
                 fuse=options.fuse)
    if options.fuse:
        fuse(walk, graph.outputs)
        chain_elementwise(walk, graph.outputs)
    b = _Builder(walk)
    input_specs = [IOSpec(name, dtype, tuple(d if k == FIXED else -1 for d, k in zip(shape, symbols)),
                          b.add(name, TensorInfo(dtype, shape, values.get(name)), INPUT), shape, symbols,
                          param=name in values)
                   for name, dtype, shape, symbols in inputs]
    needed = walk.needed(graph.outputs)
    b.on_device = set(graph.outputs).union(*(node.inputs + [c for c, _ in node.guard]
                                             for node, _, phase in walk.nodes if phase == RUN))
    for node, op, phase in walk.nodes:
        if phase != FOLD and any(o in needed for o in node.outputs):
            b.add_step(node, op, phase)
    _check_sized(walk, graph.outputs)
    guards = sum(len(step.guard) for step in b.steps)
    if guards > limits.MAX_GUARD_TERMS:
        raise UnsupportedModel(f"the model's runtime If branches nest into {guards} step conditions; memserve "
                               f"plans at most {limits.MAX_GUARD_TERMS} (a shallower tree of Ifs, or conditions "
                               "known at load, which inline)")
    outputs = [b.claim_output(name) for name in graph.outputs]
    b.share_dying_inputs()
    work = b.plan_work()
    weight_size, digest = b.layout_weights()
    staged = {i: walk.consts[b.slots[i].name] for i in b.weight_roots()}
    b.drop_unneeded_values()
    plan = Plan(
        tensors=b.slots, steps=b.steps, inputs=input_specs, outputs=[], max_batch=max_batch,
        work_size=work.size, work_lower_bound=work.lower_bound, peak_step=work.peak_step,
        weight_size=weight_size, weight_digest=digest, weight_slots=b.weight_roots(), staged_weights=staged,
        placements=b.placements, dims=dims,
        param_values=[tuple(values[s.name].reshape(-1).tolist()) for s in input_specs if s.param],
    )
    plan.outputs = _output_specs(plan, outputs)
    return plan


InputShape = tuple[str, np.dtype, tuple[int, ...], tuple[int, ...]]  # name, dtype, at the maxima, symbols


def _resolve_inputs(graph: Graph, options: CompileOptions) -> tuple[list[InputShape], int, list[OpenDim]]:
    """Every input dimension the model leaves open gets its largest size: a free leading one is the batch
    (max_batch, or input_shapes' first entry); any other takes its size from input_shapes as its maximum.
    Open dimensions the model names alike (dim_param "seq" on ids and mask) are one dimension."""
    unknown = sorted(set(options.input_shapes) - {i.name for i in graph.inputs})
    if unknown:
        raise InvalidArgument(f"input_shapes names {[n[:64] for n in unknown[:8]]}, which are not inputs of the "
                              f"model ({[i.name for i in graph.inputs][:32]})")
    batched = options.leading_batch and any(i.dims and i.dims[0] is None for i in graph.inputs)
    given = {i.name: options.input_shapes[i.name][0] for i in graph.inputs
             if batched and i.dims and i.dims[0] is None and options.input_shapes.get(i.name)}
    if len(set(given.values())) > 1:
        raise InvalidArgument(f"input_shapes give different batch sizes: {given}")
    max_batch = next(iter(given.values()), options.max_batch or 1) if batched else 0
    if max_batch < 0 or (batched and max_batch == 0):
        raise InvalidArgument(f"max batch must be positive, got {max_batch}")
    for inp in graph.inputs:
        if len(inp.dims) > limits.MAX_RANK:
            raise UnsupportedModel(f"input {inp.name!r} has rank {len(inp.dims)}; memserve accepts at most "
                                   f"{limits.MAX_RANK} dimensions")
        shape = options.input_shapes.get(inp.name, ())
        if shape and len(shape) != len(inp.dims):
            raise InvalidArgument(f"input {inp.name!r} has rank {len(inp.dims)}; input_shapes gives {list(shape)}")
    names: dict[str, int] = {}  # an open dimension's name -> its symbol
    maxima: dict[int, tuple[int, str]] = {}  # symbol -> (largest size, who gave it)
    specs = []
    for inp in graph.inputs:
        shape = list(options.input_shapes.get(inp.name, ()))
        dims, symbols = [], []
        for k, d in enumerate(inp.dims):
            if k == 0 and d is None and batched:
                dims.append(max_batch)
                symbols.append(BATCH)
                continue
            if d is not None:
                if shape and shape[k] != d:
                    raise InvalidArgument(f"input {inp.name!r} dimension {k} is fixed at {d} by the model; "
                                          f"input_shapes gives {shape[k]}")
                dims.append(d)
                symbols.append(FIXED)
                continue
            name = _dim_name(inp.dim_names[k]) or f"{inp.name}[{k}]"
            symbol = names.setdefault(name, len(names) + 1)
            symbols.append(symbol)
            if shape and shape[k] > 0:
                seen = maxima.setdefault(symbol, (shape[k], inp.name))
                if seen[0] != shape[k]:
                    raise InvalidArgument(f"input_shapes give dimension {name!r} two maxima: {seen[0]} "
                                          f"({seen[1]!r}) and {shape[k]} ({inp.name!r})")
            dims.append(-symbol)  # filled in below, once every input has had its say
        specs.append((inp, dims, symbols))
    open_dims = []
    for name, symbol in names.items():
        if symbol not in maxima:
            inp, k = next((i, k) for i, dims, syms in specs for k, s in enumerate(syms) if s == symbol)
            raise InvalidArgument(f"input {inp.name!r} dimension {k} ({name!r}) is left open by the model; "
                                  f"give its largest size with input_shapes")
        open_dims.append(OpenDim(name, maxima[symbol][0]))
    resolved = [(inp.name, inp.dtype, tuple(open_dims[-d - 1].max if d < 0 else d for d in dims), tuple(syms))
                for inp, dims, syms in specs]
    return resolved, max_batch, open_dims


def _check_sized(walk, outputs: list[str]) -> None:
    """A data-dependent output is returned at its actual size, so it must be a graph output (once) that no
    node reads: nothing downstream could know its shape when the model loads."""
    readers = {n for node, _, phase in walk.nodes if phase != FOLD for n in node.inputs}
    for node, op, phase in walk.nodes:
        if phase == RUN and op.sized:
            for name in node.outputs:
                if name and (name in readers or outputs.count(name) != 1):
                    raise UnsupportedModel(
                        f"node {node.name!r} ({node.op_type}): its output {name!r} has a size that depends on the "
                        "data; memserve returns such a tensor only as a graph output that no other node reads")


def _planning_values(inputs: list[InputShape], given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """input_values, checked against their inputs: a value of the input's type and (fixed) shape."""
    specs = {name: (dtype, shape, symbols) for name, dtype, shape, symbols in inputs}
    unknown = sorted(set(given) - set(specs))
    if unknown:
        raise InvalidArgument(f"input_values names {[n[:64] for n in unknown[:8]]}, which are not inputs of the "
                              f"model ({sorted(specs)[:32]})")
    values = {}
    for name, value in given.items():
        dtype, shape, symbols = specs[name]
        value = np.asarray(value)
        if any(s != FIXED for s in symbols):
            raise InvalidArgument(f"input_values[{name!r}]: input {name!r} has open dimensions; a value to plan "
                                  "with needs an input of fixed shape")
        values[name] = _as_input(name, value, dtype, shape)
    return values


def _as_input(name: str, value: np.ndarray, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A value to plan with, in the input's type and shape: any shape of as many elements, any type that
    holds the same numbers (3 for an int32 input, [4] for a scalar), so clients need not know either."""
    if value.dtype == dtype and value.shape == shape:
        return value
    if dtype.kind in "iu" and value.dtype.kind in "iuf" and value.size:
        info = np.iinfo(dtype)  # out of the type's range: refused, not wrapped (2^64 - 1 is not -1)
        if value.min() < info.min or value.max() > info.max:
            raise InvalidArgument(f"input_values[{name!r}] holds {value.max() if value.max() > info.max else value.min()}"
                                  f", which {dtype} cannot hold")
    numbers = value.dtype.kind in "iuf" and dtype.kind in "iuf" or value.dtype.kind == dtype.kind == "b"
    if value.size == math.prod(shape) and numbers:
        with np.errstate(all="ignore"):
            cast = value.astype(dtype).reshape(shape)
        floats = value.dtype.kind == dtype.kind == "f"  # a float to a float rounds, as the user means
        if floats or np.array_equal(cast.reshape(-1).astype(value.dtype), value.reshape(-1)):
            return cast
    raise InvalidArgument(f"input_values[{name!r}] must be {dtype} {list(shape)} like the input, got "
                          f"{value.dtype} {list(value.shape)}")


def _dim_name(param: str) -> str:
    """A dim_param that names a dimension ("seq"), or "" for the placeholders exporters write for an
    unnamed one ("?" from Paddle, "unk__12" from tf2onnx), which must not tie dimensions together."""
    return param if param.isidentifier() and not param.startswith("unk__") else ""


def _output_specs(plan: Plan, slots: list[int]) -> list[IOSpec]:
    """Outputs' shapes, with -1 on the dimensions that follow an open input dimension: a probe past each
    maximum (or below it, where the model cannot go past) shows which."""
    at_max = [plan.tensors[i].info for i in slots]
    symbols = [[FIXED] * len(info.shape) for info in at_max]
    top = plan.max_key()
    for s in range(1 + len(plan.dims)):  # the batch and the open dimensions (parameter values follow them)
        if top[s] == 0:
            continue
        for size in (top[s] + 1, top[s] - 1):
            if size < 1:
                continue
            try:
                probe = infer_all(plan, plan.input_infos(top[:s] + (size,) + top[s + 1:]))
            except Exception:  # noqa: BLE001 - the model's arithmetic cannot take this size: try the other
                continue
            for k, i in enumerate(slots):
                for d, (a, b) in enumerate(zip(at_max[k].shape, probe[i].shape)):
                    if a != b and symbols[k][d] == FIXED:
                        symbols[k][d] = s
            break
    return [IOSpec(plan.tensors[i].name, info.dtype, tuple(-1 if k != FIXED else d for d, k in zip(info.shape, syms)),
                   i, info.shape, tuple(syms))
            for i, info, syms in zip(slots, at_max, symbols)]


def _narrow_check(node: Node, op: OpDef, infos: list[TensorInfo | None]) -> None:
    """Narrow types (bfloat16, float8, int4, ...) are stored, moved and cast, never computed with."""
    if op.op_type in NARROW_OPS:
        return
    for info in infos:
        if info is not None and info.dtype in NARROW_DTYPES:
            raise UnsupportedModel(f"node {node.name!r} ({node.op_type}) computes with {info.dtype}, which memserve "
                                   "only stores, moves and casts; Cast it to float32 (or another wide type) first")


class _Walk:
    """Step 3: every tensor's info, and each node's phase (FOLD, BIND or RUN)."""

    def __init__(self, graph: Graph, inputs: list[InputShape], batched: bool,
                 values: dict[str, np.ndarray] | None = None, fuse: bool = True):
        self.fuse = fuse  # what a Loop's body is planned with, as its model
        self.consts: dict[str, np.ndarray] = dict(graph.weights)
        self.infos: dict[str, TensorInfo] = {n: TensorInfo(v.dtype, v.shape, v) for n, v in self.consts.items()}
        values = values or {}
        self.infos.update({name: TensorInfo(dtype, shape, values.get(name)) for name, dtype, shape, _ in inputs})
        # Known values that depend on the request (its sizes, or the values of inputs planned with input_values).
        self.dynamic: set[str] = set(values)
        # Tensors whose shape may change with the request: inputs with open dimensions, and what is computed
        # from them or from dynamic values. Shape and Size of anything else are constants.
        self.varying: set[str] = {name for name, _, _, symbols in inputs if any(s != FIXED for s in symbols)}
        self.nodes: list[tuple[Node, OpDef, str]] = []
        self.batched = batched
        for node in graph.nodes:
            self._add(node)

    def _add(self, node: Node) -> None:
        budget.checkpoint()  # stop when the caller left or its deadline passed
        if node.op_type == "If" and node.domain in ("", "ai.onnx"):
            return self._inline(node)
        if node.op_type in ("Loop", "Scan") and node.domain in ("", "ai.onnx"):
            with _model_errors(f"node {node.name!r} ({node.op_type})"):
                node = loops.expand(self, node)
        op = lookup(node.domain, node.op_type)
        with _model_errors(f"node {node.name!r} ({node.op_type})"):
            phase = self._visit(node, op, self.batched)
        self.nodes.append((node, op, phase))

    def _inline(self, node: Node) -> None:
        """An If whose condition is known at load becomes its chosen branch; one whose condition comes with
        the request becomes both branches, each step guarded by the condition, and a Select per output."""
        cond = node.inputs[0]
        info = self.infos[cond]
        if info.dtype != np.dtype(bool) or math.prod(info.shape) != 1:
            raise node_error(node, f"its condition must be one bool, got {info.dtype} of shape {list(info.shape)}")
        known = info.value is not None and cond not in self.dynamic
        picked = bool(np.asarray(self.infos[cond].value).reshape(-1)[0]) if known else None
        branches = {name: scoped(node.attrs[name], f"{node.name}/{name}/") for name in ("then_branch", "else_branch")}
        for name, want in (("then_branch", True), ("else_branch", False)):
            if picked is not None and picked != want:
                continue
            branch = branches[name]
            for weight, value in branch.weights.items():
                self.consts[weight] = value
                self.infos[weight] = TensorInfo(value.dtype, value.shape, value)
            guard = node.guard + (((cond, want),) if picked is None else ())
            for sub in branch.nodes:
                self._add(dataclasses.replace(sub, guard=guard + sub.guard))
        for k, out in enumerate(node.outputs):
            then, other = (b.outputs[k] for b in branches.values())
            if picked is not None:
                self._add(Node("Identity", f"{node.name}/{out}", [then if picked else other], [out],
                               opset=node.opset, guard=node.guard))
            else:
                self._add(Node("Select", f"{node.name}/{out}", [cond, then, other], [out], domain=INTERNAL_DOMAIN,
                               guard=node.guard))

    def _visit(self, node: Node, op: OpDef, batched: bool) -> str:
        ins = [self.infos[n] if n else None for n in node.inputs]
        _narrow_check(node, op, ins)
        for k in op.const_inputs:
            if k < len(ins) and ins[k] is not None and ins[k].value is None and k not in op.value_inputs:
                raise UnsupportedModel(
                    f"node {node.name!r} ({node.op_type}): input {node.inputs[k]!r} must be known when the "
                    "model loads (an initializer, or computed from weights and shapes); when it comes from "
                    "a graph input, give that input a value to plan with in input_values (--input-value)")
        outs = op.infer(node, ins)
        _narrow_check(node, op, outs)
        if any(n in self.varying or (n in self.dynamic and not op.shape_only) for n in node.inputs if n):
            self.varying.update(node.outputs)
        inputs_known = all(i is None or i.value is not None for i in ins)
        if not op.subplan and (inputs_known or all(o.value is not None for o in outs)):
            values = evaluate(op, node, ins, outs)
            if op.sized:  # known now: the actual shapes, not the largest
                outs = [TensorInfo(o.dtype, v.shape) for o, v in zip(outs, values)]
            # Known from shapes alone (Shape, Size): dynamic when a shape may change with the request.
            if op.shape_only:
                dynamic = any(n in self.varying for n in node.inputs if n)
            else:
                dynamic = any(n in self.dynamic or (not inputs_known and n in self.varying) for n in node.inputs if n)
            if not dynamic:
                self._set(node, outs, values)
                self.consts.update(zip(node.outputs, values))
                return FOLD
            if all(v.size <= BIND_LIMIT for v in values):
                self._set(node, outs, values)
                self.dynamic.update(node.outputs)
                return BIND
        self._set(node, [TensorInfo(o.dtype, o.shape) for o in outs], None)
        return RUN

    def _set(self, node: Node, outs: list[TensorInfo], values: list[np.ndarray] | None) -> None:
        for info in outs:  # bounds every size the plan adds up, so no sum can overflow a response field
            limits.check_shape(f"node {node.name!r} ({node.op_type}) output", info.shape)
        for k, (name, info) in enumerate(zip(node.outputs, outs)):
            if name:
                value = values[k] if values is not None else None
                self.infos[name] = TensorInfo(info.dtype, tuple(info.shape), value)

    def needed(self, outputs: list[str]) -> set[str]:
        """Names the outputs depend on through BIND and RUN nodes (folded inputs are not needed)."""
        needed = set(outputs)
        for node, _, phase in reversed(self.nodes):
            if phase != FOLD and any(o in needed for o in node.outputs):
                needed.update(n for n in node.inputs if n)
                needed.update(c for c, _ in node.guard)
        return needed


class _Builder:
    """Steps 4-6: slots with storage, steps, offsets, weight layout."""

    def __init__(self, walk: _Walk) -> None:
        self.walk = walk
        self.slots: list[TensorSlot] = []
        self.steps: list[Step] = []
        self.index: dict[str, int] = {}
        self.claimed: set[int] = set()
        self.on_device: set[str] = set()  # constants RUN steps or outputs read; the rest stay host VALUEs
        self.members: dict[int, list[int]] = {}  # root -> the slots whose root it is (itself and its aliases)

    def add(self, name: str, info: TensorInfo, storage: str, root: int | None = None) -> int:
        i = len(self.slots)
        self.slots.append(TensorSlot(name, info, storage, i if root is None else root))
        self.members.setdefault(i if root is None else root, []).append(i)
        self.index[name] = i
        return i

    def slot_of(self, name: str) -> int:
        """A known tensor's slot; constants get theirs on first use."""
        if name not in self.index:
            if name not in self.walk.consts:
                raise InvalidArgument(f"tensor {name!r} is used but never produced")
            self.add(name, self.walk.infos[name], WEIGHT if name in self.on_device else VALUE)
        return self.index[name]

    def add_step(self, node: Node, op: OpDef, phase: str) -> None:
        with _model_errors(f"node {node.name!r} ({node.op_type})"):
            self._add_step(node, op, phase)

    def _add_step(self, node: Node, op: OpDef, phase: str) -> None:
        ins = [self.slot_of(n) if n else -1 for n in node.inputs]
        infos = [self.slots[i].info if i >= 0 else None for i in ins]
        step = Step(node, op, ins, [], phase=phase, guard=[(self.slot_of(c), want) for c, want in node.guard])
        for name in node.outputs:
            info = self.walk.infos.get(name) if name else None
            if info is None:  # an optional output the model does not use
                name, info = f"{node.name}:unused{len(step.outputs)}", op.infer(node, infos)[len(step.outputs)]
            if phase == BIND:
                step.outputs.append(self.add(name, info, VALUE))
            elif op.alias:
                root = self.slots[ins[0]].root
                step.outputs.append(self.add(name, info, self.slots[root].storage, root))
            else:
                step.outputs.append(self.add(name, info, WORK))
        if op.scratch and phase == RUN:
            outs = [self.slots[i].info for i in step.outputs]
            for k, info in enumerate(op.scratch(node, infos, outs)):
                step.scratch.append(self.add(f"{node.name}:scratch{k}", info, WORK))
        self.steps.append(step)

    def claim_output(self, name: str) -> int:
        """Put an output's bytes in I/O memory; copy when they cannot be its own."""
        i = self.slot_of(name)
        root = self.slots[i].root
        if self.slots[root].storage == WORK and root not in self.claimed:
            self.claimed.add(root)
            for m in self.members[root]:
                self.slots[m].storage = IO
            return i
        info = self.slots[i].info
        out = self.add(name, TensorInfo(info.dtype, info.shape), IO)
        self.steps.append(Step(Node("Copy", f"{name}:copy", [name], [name]), COPY, [i], [out]))
        self.claimed.add(out)
        return out

    def share_dying_inputs(self) -> None:
        """Elementwise steps write over an input that dies there (same shape and dtype): no new bytes."""
        run = [s for s in self.steps if s.phase == RUN]
        last: dict[int, int] = {}
        for k, step in enumerate(run):
            for i in step.reads():
                last[self.slots[i].root] = k
        for k, step in enumerate(run):
            out = step.outputs[0] if step.outputs else -1
            if not step.op.inplace or self.slots[out].storage != WORK or self.slots[out].root != out:
                continue
            for j in step.op.inplace:
                src = step.inputs[j] if j < len(step.inputs) else -1
                root = self.slots[src].root if src >= 0 else -1
                if (root < 0 or self.slots[root].storage != WORK or last.get(root) != k
                        or self.slots[src].info.shape != self.slots[out].info.shape
                        or self.slots[src].info.dtype != self.slots[out].info.dtype):
                    continue
                moved = self.members.pop(out)  # the output, and any view of it, now live in the input's bytes
                for m in moved:
                    self.slots[m].root = root
                self.members[root].extend(moved)
                last[root] = last.get(out, k)
                break

    def plan_work(self):
        work = [i for i, s in enumerate(self.slots) if s.storage == WORK and s.root == i]
        first = dict.fromkeys(work, len(self.steps))
        last = dict.fromkeys(work, -1)
        run_steps = [s for s in self.steps if s.phase == RUN]
        for k, step in enumerate(run_steps):
            for i in step.outputs + step.scratch:
                root = self.slots[i].root
                if root in first:
                    first[root] = min(first[root], k)
                    last[root] = max(last[root], k)
            for i in step.reads():
                if self.slots[i].root in last:
                    last[self.slots[i].root] = max(last[self.slots[i].root], k)
        mem = plan_offsets([Lifetime(self.slots[i].info.nbytes, first[i], last[i]) for i in work])
        for i, off in zip(work, mem.offsets):
            self.slots[i].offset = off
        self.placements = [Placement(self.slots[i].name, self.slots[i].offset, self.slots[i].info.nbytes,
                                     first[i], last[i]) for i in work]
        return mem

    def weight_roots(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s.storage == WEIGHT and s.root == i]

    def layout_weights(self) -> tuple[int, str]:
        """Aligned offsets for every weight, and a digest of layout plus content."""
        digest = hashlib.sha256()
        offset = 0
        for i in self.weight_roots():
            slot = self.slots[i]
            slot.offset = offset
            value = np.ascontiguousarray(self.walk.consts[slot.name])
            digest.update(f"{offset}:{value.dtype.str}:{value.shape};".encode())
            digest.update(value.reshape(-1).view(np.uint8).data if value.size else b"")  # ml_dtypes: no buffer
            offset = align_up(offset + value.nbytes)
        return offset, digest.hexdigest()

    def drop_unneeded_values(self) -> None:
        """Keep plan-time values only where shape functions and kernel builders read them."""
        keep = set()
        for step in self.steps:
            if step.phase == BIND:
                keep.update(step.inputs)
            else:
                keep.update(step.inputs[k] for k in step.op.const_inputs if k < len(step.inputs))
        for i, slot in enumerate(self.slots):
            v = slot.info.value
            if v is not None and slot.storage == WEIGHT and i not in keep and v.size > SMALL_CONSTANT:
                slot.info = TensorInfo(slot.info.dtype, slot.info.shape)
        # What stays is host memory for the model's life, outside the device's books: keep it small.
        held = sum(s.info.value.nbytes for s in self.slots if s.info.value is not None)
        if held > MAX_HOST_VALUES:
            big = max((s for s in self.slots if s.info.value is not None), key=lambda s: s.info.value.nbytes)
            raise UnsupportedModel(
                f"the model keeps {held} bytes of constants on the host to recompute shapes per batch size "
                f"(the largest, {big.name!r}, {big.info.value.nbytes} bytes); memserve keeps at most "
                f"{MAX_HOST_VALUES}: fix the batch size (max_batch, input_shapes) or export without that constant")
