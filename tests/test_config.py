"""Configuration precedence (flags > MEMSERVE_* > file > defaults), --help, and JSON logs."""
import dataclasses
import json
import subprocess
import sys

import grpc
import pytest

from memserve.config import Config, from_args

from models import ROOT


def test_flags_beat_environment_beat_file(tmp_path):
    f = tmp_path / "memserve.toml"
    f.write_text('device-memory = "1GiB"\nport = 7000\nmax_queue = 9\nthreads = 3\nrequire-token-for-execute = true\n')
    c = from_args(["--config", str(f), "--port", "7001"], {"MEMSERVE_MAX_QUEUE": "11"})
    assert (c.device_memory, c.port, c.max_queue, c.threads, c.require_token_for_execute) == (1 << 30, 7001, 11, 3, True)
    c = from_args([], {"MEMSERVE_CONFIG": str(f), "MEMSERVE_DEVICE_MEMORY": "2GiB"})
    assert (c.device_memory, c.port) == (2 << 30, 7000)


def test_bad_settings_are_refused(tmp_path, capsys):
    f = tmp_path / "bad.toml"
    f.write_text("no_such_setting = 1\n")
    with pytest.raises(SystemExit):
        from_args(["--config", str(f)], {})
    assert "unknown setting 'no_such_setting'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        from_args([], {"MEMSERVE_DEVICE_MEMORY": "lots"})
    assert "MEMSERVE_DEVICE_MEMORY" in capsys.readouterr().err


def test_threads_default_to_one_and_negative_counts_are_refused(capsys):
    assert (Config().threads, from_args([], {}).threads) == (1, 1)
    assert from_args(["--threads", "0"], {}).threads == 0
    for bad in (["--threads", "-1"], ["--threads", "all"], ["--threads", "257"]):
        with pytest.raises(SystemExit):
            from_args(bad, {})
        assert "not a thread count" in capsys.readouterr().err


def test_ports_are_tritons_and_each_protocol_has_its_own():
    c = from_args([], {})
    assert (c.port, c.http_port, c.metrics_port) == (50051, 8000, 8002)  # metrics never share the inference port
    assert from_args(["--http-port", "-1"], {}).http_port == -1
    assert from_args([], {"MEMSERVE_HTTP_PORT": "0"}).http_port == 0


def test_help_documents_every_setting():
    out = subprocess.run([sys.executable, "-m", "memserve", "--help"], capture_output=True, text=True).stdout
    for field in dataclasses.fields(Config):
        assert "--" + field.name.replace("_", "-") in out, field.name


def test_json_logs_carry_request_ids(make_daemon):
    from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
    from memserve_api.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc

    d = make_daemon("--log-format", "json")
    with d.client() as c:
        c.load(ROOT / "examples" / "mlp.onnx", name="logged")
    with grpc.insecure_channel(d.target) as ch:
        with pytest.raises(grpc.RpcError):
            pb_grpc.MemserveStub(ch).Execute(pb.ExecuteRequest(model=pb.ModelRef(name="logged"), id="req-42"))
    lines = [json.loads(line) for line in d.stop().splitlines() if line.startswith("{")]
    failed = [r for r in lines if r.get("request_id") == "req-42"]
    assert failed and failed[0]["level"] == "INFO" and failed[0]["code"] == "INVALID_ARGUMENT"
    assert failed[0]["model"] == "logged" and failed[0]["rpc"] == "Execute"
    assert any(r["msg"].startswith("loaded model logged") and r.get("model") == "logged" for r in lines)
