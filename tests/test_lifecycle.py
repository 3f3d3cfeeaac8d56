"""SIGTERM: NOT_SERVING, new calls refused, running and queued work finishes, exit 0."""
import signal
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from memserve_client import MemserveError

from conftest import wait_for
from models import chain_model


def test_sigterm_finishes_queued_work_and_exits_zero(make_daemon):
    d = make_daemon("--shutdown-grace", "30")
    with d.client() as c:
        m = c.load(chain_model(width=1024, depth=8), name="slow", max_batch=512)
        big = np.ones((512, 1024), np.float32)
        clients = [d.client() for _ in range(4)]
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(cl.execute, m, {"x": big}) for cl in clients]
            assert wait_for(lambda: c.device_status().workspaces[0].queued == 3)  # one runs, three wait
            d.proc.send_signal(signal.SIGTERM)
            with grpc.insecure_channel(d.target) as ch:
                health = health_pb2_grpc.HealthStub(ch)
                assert wait_for(lambda: _status(health) != health_pb2.HealthCheckResponse.SERVING, timeout=10)
            with pytest.raises(MemserveError) as e:
                c.execute(m, {"x": big[:1]})
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
            assert all(f.result(timeout=60)["y"].shape == (512, 1024) for f in futures)  # none lost
        for cl in clients:
            cl.close()
    assert d.proc.wait(timeout=30) == 0
    out = d.output()
    assert "shutting down" in out and "stopped" in out


def _status(health):
    try:
        return health.Check(health_pb2.HealthCheckRequest(service="")).status
    except grpc.RpcError:
        return None
