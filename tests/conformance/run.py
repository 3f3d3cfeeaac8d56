"""ONNX backend node tests through memserve's compile and execute.

    python -m tests.conformance.run [--filter SUBSTRING] [--markdown FILE] [--target HOST:PORT] [-v]

Each case of `onnx.backend.test.loader.load_model_tests(kind="node")` whose
ops memserve implements is loaded, run on the case's inputs, and compared
with its expected outputs at the case's tolerances. Two modes:

- frozen (the default): in an in-process registry (the daemon's own load
  and execute path), with the inputs that the model uses as plan-time
  parameters (a Reshape's shape, a Slice's starts, ...) frozen into
  initializers with the case's values, as a user serving such a model
  exports them as constants;
- public (`--target`): through a running daemon's gRPC API with the
  memserve client (load, execute, unload), every input of the case a graph
  input, as the test wrote it; inputs that feed shape parameters are given
  to the load as `input_values` to plan with, and sent with the request.
"""
from __future__ import annotations

import argparse
import collections
import re
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from memserve.device import CpuDevice
from memserve.errors import UnsupportedModel
from memserve.kernels import lookup
from memserve.limits import MAX_VALUE_ELEMENTS
from memserve.kernels.control import CONTROL_FLOW
from memserve.registry import LoadOptions, Registry

# Cases that fail for a known reason (one line each). Keep this list short.
KNOWN_FAILURES: dict[str, str] = {}


@dataclass
class Result:
    name: str
    ops: list[str]
    status: str  # passed, failed, unsupported
    reason: str = ""


def load_cases():
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model_tests(kind="node")


def case_ops(model: onnx.ModelProto) -> list[str]:
    return sorted({(f"{n.domain}." if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in model.graph.node})


def unsupported_reason(model: onnx.ModelProto) -> str:
    for n in model.graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            continue  # folded into a weight when the model loads (model/onnx_import.py)
        if lookup(n.domain, n.op_type) is None and n.op_type not in CONTROL_FLOW:
            return f"op {n.op_type} is not implemented"
    for v in list(model.graph.input) + list(model.graph.output):
        if not v.type.HasField("tensor_type"):
            return f"{v.name} is not a tensor (sequence, map or optional)"
    return ""


def parameter_inputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> set[str]:
    """Graph inputs that feed plan-time parameters (a Reshape's shape, a Loop's trip count, ...), directly or
    through the nodes that compute them."""
    wanted = set()
    for n in reversed(model.graph.node):
        if any(o in wanted for o in n.output):
            wanted.update(i for i in n.input if i)
        op = lookup(n.domain, n.op_type)
        for k in op.const_inputs if op else ():
            if k < len(n.input) and n.input[k]:
                wanted.add(n.input[k])
    # A large input reaches a parameter only through its shape (Shape, Size): it is data, not a parameter.
    return {name for name in wanted & set(feeds) if feeds[name].size <= MAX_VALUE_ELEMENTS}


def freeze_parameters(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Turn graph inputs that feed plan-time parameters into initializers."""
    frozen = parameter_inputs(model, feeds)
    if not frozen:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [v for v in m.graph.input if v.name not in frozen]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    m.graph.initializer.extend(numpy_helper.from_array(np.asarray(feeds[name]), name) for name in sorted(frozen))
    return m


def as_array(v) -> np.ndarray:
    return numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else np.asarray(v)


class Local:
    """The daemon's load and execute path, in process."""

    def __init__(self) -> None:
        self.reg = Registry(CpuDevice(4 << 30))

    def run(self, model: bytes, feeds: dict[str, np.ndarray], shapes: dict, values: dict) -> list[np.ndarray]:
        m = self.reg.load(model, LoadOptions(name="case", input_shapes=shapes, input_values=values))
        try:
            got = self.reg.execute(m.id, feeds).outputs
        finally:
            self.reg.unload(m.id)
        return [np.frombuffer(o.data, o.dtype).reshape(o.shape) for o in got]

    def close(self) -> None:
        self.reg.close()


class Remote:
    """A running daemon's public API, through the memserve client."""

    def __init__(self, target: str) -> None:
        from memserve_client import Client

        self.client = Client(target, timeout=120)

    def run(self, model: bytes, feeds: dict[str, np.ndarray], shapes: dict, values: dict) -> list[np.ndarray]:
        m = self.client.load(model, name="case", input_shapes=shapes, input_values=values)
        try:
            out = self.client.execute(m, feeds)
        finally:
            self.client.unload(m)
        return [out[spec.name] for spec in m.outputs]

    def close(self) -> None:
        self.client.close()


def _refused(exc: Exception) -> bool:
    """An UNSUPPORTED refusal: memserve's own exception in process, its reason over gRPC, or the client
    refusing to encode a type memserve does not compute with (bfloat16)."""
    return isinstance(exc, UnsupportedModel) or getattr(exc, "reason", "") == "UNSUPPORTED" or (
        isinstance(exc, ValueError) and str(exc).startswith("dtype ") and "is not supported" in str(exc))


def run_case(runner, case, freeze: bool = True, plan_values: bool = True) -> Result:
    ops = case_ops(case.model)
    reason = unsupported_reason(case.model)
    if reason:
        return Result(case.name, ops, "unsupported", reason)
    try:
        for inputs, expected in case.data_sets:
            names = [v.name for v in case.model.graph.input]
            feeds = {n: as_array(v) for n, v in zip(names, inputs)}
            model = freeze_parameters(case.model, feeds) if freeze else case.model
            live = {v.name for v in model.graph.input} - {i.name for i in model.graph.initializer}
            feeds = {k: v for k, v in feeds.items() if k in live}
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            # Public: parameter inputs stay inputs; the case's values are what the load plans with.
            values = {k: feeds[k] for k in parameter_inputs(model, feeds)} if plan_values and not freeze else {}
            got = runner.run(model.SerializeToString(), feeds, shapes, values)
            for out, want in zip(got, expected):
                want = as_array(want)
                if out.shape != want.shape or out.dtype != want.dtype:
                    raise AssertionError(f"got {out.dtype}{list(out.shape)}, want {want.dtype}{list(want.shape)}")
                np.testing.assert_allclose(out, want, rtol=case.rtol, atol=case.atol, equal_nan=True)
    except Exception as exc:  # noqa: BLE001 - every outcome of a case is recorded, none stops the run
        if _refused(exc):
            return Result(case.name, ops, "unsupported", getattr(exc, "message", str(exc)))
        msg = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        return Result(case.name, ops, "failed", re.sub(r"\s+", " ", msg)[:300])
    return Result(case.name, ops, "passed")


def run_all(name_filter: str = "", target: str | None = None, plan_values: bool = True) -> list[Result]:
    """Frozen in process, or public (no freezing) through the daemon at `target`; `plan_values`: the load
    gets the parameter inputs' values as input_values (without them, such a case is refused at load)."""
    runner = Remote(target) if target else Local()
    try:
        with np.errstate(all="ignore"):
            return [run_case(runner, c, freeze=target is None, plan_values=plan_values)
                    for c in load_cases() if name_filter in c.name]
    finally:
        runner.close()


def in_scope(r: Result) -> bool:
    """A case whose ops memserve implements (and whose inputs and outputs are tensors)."""
    return not (r.status == "unsupported" and (r.reason.startswith("op ") or "is not a tensor" in r.reason))


def summary(results: list[Result]) -> str:
    count = collections.Counter(r.status for r in results)
    scope = [r for r in results if in_scope(r)]
    return (f"node tests: {count['passed']} passed, {count['failed']} failed, "
            f"{count['unsupported']} unsupported of {len(results)}; "
            f"{sum(r.status == 'passed' for r in scope)} passed of the {len(scope)} whose ops memserve implements")


def per_op_table(results: list[Result]) -> list[tuple[str, int, int, int]]:
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in results:
        for op in r.ops:
            table[op][r.status] += 1
    return [(op, c["passed"], c["failed"], c["unsupported"]) for op, c in sorted(table.items())]


def markdown(results: list[Result], public: list[Result] | None = None, bare: list[Result] | None = None) -> str:
    lines = ["# ONNX backend node tests", "",
             "Made by `python -m tests.conformance.run --target HOST:PORT --markdown docs/conformance.md` against "
             f"`memserved --device-memory 4GiB` (onnx {onnx.__version__}); `tests/conformance/test_node_tests.py` "
             "runs both modes in CI.", "",
             "Frozen (in process; inputs that are plan-time parameters frozen into initializers):", "",
             "```", summary(results), "```", ""]
    if public is not None:
        lines += ["Public (through the daemon's gRPC API with the memserve client; every input of the case a",
                  "graph input sent with each request, as the test wrote it; inputs that feed shape parameters",
                  "also given to the load as `input_values`, the values it plans memory with):", "",
                  "```", summary(public), "```", ""]
    if bare is not None:
        lines += ["Public without `input_values` (a parameter that shapes a tensor, given only with the",
                  "request, is refused at load):", "", "```", summary(bare), "```", ""]
    if public is not None:
        refused = collections.Counter(re.sub(r"'[^']*'", "'...'", r.reason.split(";")[0])[:160]
                                      for r in public if r.status == "unsupported" and in_scope(r))
        lines += ["Why the public mode refuses cases whose ops memserve implements:", "",
                  "| reason | cases |", "|---|---|"]
        lines += [f"| {reason} | {n} |" for reason, n in refused.most_common()]
        lines.append("")
    lines += [
             "A case is unsupported when it uses an op memserve does not implement, or a feature of an",
             "implemented op that is refused at load with a clear error (reasons below). The last column",
             "counts the unsupported cases the op appears in, whatever made them unsupported.", "",
             "| op | passed | failed | in unsupported cases |", "|---|---|---|---|"]
    lines += [f"| {op} | {p} | {f} | {u} |" for op, p, f, u in per_op_table(results) if p or f]
    failed = [r for r in results if r.status == "failed"]
    if failed:
        lines += ["", "## Failures", ""] + [f"- `{r.name}`: {KNOWN_FAILURES.get(r.name, r.reason)}" for r in failed]
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for r in results:
        if r.status == "unsupported" and not r.reason.startswith("op "):
            groups[re.sub(r"'[^']*'", "'...'", r.reason.split(";")[0])].append(r.name)
    lines += ["", "## Refused features of implemented ops", "", "| reason | cases | e.g. |", "|---|---|---|"]
    for reason, names in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"| {reason} | {len(names)} | `{names[0]}` |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--filter", default="")
    ap.add_argument("--markdown")
    ap.add_argument("--target", help="a running memserved: the public mode, no input frozen")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    results = run_all(a.filter)
    public = run_all(a.filter, a.target) if a.target else None
    bare = run_all(a.filter, a.target, plan_values=False) if a.target else None
    if a.verbose:
        for r in results:
            if r.status != "unsupported" or not r.reason.startswith("op "):
                print(f"{r.status:<12} {r.name}: {r.reason}")
    print(f"{'op':<36} {'passed':>7} {'failed':>7} {'unsup':>7}")
    for op, p, f, u in per_op_table(results):
        if p or f:
            print(f"{op:<36} {p:>7} {f:>7} {u:>7}")
    print("frozen:", summary(results))
    if public is not None:
        print("public:", summary(public))
        print("public without input_values:", summary(bare))
    if a.markdown:
        with open(a.markdown, "w") as fh:
            fh.write(markdown(results, public, bare))


if __name__ == "__main__":
    sys.exit(main())
