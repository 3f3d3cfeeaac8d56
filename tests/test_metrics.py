"""Metrics scraped by a real Prometheus server (Debian's `prometheus`), checked through its query API."""
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from memserve_client import MemserveError

from models import ROOT

EXAMPLE = ROOT / "examples" / "mlp.onnx"
# On PATH, or what `make test` (tools/ensure_prometheus.sh) unpacked from Debian's package without root.
PROMETHEUS = shutil.which("prometheus") or next(
    (str(p) for p in [ROOT / ".venv" / "prometheus" / "usr" / "bin" / "prometheus"] if p.exists()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prometheus(tmp_path):
    """Start Prometheus on loopback; yields (start(target), query(expr))."""
    if PROMETHEUS is None:
        pytest.skip("no prometheus binary: make test fetches Debian's package into .venv/prometheus "
                    "(tools/ensure_prometheus.sh); apt-get download prometheus did not work here")
    procs = []
    port = free_port()

    def start(target: str) -> None:
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n"
            f"  - job_name: memserve\n    static_configs:\n      - targets: ['{target}']\n")
        procs.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def query(expr: str) -> dict[tuple, float]:
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as r:
            data = json.load(r)["data"]["result"]
        return {tuple(sorted((k, v) for k, v in d["metric"].items() if k not in ("job", "instance", "__name__"))):
                float(d["value"][1]) for d in data}

    yield start, query
    for p in procs:
        p.terminate()
        p.wait(10)


def wait_scrape(query, expr: str, want, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = query(expr)
            if want(last):
                return last
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{expr}: {last}")


def test_prometheus_scrapes_what_the_traffic_implies(make_daemon, prometheus):
    start, query = prometheus
    d = make_daemon("--device-memory", "64MiB")
    x = np.ones((2, 64), np.float32)
    with d.client() as c:
        m = c.load(EXAMPLE, name="mlp", max_batch=4, workspace="shared:g")
        for _ in range(5):
            c.execute(m, {"x": x})
        with pytest.raises(MemserveError):
            c.execute(m, {"x": np.ones((2, 63), np.float32)})
        with pytest.raises(MemserveError):
            c.load(b"not onnx", name="bad")
    from tritonclient.grpc import InferenceServerClient, InferInput

    triton = InferenceServerClient(d.target)
    inp = InferInput("x", [2, 64], "FP32")
    inp.set_data_from_numpy(x)
    triton.infer("mlp", [inp])
    triton.close()
    start(d.metrics)
    wait_scrape(query, 'up{job="memserve"}', lambda r: r and list(r.values()) == [1.0])
    ok = (("api", "native"), ("model", "mlp"), ("status", "OK"))
    requests = wait_scrape(query, "memserve_requests_total", lambda r: r.get(ok) == 5.0)
    assert requests[(("api", "native"), ("model", "mlp"), ("status", "INVALID_ARGUMENT"))] == 1.0
    assert requests[(("api", "kserve"), ("model", "mlp"), ("status", "OK"))] == 1.0
    assert query('memserve_compute_duration_seconds_count{model="mlp"}') == {(("model", "mlp"),): 6.0}
    assert query('memserve_batch_size_sum{model="mlp"}') == {(("model", "mlp"),): 12.0}
    assert query('memserve_request_duration_seconds_count{model="mlp",api="native"}')[
        (("api", "native"), ("model", "mlp"))] == 6.0
    assert query("memserve_queue_duration_seconds_count") == {(("model", "mlp"),): 6.0}
    assert query("memserve_models_loaded") == {(): 1.0}
    assert query("memserve_device_capacity_bytes") == {(): float(64 << 20)}
    assert query("memserve_device_used_bytes") == {
        (("kind", "weights"),): m.weight_size, (("kind", "workspace"),): m.work_size, (("kind", "io"),): 0.0}
    assert query("memserve_model_weight_bytes") == {(("model", "mlp"),): m.weight_size}
    assert query("memserve_model_workspace_bytes") == {(("model", "mlp"),): m.work_size}
    assert query("memserve_workspace_bytes") == {(("workspace", "shared:g"),): m.work_size}
    assert query("memserve_queue_depth") == {(("workspace", "shared:g"),): 0.0}
    assert query("memserve_load_failures_total") == {(("reason", "PARSE_MODEL"),): 1.0}
    assert query("memserve_load_duration_seconds_count") == {(): 1.0}


def test_buckets_count_each_value_under_the_smallest_bound_it_does_not_exceed():
    from memserve.metrics import _add
    from memserve.stats import Histogram
    from prometheus_client.core import HistogramMetricFamily

    h = Histogram((1, 2, 4))
    for v in (0.5, 1, 1.5, 2, 4, 9):
        h.observe(v)
    family = HistogramMetricFamily("x", "x", labels=["model"])
    _add(family, ["m"], h)
    got = {s.labels.get("le"): s.value for s in family.samples if s.name == "x_bucket"}
    assert got == {"1.0": 2, "2.0": 4, "4.0": 5, "+Inf": 6}  # le is inclusive, as Prometheus defines it
    assert h.sum == 18.0
