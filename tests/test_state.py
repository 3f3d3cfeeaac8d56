"""--state-dir: acknowledged loads survive kill -9; an interrupted upload leaves nothing behind."""
import signal
import threading
import time

import numpy as np

from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
from memserve_api.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc

from models import ROOT, chain_model, mlp_bytes

EXAMPLE = ROOT / "examples" / "mlp.onnx"


def files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_acknowledged_loads_survive_kill_9_and_interrupted_ones_vanish(make_daemon, tmp_path):
    import grpc

    state = tmp_path / "state"
    d = make_daemon("--state-dir", str(state))
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    with d.client() as c:
        a = c.load(EXAMPLE, name="a", max_batch=4, workspace="shared:g")
        b = c.load(mlp_bytes(seed=5), name="b", instances=2)
        gone = c.load(mlp_bytes(seed=6), name="gone")
        c.unload(gone)
        want = {"a": c.execute(a, {"x": x})["probs"], "b": c.execute(b, {"x": x[:1]})["probs"]}
    saved = files(state)

    # An upload in progress when the daemon dies.
    big = chain_model(width=1024, depth=6)
    sent = threading.Event()

    def chunks():
        yield pb.LoadRequest(options=pb.LoadOptions(name="half"))
        for k in range(0, len(big), 1 << 20):
            yield pb.LoadRequest(chunk=big[k:k + (1 << 20)])
            if k > 4 << 20:
                sent.set()
                time.sleep(0.2)

    def upload():
        with grpc.insecure_channel(d.target) as ch:
            try:
                pb_grpc.MemserveStub(ch).Load(chunks())
            except grpc.RpcError:
                pass

    t = threading.Thread(target=upload)
    t.start()
    assert sent.wait(30)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    t.join(30)
    assert files(state) == saved  # no part of the interrupted upload was written

    d2 = make_daemon("--state-dir", str(state))
    with d2.client() as c:
        models = {m.name: m for m in c.list_models()}
        assert sorted(models) == ["a", "b"]
        assert (models["a"].id, models["b"].id) == (a.id, b.id)
        assert models["a"].workspace == "shared:g" and models["a"].max_batch == 4 and len(models["b"].workspaces) == 2
        assert np.array_equal(c.execute("a", {"x": x})["probs"], want["a"])
        assert np.array_equal(c.execute(b.id, {"x": x[:1]})["probs"], want["b"])
        status = c.device_status()
        assert status.used == a.weight_size + a.work_size + b.weight_size + 2 * b.work_size
        new = c.load(EXAMPLE, name="c")
        assert new.id == gone.id + 1  # ids are not reused, across restarts either
        c.unload("a")
        c.unload("b")
        c.unload("c")
    assert files(state) == ["next_id"]  # unload removes the models' state


def test_a_crash_between_blob_and_manifest_is_cleaned_up(make_daemon, tmp_path):
    state = tmp_path / "state"
    (state / "blobs").mkdir(parents=True)
    (state / "models").mkdir()
    (state / "blobs" / "deadbeef.onnx").write_bytes(b"orphan")
    (state / "models" / "7.json.tmp").write_text("{half")
    d = make_daemon("--state-dir", str(state))
    with d.client() as c:
        assert c.list_models() == [] and c.device_status().used == 0
    assert files(state) == []
