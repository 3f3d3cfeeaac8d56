"""deploy/grafana/memserve.json: every query names metrics and labels the daemon really exports, and, with a
real Prometheus scraping a daemon that served traffic, every query evaluates to data."""
import json
import re
import time
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from memserve_client import MemserveError
from models import ROOT
from test_metrics import prometheus, wait_scrape  # noqa: F401 - the fixture

DASHBOARD = ROOT / "deploy" / "grafana" / "memserve.json"
EXAMPLE = str(ROOT / "examples" / "mlp.onnx")
# What Grafana puts in for its variables when it runs a query.
VARIABLES = {"$model": ".*", "${datasource}": "prometheus", "$__rate_interval": "1m", "$__range": "5m"}


def queries() -> list[tuple[str, str]]:
    d = json.loads(DASHBOARD.read_text())
    out = [(p["title"], t["expr"]) for p in d["panels"] for t in p["targets"]]
    out += [("variable " + v["name"], v["definition"]) for v in d["templating"]["list"] if v.get("definition")]
    return out


def concrete(expr: str) -> str:
    for k, v in VARIABLES.items():
        expr = expr.replace(k, v)
    return expr


def served(daemon) -> None:
    """Traffic that every panel has something to show for: loads, executions, a refused request and load."""
    with daemon.client() as c:
        m = c.load(EXAMPLE, name="mlp", max_batch=4, batching=True, max_queue_delay_us=100)
        for _ in range(3):
            c.execute(m, {"x": np.ones((2, 64), np.float32)})
        with pytest.raises(MemserveError):
            c.execute(m, {"x": np.ones((2, 63), np.float32)})
        with pytest.raises(MemserveError):
            c.load(b"not onnx", name="bad")


def test_the_dashboard_is_grafana_json_with_a_panel_for_each_concern():
    d = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"].lower() for p in d["panels"])
    for concern in ("requests", "latency", "queue depth", "compute", "rows per execution", "device memory",
                    "by model", "load failures"):
        assert concern in titles, concern
    assert len({p["id"] for p in d["panels"]}) == len(d["panels"])


def test_every_query_names_metrics_and_labels_the_daemon_exports(make_daemon):
    d = make_daemon("--device-memory", "64MiB")
    served(d)
    with urllib.request.urlopen(f"http://{d.metrics}/metrics", timeout=10) as r:
        text = r.read().decode()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    for title, expr in queries():
        for name, selector in re.findall(r"(memserve_[a-z_]+)(\{[^}]*\})?", expr):
            assert name in labels, f"{title}: {name} is not exported ({sorted(labels)[:40]})"
            used = set(re.findall(r"(\w+)\s*(?:=~|!=|=)", selector))
            assert used <= labels[name], f"{title}: {name} has no label {used - labels[name]}"
        for by in re.findall(r"by \(([^)]*)\)", expr):
            for label in (b.strip() for b in by.split(",")):
                sources = re.findall(r"(memserve_[a-z_]+)", expr)
                assert label == "le" or any(label in labels[s] for s in sources), f"{title}: by ({label})"


def test_every_query_evaluates_to_data_in_prometheus(make_daemon, prometheus):  # noqa: F811
    start, query = prometheus
    d = make_daemon("--device-memory", "64MiB")
    served(d)
    start(d.metrics)
    wait_scrape(query, "memserve_models_loaded", lambda r: r == {(): 1.0})
    time.sleep(3)  # a few scrapes, so that rate() has two points in its window
    served_again = d.client()
    with served_again as c:
        c.execute("mlp", {"x": np.ones((1, 64), np.float32)})
    empty = []
    for title, expr in queries():
        if title.startswith("variable"):
            continue
        if not wait_scrape(query, concrete(expr), lambda r: len(r) > 0, timeout=20):
            empty.append(title)
    assert empty == []
