"""What the benchmarks share: starting servers, timing calls, driving concurrent clients."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent import futures
from typing import Callable

import numpy as np


def start(cmd: list[str]) -> tuple[subprocess.Popen, str]:
    """Start a server that prints 'listening on HOST:PORT' first; returns it and HOST:PORT."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    return proc, line.split("listening on ")[1].split()[0]


def memserved(*flags: str) -> tuple[subprocess.Popen, str]:
    return start([sys.executable, "-m", "memserve", "--port", "0", "--http-port", "0", "--metrics-port", "0", *flags])


def timed(fn: Callable[[], object], calls: int, warmup: int = 200) -> np.ndarray:
    """Microseconds of each of `calls` sequential calls, after a warm-up."""
    for _ in range(warmup):
        fn()
    out = np.empty(calls)
    for i in range(calls):
        t = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t
    return out * 1e6


def concurrent(make_call: Callable[[], Callable[[], object]], concurrency: int, seconds: float
               ) -> tuple[float, float, float]:
    """(p50 us, p99 us, calls/s) of `concurrency` threads calling for `seconds`; each thread
    makes its own call (its own client and channel) with make_call()."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    stop = threading.Event()

    def worker(k: int) -> None:
        call = make_call()
        call()
        while not stop.is_set():
            t = time.perf_counter()
            call()
            latencies[k].append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    lat = np.concatenate([np.asarray(x) for x in latencies]) * 1e6
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), len(lat) / seconds


def serve(add_servicer: Callable, servicer) -> None:
    """Run a bare grpcio server (same thread pool as memserved) on a free port until killed."""
    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64),
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    add_servicer(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()
