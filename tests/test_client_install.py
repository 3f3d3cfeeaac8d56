"""The client distribution installs and runs alone: a clean virtual environment (no system site packages),
`pip install client/`, and nothing of the daemon comes with it; its `memserve` talks to a real daemon
started from the main environment."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models import ROOT, chain_model

EXAMPLE = str(ROOT / "examples" / "mlp.onnx")
DAEMON_ONLY = {"memserve", "onnx", "onnxruntime", "scipy", "prometheus-client", "threadpoolctl", "aiohttp"}
EXTRAS = {"tqdm", "matplotlib"}  # the `progress` and `plot` extras: not in a bare install


class Venv:
    def __init__(self, root: Path):
        self.root = root
        self.bin = root / "bin"
        self.cwd = root.parent / "elsewhere"  # no source tree on sys.path
        self.cwd.mkdir()
        self.env = {k: v for k, v in os.environ.items()
                    if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MEMSERVE_TARGET", "MEMSERVE_TOKEN"}}

    def run(self, exe: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        r = subprocess.run([str(self.bin / exe), *args], capture_output=True, text=True, timeout=timeout,
                           cwd=self.cwd, env=self.env)
        if check:
            assert r.returncode == 0, f"{exe} {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
        return r


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> Venv:
    base = tmp_path_factory.mktemp("client-alone")
    # A copy of client/, so the build writes nothing into the working tree (build/, *.egg-info).
    src = base / "client"
    shutil.copytree(ROOT / "client", src, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True, timeout=120)
    v = Venv(base / "venv")
    v.run("python", "-m", "pip", "install", "--quiet", str(src), timeout=600)
    return v


def test_installs_nothing_of_the_daemon(alone):
    listed = json.loads(alone.run("python", "-m", "pip", "list", "--format=json").stdout)
    names = {p["name"].lower().replace("_", "-") for p in listed}
    assert "memserve-client" in names
    assert names & DAEMON_ONLY == set()
    assert names & EXTRAS == set()


def test_every_module_imports_from_its_own_install(alone):
    code = """
import importlib, pkgutil, sys
import memserve_api, memserve_client
names = []
for pkg in (memserve_api, memserve_client):
    names.append(pkg.__name__)
    names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in names:
    importlib.import_module(name)
try:
    import memserve
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("the daemon package is importable: " + memserve.__file__)
print(memserve_api.__file__)
print(memserve_client.__file__)
print(len(names))
"""
    out = alone.run("python", "-c", code).stdout.split()
    assert all(Path(f).is_relative_to(alone.root) for f in out[:2]), out  # the installed copy, not client/
    assert int(out[2]) >= 8  # the packages, the stubs, the codec, client, cli, plan_view


def test_its_cli_serves_a_real_daemon(alone, daemon, client, tmp_path):
    def memserve(*args, check=True):
        return alone.run("memserve", "--target", daemon.target, *args, check=check)

    out = memserve("load", EXAMPLE, "--name", "alone", "--max-batch", "4").stdout
    assert "name:        alone" in out and "input:       x float32 [N, 64]" in out
    assert "alone" in memserve("list").stdout
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = memserve("infer", "alone", "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", str(tmp_path / "y")).stdout
    assert out.startswith("probs: float32 [3, 10]")
    np.testing.assert_array_equal(np.load(tmp_path / "y" / "probs.npy"), client.execute("alone", {"x": x})["probs"])
    assert memserve("infer", "alone", "--random", "--batch", "2").stdout.startswith("probs: float32 [2, 10]")

    # plan: the daemon plans; drawing needs the `plot` extra, and says so before uploading anything.
    assert "work size:        8192 bytes" in memserve("plan", EXAMPLE, "--max-batch", "8").stdout
    r = memserve("plan", EXAMPLE, "--png", str(tmp_path / "plan.png"), check=False)
    assert r.returncode == 1 and "needs matplotlib" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "plan.png").exists()

    # A large upload without tqdm (the `progress` extra): no bar, same result.
    big = tmp_path / "big.onnx"
    big.write_bytes(chain_model(width=1024, depth=3))  # 12 MiB: over the bar's threshold
    r = memserve("load", str(big), "--name", "big-alone")
    assert "weight size: 12582912 bytes" in r.stdout and "upload" not in r.stderr
    assert memserve("unload", "big-alone").stdout.strip().startswith("unloaded big-alone:")
