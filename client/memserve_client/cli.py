"""`memserve`: the command line over `Client`."""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from . import plan_view
from .client import Client, MemserveError, Model, TensorSpec

PROGRESS_FROM = 8 << 20  # show an upload progress bar for models at least this large
DEFAULT_TARGET = "127.0.0.1:50051"
NO_DAEMON_FOR_PLAN = ("memserve plan asks a running daemon (memserved) to plan the model; "
                      "start one with `make serve` or give --target")


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (0 used to become 1 without a word)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return n


def _ref(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _shape(spec: TensorSpec, batched: bool) -> str:
    """[N, <=64, 768]: N the batch, <=64 a dimension open up to 64."""
    top = spec.max_shape or spec.shape
    return "[" + ", ".join(str(d) if d != -1 else "N" if k == 0 and batched else f"<={m}"
                           for k, (d, m) in enumerate(zip(spec.shape, top))) + "]"


def _print_model(m: Model) -> None:
    print(f"id:          {m.id}")
    print(f"name:        {m.name}")
    print(f"workspace:   {m.workspace}")
    print(f"work size:   {m.work_size} bytes (lower bound {m.work_lower_bound})")
    print(f"weight size: {m.weight_size} bytes" + ("  (shared with a loaded model)" if m.weights_shared else ""))
    if m.max_batch:
        print(f"max batch:   {m.max_batch}")
    if len(m.workspaces) > 1:
        print(f"instances:   {len(m.workspaces)} ({', '.join(m.workspaces)})")
    if m.load_time_us:
        print(f"load time:   {m.load_time_us / 1000:.1f} ms")
    for kind, specs in (("input", m.inputs), ("output", m.outputs)):
        for s in specs:
            print(f"{kind + ':':<12} {s.name} {s.dtype.name} {_shape(s, m.max_batch > 0)}")


def _progress(path: str):
    if not isinstance(path, str) or os.path.getsize(path) < PROGRESS_FROM:
        return None, None
    try:
        from tqdm import tqdm  # optional: the client's `progress` extra
    except ImportError:
        return None, None  # the upload goes on without a bar

    bar = tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc="upload", file=sys.stderr)
    return (lambda sent, total: bar.update(sent - bar.n)), bar


def _input_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for item in items:
        name, _, dims = item.partition("=")
        shapes[name] = tuple(int(d) for d in dims.split(",") if d)
    return shapes


def _input_values(items: list[str]) -> dict[str, np.ndarray]:
    """NAME=V0,V1,...: integers (int64) or numbers (float64); the daemon takes them in the input's own type
    and shape when they hold the same numbers."""
    values = {}
    for item in items:
        name, _, text = item.partition("=")
        parts = [p for p in text.split(",") if p.strip()]
        try:
            values[name] = np.array([int(p) for p in parts], np.int64)
        except ValueError:
            try:
                values[name] = np.array([float(p) for p in parts], np.float64)
            except ValueError:
                raise ValueError(f"--input-value {item!r}: give NAME=V0,V1,... with numbers") from None
    return values


def cmd_load(c: Client, a) -> None:
    progress, bar = _progress(a.model)
    try:
        m = c.load(a.model, name=a.name, workspace=a.workspace, max_batch=a.max_batch,
                   input_shapes=_input_shapes(a.input_shape), input_values=_input_values(a.input_value),
                   instances=a.instances, replace=a.replace, batching=a.batching,
                   max_queue_delay_us=a.max_queue_delay, preferred_batch_sizes=tuple(a.preferred_batch),
                   progress=progress)
    finally:
        if bar:
            bar.close()
    _print_model(m)


def cmd_query_size(c: Client, a) -> None:
    s = c.query_size(a.model, max_batch=a.max_batch, input_shapes=_input_shapes(a.input_shape),
                     input_values=_input_values(a.input_value))
    print(f"work size:        {s.work_size}")
    print(f"work lower bound: {s.work_lower_bound}")
    print(f"weight size:      {s.weight_size}")


def _random_input(spec: TensorSpec, batch: int, rng: np.random.Generator) -> np.ndarray:
    top = spec.max_shape or spec.shape  # other open dimensions at their largest
    shape = tuple(d if d != -1 else batch if k == 0 else top[k] for k, d in enumerate(spec.shape))
    if spec.dtype.kind == "f":
        return rng.standard_normal(shape).astype(spec.dtype)
    if spec.dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 10, shape).astype(spec.dtype)


def cmd_infer(c: Client, a) -> None:
    ref = _ref(a.model)
    inputs = {}
    for item in a.input:
        name, _, path = item.partition("=")
        inputs[name] = np.load(path)
    if a.random:
        rng = np.random.default_rng(a.seed)
        for spec in c.describe(ref).inputs:
            inputs.setdefault(spec.name, _random_input(spec, a.batch, rng))
    if not inputs:
        raise SystemExit("memserve: give --random or --input NAME=FILE.npy")
    r = c.execute_with_stats(ref, inputs, timeout=a.timeout, priority=a.priority)
    np.set_printoptions(threshold=a.threshold, precision=6, suppress=True)
    for name, value in r.outputs.items():
        print(f"{name}: {value.dtype.name} {list(value.shape)}")
        print(value)
        if a.output_dir:
            os.makedirs(a.output_dir, exist_ok=True)
            np.save(os.path.join(a.output_dir, f"{name}.npy"), value)
    print(f"queued {r.queue_us} us, computed {r.compute_us} us", file=sys.stderr)


def cmd_plan(c: Client, a) -> None:
    """The daemon compiles and plans the model (QuerySize); nothing is loaded."""
    if a.png:
        plan_view.need_matplotlib()  # before the upload, not after
    try:
        info = c.plan(a.model, max_batch=a.max_batch, input_shapes=_input_shapes(a.input_shape),
                      input_values=_input_values(a.input_value))
    except MemserveError as err:
        if err.code.name == "UNAVAILABLE" and err.acl_code is None:  # no daemon answered (a daemon sets a code)
            raise ConnectionError(f"no daemon answers at {a.target_used}: {NO_DAEMON_FOR_PLAN} "
                                  f"({err.code.name}: {err.message})") from None
        raise
    # What it was planned for: a model with an open leading dimension plans --max-batch rows (1 if not given).
    shapes = ", ".join(a.input_shape)
    planned = f"planned for --max-batch {a.max_batch or 1}" + (f", --input-shape {shapes}" if shapes else "")
    print(f"{planned} (a model whose leading dimension is open runs that many rows at most)")
    print(plan_view.report(info, a.top))
    if a.png:
        plan_view.draw(info, a.png, f"{os.path.basename(a.model)}: {planned}")
        print(f"\nwrote {a.png}")


def cmd_unload(c: Client, a) -> None:
    print(f"unloaded {a.model}: {c.unload(_ref(a.model))} bytes freed")


def cmd_list(c: Client, a) -> None:
    models = c.list_models()
    print(f"{'ID':>4}  {'NAME':<24} {'WORKSPACE':<20} {'WORK':>12} {'WEIGHTS':>12}")
    for m in models:
        print(f"{m.id:>4}  {m.name:<24} {m.workspace:<20} {m.work_size:>12} {m.weight_size:>12}")


def cmd_describe(c: Client, a) -> None:
    _print_model(c.describe(_ref(a.model)))


def cmd_status(c: Client, a) -> None:
    s = c.device_status()
    print(f"device {s.device} ({s.kind}): {s.used} of {s.capacity} bytes used")
    if s.hardware_total:
        print(f"  hardware reports {s.hardware_free} of {s.hardware_total} bytes free")
    for kind, n in s.used_by_kind.items():
        print(f"  {kind:<10} {n:>14}")
    print("workspaces:")
    for w in s.workspaces:
        print(f"  {w.name:<24} {w.size:>12} bytes  models {list(w.model_ids)}  executions {w.executions}")
    print("weight blocks:")
    for b in s.weight_blocks:
        print(f"  {b.digest[:16]:<24} {b.size:>12} bytes  refs {b.refcount}  models {list(b.model_ids)}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memserve", description="Talk to a memserve daemon.")
    p.add_argument("--target", help=f"daemon address (default: $MEMSERVE_TARGET or {DEFAULT_TARGET})")
    p.add_argument("--token-file", help="file with the daemon's admin token (default: $MEMSERVE_TOKEN)")
    p.add_argument("--tls-ca", help="PEM roots to verify a TLS daemon (use --tls for the system's)")
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--tls-cert", help="PEM client certificate, for mutual TLS")
    p.add_argument("--tls-key", help="PEM key of --tls-cert")
    sub = p.add_subparsers(dest="command", required=True)

    def model_upload(sp):
        sp.add_argument("model", help="path to an ONNX file")
        sp.add_argument("--max-batch", type=_positive, help="largest batch the model will be asked to run "
                                                               "(when its leading dimension is open; default 1)")
        sp.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                        help="largest shape of an input whose dimensions the model leaves open: memory is "
                             "planned for it, requests may be smaller along the open dimensions")
        sp.add_argument("--input-value", action="append", default=[], metavar="NAME=V0,V1,...",
                        help="a value to plan with for an input that feeds shape parameters (a Reshape's shape, "
                             "a Range's limit, a Loop's trip count); requests still send the input")

    sp = sub.add_parser("load", help="upload and load a model")
    model_upload(sp)
    sp.add_argument("--name", help="name to serve it under (default model-<id>)")
    sp.add_argument("--workspace", default="private",
                    help="'private' (default), 'shared:<group>' (models of a group take turns in one workspace "
                         "sized to the largest) or 'auto' (private when it fits, else the group it grows least)")
    sp.add_argument("--instances", type=_positive, default=1,
                    help="private workspaces (and lanes) that run requests in parallel, sharing one weight copy")
    sp.add_argument("--replace", action="store_true",
                    help="take over --name from the model that has it, without failing its requests")
    sp.add_argument("--batching", action="store_true",
                    help="dynamic batching: merge queued requests into executions of up to --max-batch rows")
    sp.add_argument("--max-queue-delay", type=int, default=0, metavar="US",
                    help="with --batching: how long (microseconds) a request may wait for others to join it")
    sp.add_argument("--preferred-batch", type=_positive, action="append", default=[], metavar="N",
                    help="with --batching: a batch size to run as soon as it is reached (repeat for more)")
    sp.set_defaults(fn=cmd_load)
    sp = sub.add_parser("query-size", help="work and weight memory a model would need")
    model_upload(sp)
    sp.set_defaults(fn=cmd_query_size)
    sp = sub.add_parser("plan", help="show (and draw) a model's workspace plan, as the daemon plans it")
    model_upload(sp)
    sp.add_argument("--png", help="also draw the plan into this PNG file (needs matplotlib)")
    sp.add_argument("--top", type=int, default=10, help="how many of the largest tensors to list")
    sp.set_defaults(fn=cmd_plan)
    sp = sub.add_parser("infer", help="run a loaded model")
    sp.add_argument("model", help="model id or name")
    sp.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                    help="an input from a .npy file (numpy.save); repeat for each input")
    sp.add_argument("--random", action="store_true", help="random values for inputs not given")
    sp.add_argument("--batch", type=_positive, default=1, help="batch size of random inputs (default 1)")
    sp.add_argument("--seed", type=int, default=0, help="seed of --random's values (default 0)")
    sp.add_argument("--timeout", type=float, help="seconds the daemon may take, queueing included")
    sp.add_argument("--priority", type=int, default=0, choices=range(8), metavar="0-7",
                    help="0 (default, highest) to 7: queued requests of a higher priority run first")
    sp.add_argument("--output-dir", help="also save each output as NAME.npy here")
    sp.add_argument("--threshold", type=int, default=64, help="print at most this many values per output")
    sp.set_defaults(fn=cmd_infer)
    for name, fn, text in (("unload", cmd_unload, "unload a model"), ("describe", cmd_describe, "show a model")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("model", help="model id or name")
        sp.set_defaults(fn=fn)
    sub.add_parser("list", help="list loaded models").set_defaults(fn=cmd_list)
    sub.add_parser("status", help="device memory by kind, workspaces, weight blocks").set_defaults(fn=cmd_status)
    return p


def _security(a) -> dict:
    def read(path):
        with open(path, "rb") as fh:
            return fh.read()

    token = read(a.token_file).decode().strip() if a.token_file else os.environ.get("MEMSERVE_TOKEN")
    return dict(token=token or None, tls=a.tls, tls_ca=read(a.tls_ca) if a.tls_ca else None,
                tls_cert=read(a.tls_cert) if a.tls_cert else None, tls_key=read(a.tls_key) if a.tls_key else None)


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    a.target_used = a.target or os.environ.get("MEMSERVE_TARGET") or DEFAULT_TARGET
    try:
        with Client(a.target_used, **_security(a)) as c:
            a.fn(c, a)
    except BrokenPipeError:  # `memserve ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except MemserveError as err:
        print(f"memserve: error: {err}{_hint(err, a)}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:
        print(f"memserve: error: {err}", file=sys.stderr)
        return 1
    return 0


def _hint(err: MemserveError, a) -> str:
    """What to try, for the errors that come from how the CLI reached the daemon."""
    if err.code.name == "UNAVAILABLE" and err.acl_code is None:  # no daemon answered (a daemon sets a code)
        tls = "" if a.tls or a.tls_ca else ", or add --tls (or --tls-ca FILE) if it serves TLS"
        return (f"; no daemon answers at {a.target_used}: start one (`make serve`, or memserved) or give "
                f"--target HOST:PORT (or $MEMSERVE_TARGET){tls}")
    if err.code.name == "UNAUTHENTICATED":
        return "; give the daemon's admin token with --token-file FILE or $MEMSERVE_TOKEN"
    return ""


if __name__ == "__main__":
    sys.exit(main())
