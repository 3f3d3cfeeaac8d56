"""What a newcomer meets in the first hour (issue 13): each stumble seen, with what the user now sees."""
import pytest

from test_security import pki  # noqa: F401 - the fixture: a CA, a server certificate


@pytest.mark.parametrize("path,error", [("examples/mpl.onnx", FileNotFoundError), ("examples/", IsADirectoryError)])
def test_a_mistyped_model_path_is_the_callers_oserror_naming_it(daemon, client, path, error):
    """Was: MemserveError UNKNOWN: Exception iterating requests! (the file opened inside the upload)."""
    for call in (client.load, client.query_size, client.plan):
        with pytest.raises(error, match=path.rstrip("/")):
            call(path)
    assert client.list_models() == []


def memserved(*args: str, timeout: float = 60):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "memserve", *args], capture_output=True, text=True, timeout=timeout)


def test_an_unknown_device_is_one_line_and_exit_2():
    """Was: a 16-line traceback."""
    r = memserved("--device", "gpu", "--port", "0", "--http-port", "-1", "--metrics-port", "-1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["memserved: unknown device 'gpu'; devices: cpu, cuda[:N] (cuda needs the cuda extra)"]


@pytest.mark.parametrize("size,says", [
    ("100TiB", "is more than this machine's RAM"),  # was accepted on a 24 GiB machine
    ("4GB", "'4GB' is ambiguous: write 4GiB (4294967296 bytes) or 4000000000 (bytes)"),  # was 4e9 silently
    ("4g", "'4g' is ambiguous: write 4GiB"),
    ("lots", "'lots' is not a size"),
])
def test_device_memory_that_cannot_be_meant_is_refused(size, says):
    r = memserved("--device-memory", size, "--port", "0")
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr


def test_binary_units_are_what_they_say():
    from memserve.config import parse_size

    assert [parse_size(s) for s in ("512", "1KiB", "1.5MiB", "4GiB", "1TiB")] == [
        512, 1024, 3 << 19, 4 << 30, 1 << 40]


def memserve(*args: str, target: str | None = None, env: dict | None = None):
    import os
    import subprocess
    import sys

    full = [sys.executable, "-m", "memserve_client.cli"] + (["--target", target] if target else []) + list(args)
    return subprocess.run(full, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def one_line(r) -> str:
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_no_daemon_says_how_to_start_one_or_where_to_point():
    line = one_line(memserve("list", target="127.0.0.1:1"))
    assert "no daemon answers at 127.0.0.1:1: start one (`make serve`, or memserved) or give --target" in line
    assert "add --tls (or --tls-ca FILE) if it serves TLS" in line


def test_a_plaintext_cli_against_a_tls_daemon_hints_at_tls(make_daemon, pki):
    d, _ = pki
    daemon = make_daemon("--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server.key"))
    assert "--tls" in one_line(memserve("list", target=daemon.target))


def test_a_missing_token_names_where_to_give_it(make_daemon, tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    daemon = make_daemon("--admin-token-file", str(tmp_path / "token"))
    line = one_line(memserve("load", "examples/mlp.onnx", target=daemon.target))
    assert "UNAUTHENTICATED" in line and "--token-file FILE or $MEMSERVE_TOKEN" in line
    ok = memserve("load", "examples/mlp.onnx", target=daemon.target, env={"MEMSERVE_TOKEN": "s3cret"})
    assert ok.returncode == 0, ok.stderr


def test_a_closed_pipe_ends_quietly(daemon, client):
    import subprocess
    import sys

    client.load("examples/mlp.onnx", name="mlp", max_batch=64)
    cmd = (f"{sys.executable} -m memserve_client.cli --target {daemon.target} infer mlp --random --batch 64 "
           "--threshold 100000 | head -c 10")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert r.stdout and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


@pytest.mark.parametrize("args,says", [
    (["load", "examples/mlp.onnx", "--max-batch", "0"], "'0' is not a whole number of at least 1"),
    (["load", "examples/mlp.onnx", "--instances", "-2"], "'-2' is not a whole number of at least 1"),
    (["infer", "mlp", "--random", "--priority", "9"], "argument --priority: invalid choice"),
])
def test_flags_that_cannot_be_meant_are_refused(daemon, args, says):
    r = memserve(*args, target=daemon.target)
    assert r.returncode == 2 and says in r.stderr


def test_the_cli_covers_every_load_and_execute_option(daemon, client):
    r = memserve("load", "examples/mlp.onnx", "--name", "mlp", "--max-batch", "8", "--instances", "2",
                 "--batching", "--max-queue-delay", "500", "--preferred-batch", "4", "--workspace", "auto",
                 target=daemon.target)
    assert r.returncode == 0, r.stderr
    assert "instances:   2" in r.stdout
    r = memserve("load", "examples/mlp.onnx", "--name", "mlp", "--replace", target=daemon.target)
    assert r.returncode == 0, r.stderr
    assert [m.name for m in client.list_models()] == ["mlp"]
    r = memserve("infer", "mlp", "--random", "--priority", "3", "--timeout", "10", target=daemon.target)
    assert r.returncode == 0 and r.stdout.startswith("probs: float32 [1, 10]"), r.stderr


@pytest.mark.parametrize("command,flags", [
    ("load", ["--instances", "--replace", "--batching", "--max-queue-delay", "--preferred-batch", "--input-shape",
              "--input-value", "'auto'"]),
    ("infer", ["--priority", "--timeout", "an input from a .npy file", "seed of --random"]),
])
def test_help_names_every_option(command, flags):
    out = memserve(command, "--help").stdout
    assert all(f in " ".join(out.split()) for f in flags), out


def test_model_statistics_count_refused_requests_as_failures(daemon, client):
    """Was: ModelStatistics showed no failures after 4 refused requests that Prometheus counted."""
    import subprocess
    import sys

    import numpy as np

    from memserve_client import MemserveError

    client.load("examples/mlp.onnx", name="mlp", max_batch=4)
    client.execute("mlp", {"x": np.ones((1, 64), np.float32)})
    for bad in ({"x": np.ones((1, 63), np.float32)}, {"x": np.ones((9, 64), np.float32)},
                {"x": np.ones((1, 64), np.float64)}, {"y": np.ones((1, 64), np.float32)}):
        with pytest.raises(MemserveError):
            client.execute("mlp", bad)
    script = ("import json, sys, tritonclient.grpc as g; c = g.InferenceServerClient(sys.argv[1]); "
              "s = c.get_inference_statistics('mlp', as_json=True)['model_stats'][0]['inference_stats']; "
              "print(json.dumps([int(s['success'].get('count', 0)), int(s['fail'].get('count', 0))]))")
    out = subprocess.run([sys.executable, "-c", script, daemon.target], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1, 4]"


def test_tls_files_are_taken_as_paths_or_bytes(make_daemon, pki):
    """Was: Client(tls_ca=...) took only bytes, while a path is what users pass."""
    from memserve_client import Client

    d, f = pki
    daemon = make_daemon("--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server.key"))
    for ca in (str(d / "ca.pem"), d / "ca.pem", f["ca.pem"]):
        with Client(daemon.target, tls_ca=ca, timeout=10) as c:
            assert c.list_models() == []


def test_round_robin_spreads_calls_over_every_address_a_name_resolves_to(make_daemon):
    """Two daemons behind one name (ipv4:...,...), as a headless Service's pods are: with lb_policy
    round_robin both serve; without it (pick_first) one does."""
    import numpy as np

    from memserve_client import Client

    a, b = make_daemon(), make_daemon()
    for d in (a, b):
        with d.client() as c:
            c.load("examples/mlp.onnx", name="mlp")
    target = f"ipv4:{a.target},{b.target}"
    with Client(target, lb_policy="round_robin", timeout=10) as c:
        for _ in range(8):
            c.execute("mlp", {"x": np.ones((1, 64), np.float32)})
    counts = [_executions(d) for d in (a, b)]
    assert all(n > 0 for n in counts), counts


def _executions(daemon) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://{daemon.metrics}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(int(float(line.split()[-1])) for line in text.splitlines()
               if line.startswith("memserve_compute_duration_seconds_count"))


def test_make_serve_installs_the_daemons_runtime_only(tmp_path):
    """Was: make serve installed the dev extra (torch, onnxruntime, tritonclient: a 1.8 GB venv)."""
    import subprocess

    from models import ROOT

    out = subprocess.run(["make", "-n", "serve", f"VENV={tmp_path / 'v'}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60).stdout
    installs = [line for line in out.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs and all("[dev]" not in line for line in installs), installs
    test = subprocess.run(["make", "-n", "test", f"VENV={tmp_path / 'v'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60).stdout
    assert "'.[dev]'" in test


def test_prometheus_is_fetched_without_root_or_a_system_install(tmp_path):
    """Was: make test ran apt-get install prometheus as root, quietly. Now Debian's package is downloaded and
    unpacked into the venv, and the script installs nothing (run here with prometheus hidden from PATH)."""
    import os
    import shutil
    import subprocess

    from models import ROOT

    script = (ROOT / "tools" / "ensure_prometheus.sh").read_text()
    assert "apt-get install" not in script
    if shutil.which("apt-get") is None:
        pytest.skip("no apt-get here: the script says it skips the Prometheus tests")
    tools = tmp_path / "bin"
    tools.mkdir()
    for t in ("apt-get", "dpkg-deb", "dpkg", "mkdir", "rm", "id", "bash", "tar", "xz", "gzip", "zstd", "ls",
              "gpgv", "apt-config", "find"):
        if shutil.which(t):
            (tools / t).symlink_to(shutil.which(t))
    r = subprocess.run(["/bin/bash", str(ROOT / "tools" / "ensure_prometheus.sh")], cwd=ROOT, timeout=300,
                       env={**os.environ, "PATH": str(tools), "VENV": str(tmp_path / "venv")},
                       capture_output=True, text=True)
    assert r.returncode == 0
    binary = tmp_path / "venv" / "prometheus" / "usr" / "bin" / "prometheus"
    if not binary.exists():
        assert "could not be fetched" in r.stderr and "skipped" in r.stderr  # said, not silent
        pytest.skip("apt-get download prometheus did not work here")
    assert "not installed" in r.stderr
    assert subprocess.run([str(binary), "--version"], capture_output=True, timeout=30).returncode == 0


def test_a_model_in_the_state_dir_and_the_repository_comes_back_once_with_its_id(make_daemon, tmp_path):
    """deploy.md: restored models keep their ids; one that the model repository also has is not loaded twice."""
    from models import ROOT

    repo = tmp_path / "repo" / "mlp" / "1"
    repo.mkdir(parents=True)
    (repo / "model.onnx").write_bytes((ROOT / "examples" / "mlp.onnx").read_bytes())
    state = tmp_path / "state"
    first = make_daemon("--state-dir", str(state))
    with first.client() as c:
        model_id = c.load("examples/mlp.onnx", name="mlp").id
    first.stop()
    again = make_daemon("--state-dir", str(state), "--model-repository", str(tmp_path / "repo"))
    with again.client() as c:
        assert [(m.id, m.name) for m in c.list_models()] == [(model_id, "mlp")]
    assert "was restored from --state-dir, and that one is kept" in again.log()


@pytest.mark.parametrize("config,batch", [({"max_batch_size": 0}, 1),
                                          ({"max_batch_size": 0, "input": [{"name": "x", "data_type": "TYPE_FP32",
                                                                            "dims": [6, 64]}]}, 6)])
def test_max_batch_size_0_takes_dims_as_whole_shapes_as_kserve_md_says(daemon, client, config, batch):
    """Was: kserve.md said 0 means 'no batch dimension', while ModelConfig reported 1."""
    import json
    import subprocess
    import sys

    from models import ROOT

    script = ("import json, sys, tritonclient.http as h; c = h.InferenceServerClient(sys.argv[1]); "
              "c.load_model('m0', config=sys.argv[2], files={'file:1/model.onnx': open(sys.argv[3], 'rb').read()}); "
              "print(c.get_model_config('m0')['max_batch_size'])")
    out = subprocess.run([sys.executable, "-c", script, daemon.http, json.dumps(config),
                          str(ROOT / "examples" / "mlp.onnx")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == batch
    assert client.describe("m0").max_batch == batch


@pytest.mark.parametrize("flag", ["--port", "--http-port", "--metrics-port"])
def test_a_busy_port_is_one_line_naming_it_and_its_flag(flag):
    """Was: a 30-line traceback naming neither (the HTTP port 8000, which the README did not mention)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        others = {"--port": "0", "--http-port": "0", "--metrics-port": "0"}
        others[flag] = str(port)
        r = memserved(*[x for kv in others.items() for x in kv])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"port {port}: the address is already in use" in r.stderr and f"choose another {flag}" in r.stderr


def test_plan_of_a_file_that_is_not_a_model_is_one_line(daemon):
    """Was: `memserve plan README.md` printed a 20-line traceback."""
    line = one_line(memserve("plan", "README.md", target=daemon.target))
    assert line.startswith("memserve: error: INVALID_ARGUMENT: model bytes are not an ONNX ModelProto")


def test_the_docs_link_only_inside_the_repository():
    """Was: README linked ../shared/DESIGN.md, which a clone does not have."""
    import re

    from models import ROOT

    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).resolve().is_relative_to(ROOT), f"{page.name} links {target}"
            assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"


def test_api_md_names_every_client_method_and_load_keyword():
    """Was: the client section left out instances, replace, batching, execute_stream, priority and timeout."""
    import inspect

    from memserve_client import Client
    from models import ROOT

    text = (ROOT / "docs" / "api.md").read_text()
    section = text[text.index("## Client and CLI"):]
    methods = [n for n, f in inspect.getmembers(Client, inspect.isfunction) if not n.startswith("_")]
    missing = [m for m in methods if m not in ("close",) and f"`{m}" not in section and f" {m}" not in section]
    assert missing == []
    keywords = [p for p in inspect.signature(Client.load).parameters if p not in ("self", "model")]
    assert [k for k in keywords if k not in section] == []
    for k in ("timeout", "priority", "lb_policy", "tls_ca"):
        assert k in section


def test_deploy_md_builds_the_image_tag_the_manifests_run():
    """Was: deploy.md built `memserve` while the manifests ran `memserve:0.1.0`."""
    import re

    from models import ROOT

    tags = {m for f in (ROOT / "deploy").rglob("*.yaml") for m in re.findall(r"image: (\S+)", f.read_text())}
    built = re.findall(r"docker build -f deploy/Dockerfile -t (\S+) \.", (ROOT / "docs" / "deploy.md").read_text())
    assert len(tags) == 1 and built and set(built) == tags


def test_api_md_lists_every_op_the_daemon_runs():
    """The op list is the registry's (and the ops the compiler expands: If, Loop, Scan)."""
    import re

    from memserve.kernels import INTERNAL_DOMAIN, REGISTRY
    from memserve.kernels.control import CONTROL_FLOW
    from models import ROOT

    text = (ROOT / "docs" / "api.md").read_text()
    listed = set(re.findall(r"\b[A-Z][A-Za-z0-9]+\b", text[text.index("## Ops"):text.index("dtypes:")]))
    ops = {op for domain, op in REGISTRY if domain != INTERNAL_DOMAIN} | CONTROL_FLOW
    assert sorted(ops - listed) == []
