"""The `memserve` command line against the real daemon, as a user types it."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from memserve_client import plan_view
from memserve_client.cli import main
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
        "memserve: error: NOT_FOUND: no model with name 'missing' is loaded; ListModels (`memserve list`) shows the "
        "loaded ones (code 100011)"]
    r = cli(daemon, "load", "/nonexistent.onnx", check=False)
    assert r.returncode == 1 and r.stderr.startswith("memserve: error:") and len(r.stderr.splitlines()) == 1


def test_large_upload_shows_progress(daemon, client, tmp_path):
    from models import chain_model

    path = tmp_path / "big.onnx"
    path.write_bytes(chain_model(width=1024, depth=3))  # 12 MiB
    r = cli(daemon, "load", str(path), "--name", "big")
    assert "upload" in r.stderr and "100%" in r.stderr
    assert "weight size: 12582912 bytes" in r.stdout


def test_upload_without_tqdm_has_no_bar(daemon, client, tmp_path, monkeypatch, capsys):
    from models import chain_model

    path = tmp_path / "big.onnx"
    path.write_bytes(chain_model(width=1024, depth=3))  # 12 MiB: a bar when tqdm is there
    monkeypatch.setitem(sys.modules, "tqdm", None)  # the `progress` extra not installed
    assert main(["--target", daemon.target, "load", str(path), "--name", "big"]) == 0
    out, err = capsys.readouterr()
    assert "weight size: 12582912 bytes" in out and "upload" not in err


def test_plan_asks_the_daemon_reports_and_draws(daemon, client, tmp_path):
    # No --target: $MEMSERVE_TARGET names the daemon, as for every other command.
    env = dict(os.environ, MEMSERVE_TARGET=daemon.target)
    r = subprocess.run([sys.executable, "-m", "memserve_client.cli", "plan", EXAMPLE, "--max-batch", "8",
                        "--png", str(tmp_path / "plan.png")], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    report, _, wrote = r.stdout.partition("\n\nwrote ")
    assert wrote.strip() == str(tmp_path / "plan.png")
    assert "work size:        8192 bytes (8.0 KiB)" in report and "(1.0000 x)" in report
    assert "peak at step" in report and "largest work tensors:" in report
    planned, _, report = report.partition("\n")
    assert planned.startswith("planned for --max-batch 8")  # was: no word of the batch it planned for
    assert report.strip() == plan_view.report(client.plan(EXAMPLE, max_batch=8)).strip()
    assert cli(daemon, "plan", EXAMPLE, "--max-batch", "8").stdout.strip() == f"{planned}\n{report.strip()}"
    png = (tmp_path / "plan.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert client.device_status().used == 0  # planned, not loaded


def test_the_plan_picture_reads_in_mib_names_its_tensors_and_keeps_the_legend_aside(tmp_path):
    """Was: an axis in "31200.0 KiB", rectangles without names, the legend over the chart."""
    pytest.importorskip("matplotlib")
    p = plan_view.PlanInfo(work_size=30 << 20, weight_size=0, work_lower_bound=30 << 20, peak_step=1, steps=4,
                           placements=(plan_view.Placement("conv1_out", 0, 20 << 20, 0, 2),
                                       plan_view.Placement("tiny", 20 << 20, 1024, 3, 3),
                                       plan_view.Placement("relu_out", 20 << 20, 10 << 20, 1, 3)))
    drawn = plan_view.draw(p, str(tmp_path / "p.png"))
    assert drawn["unit"] == "MiB"
    assert [name for _, _, name in drawn["labels"]] == ["conv1_out", "relu_out"]  # "tiny" has no room
    assert plan_view.unit_of(31200 << 10) == ("MiB", 1 << 20) and plan_view.unit_of(4096) == ("KiB", 1024)


def test_plan_without_a_daemon_says_to_start_one():
    with socket.socket() as s:  # bound, never listening: connecting to it is refused
        s.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{s.getsockname()[1]}"
        r = subprocess.run([sys.executable, "-m", "memserve_client.cli", "--target", target, "plan", EXAMPLE],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"memserve: error: no daemon answers at {target}: memserve plan asks a running daemon "
                           "(memserved) to plan the model; start one with `make serve` or give --target (UNAVAILABLE")


def test_plan_png_without_matplotlib_says_so_before_uploading(daemon, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the `plot` extra not installed
    with pytest.raises(SystemExit) as exc:
        main(["--target", daemon.target, "plan", EXAMPLE, "--png", str(tmp_path / "plan.png")])
    assert "needs matplotlib" in str(exc.value.code) and "pip install matplotlib" in str(exc.value.code)
    assert not (tmp_path / "plan.png").exists()


def test_plan_from_the_daemon_allocates_nothing(daemon, client):
    info = client.plan(EXAMPLE, max_batch=2)
    assert info.work_size == 2048 and info.steps == 4  # three Dense (Gemm + Relu fused), Softmax
    assert {p.name for p in info.placements} >= {"a0", "a1", "h2"}
    assert all(p.offset + p.size <= info.work_size for p in info.placements)
    assert client.device_status().used == 0


def test_load_plans_with_input_shapes_and_input_values(daemon, client, tmp_path):
    """A Range whose limit comes with the request, over an open sequence: both planned from the command line."""
    from onnx import TensorProto, helper

    from models import graph_model

    nodes = [helper.make_node("Range", ["zero", "limit", "one"], ["r"]),
             helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT), helper.make_node("Relu", ["x"], ["z"])]
    model = graph_model(nodes, [("limit", TensorProto.INT64, []), ("x", TensorProto.FLOAT, ["N", "seq"])],
                        [("y", TensorProto.FLOAT, ["n"]), ("z", TensorProto.FLOAT, ["N", "seq"])],
                        {"zero": np.array(0, np.int64), "one": np.array(1, np.int64)})
    (tmp_path / "range.onnx").write_bytes(model)
    path = str(tmp_path / "range.onnx")
    r = cli(daemon, "load", path, "--input-shape", "x=2,16", check=False)
    assert r.returncode == 1 and "(--input-value)" in r.stderr and len(r.stderr.splitlines()) == 1
    out = cli(daemon, "load", path, "--name", "rng", "--input-shape", "x=2,16", "--input-value", "limit=10").stdout
    assert "input:       x float32 [N, <=16]" in out
    got = client.execute("rng", {"limit": np.array(7, np.int64), "x": np.ones((1, 5), np.float32)})
    np.testing.assert_array_equal(got["y"], np.arange(7))
    assert "work size" in cli(daemon, "query-size", path, "--input-shape", "x=2,16", "--input-value", "limit=10").stdout
    r = cli(daemon, "load", path, "--input-shape", "x=2,16", "--input-value", "limit=ten", check=False)
    assert r.returncode == 1 and r.stderr.strip() == ("memserve: error: --input-value 'limit=ten': give "
                                                      "NAME=V0,V1,... with numbers")
