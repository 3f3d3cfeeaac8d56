"""Triton's C++ load generator, perf_analyzer, against the daemon's Open Inference Protocol endpoint.

perf_analyzer reads ModelMetadata and ModelConfig before it sends anything, and ModelStatistics
around every measurement window (it aborts when the statistics disagree with themselves), so a run
to completion checks those three as a real client reads them. tools/ensure_perf_analyzer.sh
installs it (`make test` runs it first); without it these tests are skipped, saying why.

Timings are never asserted: only that it finishes, measures a throughput and reads the server's
statistics.
"""
from __future__ import annotations

import re
import subprocess

import pytest

from onnx import helper

from models import F32, ROOT, graph_model

ENSURE = ROOT / "tools" / "ensure_perf_analyzer.sh"
# Short runs: two concurrency levels, half-second windows, at most 4 of them. The stability
# threshold is wide because the machine is shared: a run that does not settle within 10% would
# exit 2 ("Failed to obtain stable measurement"), which says nothing about the server.
SHORT = ["--shape", "x:16", "--concurrency-range", "1:2", "-p", "500", "--max-trials", "4", "-s", "1000"]


def relu_model() -> bytes:
    return graph_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F32, ["N", 16])], [("y", F32, ["N", 16])])


@pytest.fixture(scope="module")
def perf_analyzer() -> str:
    r = subprocess.run([str(ENSURE)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip(f"perf_analyzer is not available: {r.stderr.strip() or 'ensure_perf_analyzer.sh failed'}")
    return r.stdout.strip().splitlines()[-1]


def run(pa: str, *args: str) -> str:
    r = subprocess.run([pa, *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"perf_analyzer {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def check(out: str, concurrencies=(1, 2)) -> list[dict]:
    """Every concurrency level measured, with a nonzero throughput and the server's side parsed."""
    levels = re.split(r"^Request concurrency: ", out, flags=re.M)[1:]
    assert [int(b.split()[0]) for b in levels] == list(concurrencies), out
    parsed = []
    for block in levels:
        client, _, server = block.partition("  Server: ")
        assert server, f"no server-side statistics:\n{block}"
        throughput = float(re.search(r"Throughput: ([\d.]+) infer/sec", client).group(1))
        assert throughput > 0, block
        m = re.search(r"Avg request latency: (\d+) usec \(overhead (\d+) usec \+ queue (\d+) usec \+ "
                      r"compute input (\d+) usec \+ compute infer (\d+) usec \+ compute output (\d+) usec\)", server)
        assert m, f"server-side latency breakdown not parsed:\n{server}"
        inferences = int(re.search(r"Inference count: (\d+)", server).group(1))
        executions = int(re.search(r"Execution count: (\d+)", server).group(1))
        successes = int(re.search(r"Successful request count: (\d+)", server).group(1))
        assert inferences > 0 and 0 < executions <= inferences and successes > 0, server
        assert int(m.group(5)) > 0, f"compute infer of 0 us:\n{server}"
        parsed.append({"throughput": throughput, "inferences": inferences, "executions": executions,
                       "queue_us": int(m.group(3)), "compute_infer_us": int(m.group(5))})
    return parsed


@pytest.fixture(scope="module")
def served(perf_analyzer):
    """One daemon for the gRPC runs: `relu` (batch up to 8) and `relu_batched` (dynamic batching, delay 0)."""
    from conftest import Daemon

    d = Daemon("--device-memory", "64MiB")
    try:
        with d.client(timeout=60) as c:
            c.load(relu_model(), name="relu", max_batch=8)
            c.load(relu_model(), name="relu_batched", max_batch=8, batching=True, max_queue_delay_us=0)
        yield d
    finally:
        d.stop()


def test_grpc_unary(perf_analyzer, served):
    check(run(perf_analyzer, "-i", "grpc", "-u", served.target, "-m", "relu", *SHORT))


def test_grpc_streaming(perf_analyzer, served):
    check(run(perf_analyzer, "-i", "grpc", "-u", served.target, "-m", "relu", "--streaming", *SHORT))


def test_grpc_dynamic_batching(perf_analyzer, served):
    # perf_analyzer reads dynamic_batching from ModelConfig; merged executions show as
    # fewer executions than inferences in the statistics it reads (checked in check()).
    check(run(perf_analyzer, "-i", "grpc", "-u", served.target, "-m", "relu_batched", *SHORT))
    check(run(perf_analyzer, "-i", "grpc", "-u", served.target, "-m", "relu_batched", "--streaming", *SHORT))


def test_grpc_no_batch_dimension(perf_analyzer, make_daemon):
    d = make_daemon("--device-memory", "64MiB")
    with d.client(timeout=60) as c:
        c.load(graph_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F32, [4, 16])], [("y", F32, [4, 16])]),
               name="fixed", max_batch=0)
    check(run(perf_analyzer, "-i", "grpc", "-u", d.target, "-m", "fixed", *SHORT[2:]))


def test_rest(perf_analyzer, make_daemon):
    """perf_analyzer over HTTP: the v2 REST endpoint with Triton's binary-data extension."""
    d = make_daemon("--device-memory", "64MiB")  # conftest's Daemon serves REST on a free port: d.http
    with d.client(timeout=60) as c:
        c.load(relu_model(), name="relu", max_batch=8)
        c.load(relu_model(), name="relu_batched", max_batch=8, batching=True, max_queue_delay_us=0)
    check(run(perf_analyzer, "-i", "http", "-u", d.http, "-m", "relu", *SHORT))
    check(run(perf_analyzer, "-i", "http", "-u", d.http, "-m", "relu_batched", *SHORT))
