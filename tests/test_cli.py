"""The `memserve` command line against the real daemon, as a user types it."""
import subprocess
import sys

import numpy as np

from models import ROOT

EXAMPLE = str(ROOT / "examples" / "mlp.onnx")


def cli(daemon, *args, check=True):
    r = subprocess.run([sys.executable, "-m", "memserve_client.cli", "--target", daemon.target, *args],
                       capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_load_infer_status_unload(daemon, client, tmp_path):
    out = cli(daemon, "load", EXAMPLE, "--name", "mlp", "--max-batch", "4").stdout
    assert "name:        mlp" in out and "work size:   4096 bytes (lower bound 4096)" in out
    assert "input:       x float32 [N, 64]" in out and "output:      probs float32 [N, 10]" in out
    out = cli(daemon, "infer", "mlp", "--random", "--batch", "2").stdout
    assert out.startswith("probs: float32 [2, 10]")
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    cli(daemon, "infer", "mlp", "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", str(tmp_path / "out"))
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "probs.npy"), client.execute("mlp", {"x": x})["probs"])
    status = cli(daemon, "status").stdout
    assert "weights            104512" in status and "workspace            4096" in status
    assert "private:" in status and "refs 1" in status
    assert "mlp" in cli(daemon, "list").stdout
    assert "max batch:   4" in cli(daemon, "describe", "mlp").stdout
    assert "work size:        4096" in cli(daemon, "query-size", EXAMPLE, "--max-batch", "4").stdout
    assert cli(daemon, "unload", "mlp").stdout.strip() == "unloaded mlp: 108608 bytes freed"
    assert "0 of" in cli(daemon, "status").stdout


def test_errors_are_one_line_with_nonzero_exit(daemon):
    r = cli(daemon, "infer", "missing", "--random", check=False)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "memserve: error: NOT_FOUND: no model with name 'missing' is loaded; ListModels shows the loaded ones "
        "(code 100011)"]
    r = cli(daemon, "load", "/nonexistent.onnx", check=False)
    assert r.returncode == 1 and r.stderr.startswith("memserve: error:") and len(r.stderr.splitlines()) == 1


def test_large_upload_shows_progress(daemon, client, tmp_path):
    from models import chain_model

    path = tmp_path / "big.onnx"
    path.write_bytes(chain_model(width=1024, depth=3))  # 12 MiB
    r = cli(daemon, "load", str(path), "--name", "big")
    assert "upload" in r.stderr and "100%" in r.stderr
    assert "weight size: 12582912 bytes" in r.stdout
