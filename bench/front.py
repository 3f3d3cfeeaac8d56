"""The serving front: what a request costs between the wire and the model, per path, in one run.

    python bench/front.py [--seconds 3] [--quick] [--triton] [--no-perf-analyzer]

Paths: memserve's native API (memserve_client), memserve's Open Inference Protocol over gRPC
(tritonclient.grpc) and over REST (tritonclient.http, when the daemon has --http-port), two floors
that only echo the request (bench/echo_server.py: grpcio's sync server, as memserved uses;
bench/aio_echo_server.py: grpc.aio), and NVIDIA Triton 2.51 serving the same Relu from its python
backend (../shared/peers/triton, when set up: run its setup.sh once, or pass --triton).

Model: Relu, FP32, batch 1, at 64 B ([1, 16]) and 1 MiB ([1, 262144]); the echo servers echo.
Per path, with Python clients (one thread, client and channel per concurrent client):
p50/p99 at concurrency 1, requests/s at concurrency 8, server CPU per request at 8 (utime+stime
from /proc of the server process and its children, over the measured interval, divided by the
requests completed in it), and client CPU per call at 1 (this process's CPU, one client thread).
With Triton's C++ load generator perf_analyzer (tools/ensure_perf_analyzer.sh) for memserve and
Triton: p50 at 1 and infer/s at 8, unary and --streaming; and dynamic batching (delay 0) under 8
and 16 perf_analyzer clients: requests per execution from ModelStatistics. Ratios are against the
grpcio echo at the same size, and against Triton for the perf_analyzer rows. Clients and servers
share the machine's cores.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

PEERS = pathlib.Path(os.environ.get("MEMSERVE_PEERS", ROOT.parent / "shared" / "peers"))
TRITON_DIR = pathlib.Path(os.environ.get("TRITON_PEER_DIR", pathlib.Path.home() / ".cache/memserve-peers/triton"))
SIZES = {"64 B": 16, "1 MiB": 262144}  # elements of the [1, N] float32 input
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_MSG = 64 << 20


def relu_model(width: int | str = "D") -> bytes:
    from onnx import helper

    from models import F32, graph_model

    return graph_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F32, ["N", width])],
                       [("y", F32, ["N", width])])


def tiny_model() -> bytes:
    """Relu on [N, 16] float32 (bench/protocols.py's model; tests may import it from here)."""
    return relu_model(16)


# -- servers -----------------------------------------------------------------------------------

class Server:
    """A server subprocess; its output (stdout and stderr) is read until it says it listens, then drained."""

    def __init__(self, name: str, cmd: list[str], ready: Callable[[str], bool] | None = None, timeout: float = 120):
        self.name = name
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.lines: list[str] = []
        ready = ready or (lambda line: "listening on" in line)
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:
            self.lines.append(line)
            if ready(line) or time.monotonic() > deadline:
                break
        if self.proc.poll() is not None:
            raise RuntimeError(f"{name} did not start:\n{''.join(self.lines[-20:])}")
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    @property
    def target(self) -> str:
        line = next(x for x in self.lines if "listening on " in x)
        return line.split("listening on ")[1].split()[0]

    def cpu(self) -> float:
        return tree_cpu(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its live descendants (Triton's python backend
    runs the model in a child process)."""
    parents: dict[int, int] = {}
    stats: dict[int, list[str]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(d)], stats[int(d)] = int(fields[1]), fields
    tree, grew = {pid}, True
    while grew:
        more = {p for p, pp in parents.items() if pp in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(int(stats[p][11]) + int(stats[p][12]) for p in tree if p in stats) / CLK_TCK


def has_rest() -> bool:
    r = subprocess.run([sys.executable, "-m", "memserve", "--help"], capture_output=True, text=True, timeout=60)
    return "--http-port" in r.stdout


def http_target(lines: list[str]) -> str | None:
    """The REST address from the daemon's start-up lines (not its metrics address)."""
    for line in lines:
        for m in re.finditer(r"(\S*)\s+on\s+(?:http://)?(\d[\d.]*:\d+)", line):
            if re.search(r"http|rest|v2", m.group(1), re.I) and "metric" not in m.group(1).lower():
                return m.group(2)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def triton_ready() -> bool:
    return (TRITON_DIR / "venv" / "bin" / "python").exists() and \
        (TRITON_DIR / "backends" / "python" / "triton_python_backend_stub").exists()


def start_triton() -> tuple[Server, str, str]:
    import tritonclient.grpc as tc

    g, h, m = free_port(), free_port(), free_port()
    server = Server("triton", ["bash", str(PEERS / "triton" / "run.sh"), str(PEERS / "triton" / "repo"),
                               str(g), str(h), str(m)],
                    ready=lambda line: "Started Metrics Service" in line or "error" in line.lower())
    target = f"127.0.0.1:{g}"
    client = tc.InferenceServerClient(target)
    deadline = time.monotonic() + 120
    while True:
        try:
            if client.is_model_ready("relu"):
                break
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if server.proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("Triton did not get ready:\n" + "".join(server.lines[-20:]))
        time.sleep(0.2)
    return server, target, f"127.0.0.1:{h}"


# -- Python clients ----------------------------------------------------------------------------

@dataclass
class Measured:
    p50: float = float("nan")       # us, concurrency 1
    p99: float = float("nan")       # us, concurrency 1
    rps: float = float("nan")       # requests/s, concurrency 8
    server_cpu: float = float("nan")  # us of server CPU per request, concurrency 8
    client_cpu: float = float("nan")  # us of this process's CPU per call, concurrency 1


def drive(make_call: Callable[[], Callable[[], object]], concurrency: int, seconds: float, warmup: int,
          server_cpu: Callable[[], float]) -> tuple[np.ndarray, float, float, float]:
    """`concurrency` threads, each with its own call from make_call(), call for `seconds` after a
    warm-up; returns (latencies us, calls/s, server CPU us per call, this process's CPU us per call)."""
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    go = threading.Barrier(concurrency + 1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            call = make_call()
            for _ in range(warmup):
                call()
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)
            go.abort()
            return
        try:
            go.wait()
        except threading.BrokenBarrierError:
            return
        out = lat[k]
        while not stop.is_set():
            t = time.perf_counter()
            call()
            out.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    try:
        go.wait()
    except threading.BrokenBarrierError:
        for t in threads:
            t.join()
        raise errors[0] from None
    t0, s0, c0 = time.perf_counter(), server_cpu(), time.process_time()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    t1, s1, c1 = time.perf_counter(), server_cpu(), time.process_time()
    if errors:
        raise errors[0]
    all_lat = np.concatenate([np.asarray(x) for x in lat]) * 1e6
    n = max(len(all_lat), 1)
    return all_lat, len(all_lat) / (t1 - t0), (s1 - s0) / n * 1e6, (c1 - c0) / n * 1e6


def measure(make_call, seconds: float, warmup: int, server_cpu) -> Measured:
    lat, _, _, ccpu = drive(make_call, 1, seconds, warmup, server_cpu)
    _, rps, scpu, _ = drive(make_call, 8, seconds, warmup, server_cpu)
    return Measured(float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), rps, scpu, ccpu)


def echo_call(target: str, x: np.ndarray):
    """The floor: a prebuilt memserve.v1 Execute message, its answer not decoded."""
    import grpc

    from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
    from memserve_api.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc
    from memserve_api.tensors import to_proto

    def make():
        channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", MAX_MSG),
                                                         ("grpc.max_send_message_length", MAX_MSG)])
        stub = pb_grpc.MemserveStub(channel)
        req = pb.ExecuteRequest(model=pb.ModelRef(name="relu"), inputs=[to_proto("x", x)])
        return lambda: stub.Execute(req)
    return make


def native_call(target: str, model: str, x: np.ndarray):
    from memserve_client import Client

    def make():
        c = Client(target)
        return lambda: c.execute(model, {"x": x})["y"]
    return make


def v2_grpc_call(target: str, model: str, x: np.ndarray):
    """As a tritonclient user writes it: inputs built and outputs decoded on every call."""
    import tritonclient.grpc as tc

    def make():
        c = tc.InferenceServerClient(target)

        def call():
            inp = tc.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            return c.infer(model, [inp]).as_numpy("y")
        return call
    return make


def v2_http_call(target: str, model: str, x: np.ndarray):
    import tritonclient.http as th

    def make():
        c = th.InferenceServerClient(target)
        out = [th.InferRequestedOutput("y", binary_data=True)]

        def call():
            inp = th.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            return c.infer(model, [inp], outputs=out).as_numpy("y")
        return call
    return make


# -- perf_analyzer -----------------------------------------------------------------------------

@dataclass
class PA:
    p50: float = float("nan")        # us at concurrency 1
    ips1: float = float("nan")       # infer/s at 1
    ips8: float = float("nan")       # infer/s at 8
    p50_8: float = float("nan")      # us at 8
    server_cpu: float = float("nan")  # us of server CPU per request at 8
    error: str = ""


def perf_analyzer_path() -> tuple[str | None, str]:
    r = subprocess.run([str(ROOT / "tools" / "ensure_perf_analyzer.sh")], capture_output=True, text=True,
                       timeout=900)
    if r.returncode != 0:
        return None, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "ensure_perf_analyzer.sh failed"
    return r.stdout.strip().splitlines()[-1], ""


def run_pa(pa: str, protocol: str, url: str, model: str, width: int, concurrency: int, window_ms: int,
           streaming: bool = False) -> dict:
    """One perf_analyzer run at one concurrency: three windows of window_ms (stability is not
    required: the machine is shared); returns p50 us, infer/s, server inference/execution counts."""
    cmd = [pa, "-i", protocol, "-u", url, "-m", model, "--shape", f"x:{width}",
           "--concurrency-range", str(concurrency), "-p", str(window_ms), "-s", "1000", "-r", "3"]
    if streaming:
        cmd.append("--streaming")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    out = r.stdout
    if r.returncode != 0 or "Throughput:" not in out:
        tail = (out + r.stderr).strip().splitlines()[-3:]
        raise RuntimeError(f"perf_analyzer exited {r.returncode}: {' / '.join(tail)}")

    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else float("nan")
    return {"p50": num(r"p50 latency: (\d+) usec"), "ips": num(r"Throughput: ([\d.]+) infer/sec"),
            "inferences": num(r"Inference count: (\d+)"), "executions": num(r"Execution count: (\d+)")}


def success_count(stats_target: str, model: str) -> tuple[int, int, int]:
    """(successful requests, inference_count, execution_count) of a model from ModelStatistics."""
    import tritonclient.grpc as tc

    s = tc.InferenceServerClient(stats_target).get_inference_statistics(model).model_stats
    return (sum(m.inference_stats.success.count for m in s), sum(m.inference_count for m in s),
            sum(m.execution_count for m in s))


def pa_path(pa: str, protocol: str, url: str, model: str, width: int, window_ms: int, streaming: bool,
            server: Server, stats_target: str) -> PA:
    try:
        one = run_pa(pa, protocol, url, model, width, 1, window_ms, streaming)
        before, cpu0 = success_count(stats_target, model)[0], server.cpu()
        eight = run_pa(pa, protocol, url, model, width, 8, window_ms, streaming)
        after, cpu1 = success_count(stats_target, model)[0], server.cpu()
    except Exception as e:  # noqa: BLE001 - reported in the table
        return PA(error=str(e)[:200])
    return PA(one["p50"], one["ips"], eight["ips"], eight["p50"], (cpu1 - cpu0) / max(after - before, 1) * 1e6)


# -- report ------------------------------------------------------------------------------------

def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if a == a and b == b and b else "-"


def fmt(v: float, digits: int = 0) -> str:
    return f"{v:.{digits}f}" if v == v else "-"


class Targets:
    def __init__(self):
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, what: str, value: float, target: float, unit: str, higher_is_better: bool) -> None:
        if value != value:
            self.rows.append((what, "-", f"{'>=' if higher_is_better else '<='} {target:g}{unit}", "not measured"))
            return
        met = value >= target if higher_is_better else value <= target
        self.rows.append((what, f"{value:.2f}{unit}", f"{'>=' if higher_is_better else '<='} {target:g}{unit}",
                          "met" if met else "MISSED"))

    def print(self) -> None:
        print("\nTargets")
        print(f"{'':<58} {'measured':>10} {'target':>10}")
        for what, value, target, verdict in self.rows:
            print(f"{what:<58} {value:>10} {target:>10}  {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="measured time per concurrency level (default 3)")
    ap.add_argument("--quick", action="store_true", help="0.5 s per level: checks that every path works")
    ap.add_argument("--triton", action="store_true",
                    help="set up the Triton peer first (../shared/peers/triton/setup.sh; downloads nvidia-pytriton)")
    ap.add_argument("--no-perf-analyzer", action="store_true", help="Python clients only")
    a = ap.parse_args()
    seconds = 0.5 if a.quick else a.seconds
    window_ms = max(200, int(seconds * 1000 / 3 * 2)) if a.quick else max(300, int(seconds * 1000 / 3))
    notes: list[str] = []

    import tritonclient.grpc  # noqa: F401 - fail early: the v2 rows need it

    from memserve_client import Client

    # Servers.
    rest = has_rest()
    flags = ["--port", "0", "--metrics-port", "-1", "--device-memory", "256MiB"] + (["--http-port", "0"] if rest else [])
    servers: list[Server] = []
    try:
        ms = Server("memserved", [sys.executable, "-m", "memserve", *flags])
        servers.append(ms)
        rest_target = http_target(ms.lines) if rest else None
        if rest and rest_target is None:
            notes.append("memserve v2 REST: --http-port given, but no REST address found in the daemon's banner")
        elif not rest:
            notes.append("memserve v2 REST: skipped, memserved has no --http-port in this tree")
        try:
            import tritonclient.http  # noqa: F401
        except ImportError as e:
            if rest_target:
                notes.append(f"memserve v2 REST with tritonclient.http: skipped ({e}; pip install 'tritonclient[http]')")
            http_ok = False
        else:
            http_ok = True
        echo = Server("grpcio echo", [sys.executable, str(ROOT / "bench" / "echo_server.py")])
        servers.append(echo)
        aio = None
        if (ROOT / "bench" / "aio_echo_server.py").exists():
            aio = Server("grpc.aio echo", [sys.executable, str(ROOT / "bench" / "aio_echo_server.py")])
            servers.append(aio)
        else:
            notes.append("grpc.aio echo: skipped, bench/aio_echo_server.py is missing")
        triton = None
        if a.triton:
            subprocess.run(["bash", str(PEERS / "triton" / "setup.sh")], check=True)
        if not (PEERS / "triton" / "run.sh").exists():
            notes.append(f"Triton: skipped, no peer scripts in {PEERS / 'triton'}")
        elif not triton_ready():
            notes.append(f"Triton: skipped, not set up in {TRITON_DIR} (run {PEERS / 'triton' / 'setup.sh'} "
                         "once, or pass --triton)")
        else:
            try:
                triton, triton_grpc, triton_http = start_triton()
                servers.append(triton)
            except Exception as e:  # noqa: BLE001
                notes.append(f"Triton: skipped, it did not start: {str(e)[:300]}")

        with Client(ms.target, timeout=120) as c:
            c.load(relu_model(16), name="relu", max_batch=8)
            c.load(relu_model(SIZES["1 MiB"]), name="relu_1m", max_batch=1)
            c.load(relu_model(16), name="relu_batched", max_batch=64, batching=True, max_queue_delay_us=0)
        ms_model = {"64 B": "relu", "1 MiB": "relu_1m"}

        # Python clients.
        rng = np.random.default_rng(0)
        py: dict[tuple[str, str], Measured] = {}
        for size, width in SIZES.items():
            x = rng.standard_normal((1, width)).astype(np.float32)
            warmup = 100 if width <= 16 else 10
            paths = [("grpcio echo", echo, echo_call(echo.target, x))]
            if aio:
                paths.append(("grpc.aio echo", aio, echo_call(aio.target, x)))
            paths += [("memserve native", ms, native_call(ms.target, ms_model[size], x)),
                      ("memserve v2 gRPC", ms, v2_grpc_call(ms.target, ms_model[size], x))]
            if rest_target and http_ok:
                paths.append(("memserve v2 REST", ms, v2_http_call(rest_target, ms_model[size], x)))
            if triton:
                paths.append(("Triton v2 gRPC", triton, v2_grpc_call(triton_grpc, "relu", x)))
                if http_ok:
                    paths.append(("Triton v2 REST", triton, v2_http_call(triton_http, "relu", x)))
            for name, server, make in paths:
                try:
                    py[name, size] = measure(make, seconds, warmup, server.cpu)
                except Exception as e:  # noqa: BLE001
                    notes.append(f"{name} {size}: failed: {str(e)[:200]}")

        # perf_analyzer.
        pa_rows: dict[tuple[str, str, str], PA] = {}
        batching: list[tuple[str, str, int, float, float]] = []
        pa = None
        if a.no_perf_analyzer:
            notes.append("perf_analyzer: skipped (--no-perf-analyzer)")
        else:
            pa, why = perf_analyzer_path()
            if pa is None:
                notes.append(f"perf_analyzer: skipped, it could not be installed: {why}")
        if pa:
            targets = [("memserve", "grpc", ms.target, ms, ms.target, ms_model)]
            if rest_target:
                targets.append(("memserve", "http", rest_target, ms, ms.target, ms_model))
            if triton:
                targets.append(("Triton", "grpc", triton_grpc, triton, triton_grpc, {s: "relu" for s in SIZES}))
                if rest_target:
                    targets.append(("Triton", "http", triton_http, triton, triton_grpc, {s: "relu" for s in SIZES}))
            for size, width in SIZES.items():
                for who, proto, url, server, stats, models in targets:
                    for streaming in ((False, True) if proto == "grpc" else (False,)):
                        mode = "streaming" if streaming else "unary"
                        pa_rows[who, f"{proto} {mode}", size] = pa_path(
                            pa, proto, url, models[size], width, window_ms, streaming, server, stats)
            # Dynamic batching, delay 0: requests per execution under 8 and 16 clients.
            peers = [("memserve", ms.target, "relu_batched")] + ([("Triton", triton_grpc, "relu")] if triton else [])
            for who, url, model in peers:
                for conc, streaming in ((8, False), (16, False), (8, True)):
                    try:
                        _, i0, e0 = success_count(url, model)
                        r = run_pa(pa, "grpc", url, model, 16, conc, window_ms, streaming)
                        _, i1, e1 = success_count(url, model)
                        batching.append((who, "streaming" if streaming else "unary", conc, r["ips"],
                                         (i1 - i0) / max(e1 - e0, 1)))
                    except Exception as e:  # noqa: BLE001
                        notes.append(f"batching {who} c={conc}: failed: {str(e)[:200]}")
    finally:
        for s in servers:
            s.stop()

    # Report.
    t = Targets()
    print(f"Relu, FP32, batch 1; Python clients: p50/p99 at concurrency 1, req/s and server CPU at 8, "
          f"client CPU at 1; {seconds:g} s per level")
    print(f"{'path':<18} {'size':>6} {'p50 us':>8} {'p99 us':>8} {'req/s@8':>8} {'srvCPU us':>9} "
          f"{'cliCPU us':>9} {'p50/echo':>8} {'rps/echo':>8} {'CPU-echo':>8}")
    for size in SIZES:
        base = py.get(("grpcio echo", size), Measured())
        for (name, s), m in py.items():
            if s != size:
                continue
            print(f"{name:<18} {size:>6} {fmt(m.p50):>8} {fmt(m.p99):>8} {fmt(m.rps):>8} {fmt(m.server_cpu):>9} "
                  f"{fmt(m.client_cpu):>9} {ratio(m.p50, base.p50):>8} {ratio(m.rps, base.rps):>8} "
                  f"{fmt(m.server_cpu - base.server_cpu):>8}")
    echo64, echo1m = py.get(("grpcio echo", "64 B"), Measured()), py.get(("grpcio echo", "1 MiB"), Measured())
    for name in ("memserve native", "memserve v2 gRPC"):
        m64, m1m = py.get((name, "64 B"), Measured()), py.get((name, "1 MiB"), Measured())
        t.add(f"{name}: p50 c=1 64 B / echo", m64.p50 / echo64.p50, 1.15, "x", False)
        t.add(f"{name}: req/s c=8 64 B / echo", m64.rps / echo64.rps, 0.9, "x", True)
        t.add(f"{name}: server CPU/request 64 B - echo", m64.server_cpu - echo64.server_cpu, 60, " us", False)
        t.add(f"{name}: p50 c=1 1 MiB / echo", m1m.p50 / echo1m.p50, 1.2, "x", False)
    nat, trc = py.get(("memserve native", "1 MiB"), Measured()), py.get(("memserve v2 gRPC", "1 MiB"), Measured())
    t.add("native client CPU/call 1 MiB / tritonclient.grpc's", nat.client_cpu / trc.client_cpu, 1.0, "x", False)

    if pa_rows:
        print("\nperf_analyzer (C++ client): p50 and infer/s at concurrency 1 and 8; server CPU per request at 8")
        print(f"{'server':<9} {'path':<15} {'size':>6} {'p50@1 us':>9} {'inf/s@1':>8} {'p50@8 us':>9} "
              f"{'inf/s@8':>8} {'srvCPU us':>9} {'p50/Triton':>10} {'ips8/Triton':>11}")
        for (who, path, size), r in pa_rows.items():
            peer = pa_rows.get(("Triton", path, size), PA())
            if r.error:
                print(f"{who:<9} {path:<15} {size:>6} failed: {r.error}")
                continue
            print(f"{who:<9} {path:<15} {size:>6} {fmt(r.p50):>9} {fmt(r.ips1):>8} {fmt(r.p50_8):>9} "
                  f"{fmt(r.ips8):>8} {fmt(r.server_cpu):>9} {ratio(r.p50, peer.p50):>10} {ratio(r.ips8, peer.ips8):>11}")
        for mode, floor in (("unary", 0.6), ("streaming", 1.0)):
            m, p = pa_rows.get(("memserve", f"grpc {mode}", "64 B"), PA()), pa_rows.get(("Triton", f"grpc {mode}", "64 B"), PA())
            t.add(f"perf_analyzer {mode} 64 B: memserve/Triton p50 c=1", m.p50 / p.p50, 1.1, "x", False)
            t.add(f"perf_analyzer {mode} 64 B: memserve/Triton infer/s c=8", m.ips8 / p.ips8, floor, "x", True)
    if batching:
        print("\nDynamic batching, delay 0, 64 B, perf_analyzer gRPC: requests per execution from ModelStatistics")
        print(f"{'server':<9} {'mode':<10} {'clients':>7} {'infer/s':>8} {'req/exec':>8}")
        for who, mode, conc, ips, per in batching:
            print(f"{who:<9} {mode:<10} {conc:>7} {fmt(ips):>8} {per:>8.2f}")
    t.print()
    if triton:
        print("\nTriton's server CPU includes its python backend's stub process, where the Relu runs.")
    print("The echo client sends a prebuilt message and does not decode the answer; the v2 and native "
          "clients convert numpy both ways on every call.")
    for n in notes:
        print(f"note: {n}")


if __name__ == "__main__":
    main()
