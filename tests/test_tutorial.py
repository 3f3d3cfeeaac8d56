"""docs/tutorial.md, run: every fenced sh and python block, in order, against a daemon that the tutorial's own
`make serve` starts on free ports (50051, 8000, 8002 and 9090 rewritten to them). `kubectl apply -k DIR`, which
needs a cluster, is replaced by rendering and validating DIR offline (as tests/test_deploy.py does)."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from models import ROOT
from test_deploy import render, validate
from test_metrics import PROMETHEUS, free_port

TUTORIAL = ROOT / "docs" / "tutorial.md"


def blocks() -> list[tuple[str, str]]:
    return re.findall(r"^```(sh|python)\n(.*?)^```$", TUTORIAL.read_text(), re.S | re.M)


def test_the_tutorial_shows_each_step_of_the_first_hour():
    text = TUTORIAL.read_text()
    kinds = [kind for kind, _ in blocks()]
    assert "make serve" in text and "tritonclient" in text and "memserve status" in text
    assert "api/v1/query" in text and "kubectl apply -k" in text and kinds.count("python") >= 2


def test_every_command_of_the_tutorial_runs(tmp_path):
    pytest.importorskip("skl2onnx")
    if PROMETHEUS is None:
        pytest.skip("no prometheus binary (make test fetches Debian's package into .venv/prometheus)")
    ports = {"50051": free_port(), "8000": free_port(), "8002": free_port(), "9090": free_port()}

    def local(text: str) -> str:
        for old, new in ports.items():
            text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
        return text.replace("/tmp/", f"{tmp_path}/")

    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.path.dirname(PROMETHEUS)}:{os.environ['PATH']}",
           "MEMSERVE_TARGET": f"127.0.0.1:{ports['50051']}"}
    daemon = None
    outputs = []
    try:
        for kind, code in blocks():
            code = local(code)
            if kind == "sh" and code.strip() == "make serve":
                args = f"--port {ports['50051']} --http-port {ports['8000']} --metrics-port {ports['8002']}"
                daemon = subprocess.Popen(["make", "serve", f"ARGS={args}"], cwd=ROOT, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
                line = ""
                deadline = time.monotonic() + 300
                while "listening on" not in line and time.monotonic() < deadline and daemon.poll() is None:
                    line = daemon.stdout.readline()
                assert "listening on" in line, f"make serve did not start: {line}"
                continue
            if kind == "sh" and code.startswith("kubectl apply -k "):
                validate(render(ROOT / code.split()[3]))
                continue
            cmd = ["bash", "-e", "-c", code] if kind == "sh" else [sys.executable, "-c", code]
            r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, f"{kind} block failed:\n{code}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
            outputs.append(r.stdout)
    finally:
        subprocess.run(["pkill", "-f", str(tmp_path)], check=False)  # the tutorial's Prometheus
        if daemon is not None:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(60)
    text = "\n".join(outputs)
    assert "name:        iris" in text and "X float32 [N, 4]" in text
    assert "memserve says [0 0 0]" in text
    assert '"api":"kserve"' in text and '"api":"native"' in text  # the PromQL query's answer
    assert "unloaded iris:" in text


def test_the_tritonclient_example_of_kserve_md_runs(daemon, client):
    """Was: kserve.md had no tritonclient example."""
    text = (ROOT / "docs" / "kserve.md").read_text()
    code = re.search(r"^```python\n(.*?import tritonclient\.grpc.*?)^```$", text, re.S | re.M).group(1)
    client.load(ROOT / "examples" / "mlp.onnx", name="mlp", max_batch=8)
    r = subprocess.run([sys.executable, "-c", code.replace("127.0.0.1:50051", daemon.target)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(2, 10)"
