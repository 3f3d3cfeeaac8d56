"""Fixtures: the real daemon as a subprocess on a free loopback port, and clients for it."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from memserve_client import Client


class Daemon:
    """`memserved` started as a user would, on port 0 (gRPC, HTTP and metrics); the ports are read from its banner."""

    def __init__(self, *args: str):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "memserve", "--port", "0", "--http-port", "0", "--metrics-port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        seen = []
        for line in self.proc.stdout:  # log lines (models loaded at start) may come before the banner
            seen.append(line)
            if "listening on" in line:
                break
        else:
            self.proc.kill()
            raise RuntimeError(f"memserved did not start: {''.join(seen)}")
        self.start_log = seen  # what it logged before it listened (restored and repository models)
        # Keep reading what it prints: a full pipe would block its logging, and with it the daemon.
        self._output: list[str] = []
        self._reader = threading.Thread(target=lambda: self._output.extend(self.proc.stdout), daemon=True)
        self._reader.start()
        self.target = line.split("listening on ")[1].split()[0]
        self.port = int(self.target.rsplit(":", 1)[1])
        self.metrics = line.split("metrics on ")[1].rstrip(")\n") if "metrics on " in line else None
        # the Open Inference Protocol over HTTP/REST: HOST:PORT (None with --http-port -1)
        self.http = line.split("http on ")[1].split(",")[0] if "http on " in line else None

    def client(self, **kw) -> Client:
        return Client(self.target, **kw)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> str:
        """Stop it; returns what it printed after the banner."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        return "".join(self._output)

    def log(self) -> str:
        """Everything it printed so far, the lines before its banner included; does not wait."""
        return "".join(self.start_log) + "".join(self._output)

    def output(self) -> str:
        self._reader.join(10)
        return "".join(self._output)


@pytest.fixture(scope="session")
def daemon():
    d = Daemon("--device-memory", "1GiB")
    yield d
    d.stop()


@pytest.fixture
def client(daemon):
    with daemon.client(timeout=60) as c:
        yield c
        # Each test leaves the shared daemon empty, as it found it.
        for m in c.list_models():
            c.unload(m)


@pytest.fixture
def make_daemon():
    started = []

    def start(*args: str) -> Daemon:
        d = Daemon(*args)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


@pytest.fixture
def reg():
    """An in-process registry (the daemon's load and execute path); empty again, to the byte, afterwards."""
    from memserve.device import CpuDevice
    from memserve.registry import Registry

    r = Registry(CpuDevice(1 << 30))
    yield r
    r.close()
    assert r.device.used() == 0
