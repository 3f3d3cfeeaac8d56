"""Restarts recover per model: one bad entry of --state-dir or --model-repository costs that entry only.

Each test runs the real daemon, damages its state (or repository) the way a disk, an operator or an
attacker could, and restarts it: the daemon starts, the good models come back and serve the same
outputs, the bad entry is moved into <state>/quarantine/ and the log names it.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import Daemon
from models import chain_model, mlp_bytes

X = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)


@pytest.fixture
def start(make_daemon):
    return make_daemon


def files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def quarantined(state) -> list[str]:
    q = state / "quarantine"
    return sorted(p.name for p in q.iterdir()) if q.is_dir() else []


def error_lines(d: Daemon) -> list[str]:
    return [line for line in d.log().splitlines() if " ERROR " in line]


def save_two(start, state) -> dict:
    """A daemon with --state-dir saves 'good' and 'victim'; returns their ids, outputs and manifests."""
    d = start("--state-dir", str(state))
    with d.client() as c:
        good = c.load(mlp_bytes(seed=1), name="good", max_batch=4)
        victim = c.load(mlp_bytes(seed=2), name="victim")
        out = {"good": c.execute(good, {"x": X})["probs"], "victim": c.execute(victim, {"x": X[:1]})["probs"]}
    d.stop()
    manifest = state / "models" / f"{victim.id}.json"
    return {"good": good.id, "victim": victim.id, "out": out, "path": manifest,
            "manifest": json.loads(manifest.read_text())}


def assert_good_restored(d: Daemon, saved: dict) -> None:
    with d.client() as c:
        models = {m.name: m for m in c.list_models()}
        assert list(models) == ["good"], d.log()
        assert models["good"].id == saved["good"] and models["good"].max_batch == 4
        assert np.array_equal(c.execute("good", {"x": X})["probs"], saved["out"]["good"])
        # Ids are not reused, whatever was set aside.
        new = c.load(mlp_bytes(seed=3), name="new")
        assert new.id == saved["victim"] + 1


def assert_set_aside(d: Daemon, state, entry: str, why: str) -> None:
    """`entry` (e.g. models/2.json) is in quarantine/ with its reason, and an ERROR line names it."""
    prefix = entry.replace("/", "-") + "."
    names = [n for n in quarantined(state) if n.startswith(prefix) and not n.endswith(".reason")]
    assert len(names) == 1, quarantined(state)
    reason = (state / "quarantine" / (names[0] + ".reason")).read_text()
    assert entry in reason and why in reason, reason
    assert any(entry in line and why in line for line in error_lines(d)), d.log()


CORRUPTIONS = {
    "truncated": lambda path, m: path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2]),
    "garbage": lambda path, m: path.write_bytes(b"\x00\xff{{not json at all"),
    "json_array": lambda path, m: path.write_text(json.dumps([m])),
    "unknown_option": lambda path, m: path.write_text(json.dumps({**m, "options": {**m["options"], "evil": 1}})),
    "wrong_type": lambda path, m: path.write_text(json.dumps({**m, "options": {**m["options"], "max_batch": "8"}})),
    "id_not_file_name": lambda path, m: path.write_text(json.dumps({**m, "id": m["id"] + 40})),
    "bool_id": lambda path, m: path.write_text(json.dumps({**m, "id": True})),
}
WHY = {"truncated": "not JSON", "garbage": "not JSON", "json_array": "not an object",
       "unknown_option": "unknown keys ['evil']", "wrong_type": "options.max_batch",
       "id_not_file_name": "does not match its file name", "bool_id": "not a positive integer"}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_corrupt_manifest_is_set_aside_and_the_others_restore(start, tmp_path, kind):
    state = tmp_path / "state"
    saved = save_two(start, state)
    CORRUPTIONS[kind](saved["path"], saved["manifest"])
    d = start("--state-dir", str(state))
    entry = f"models/{saved['victim']}.json"
    assert_set_aside(d, state, entry, WHY[kind])
    assert_good_restored(d, saved)
    # The set-aside model's bytes went to quarantine/ with it (recoverable by hand), not deleted.
    digest = saved["manifest"]["blob"]
    assert any(n.startswith(f"blobs-{digest}.onnx.") for n in quarantined(state))
    assert not (state / "blobs" / f"{digest}.onnx").exists()


def test_a_manifest_whose_blob_is_missing_is_set_aside(start, tmp_path):
    state = tmp_path / "state"
    saved = save_two(start, state)
    (state / "blobs" / f"{saved['manifest']['blob']}.onnx").unlink()
    d = start("--state-dir", str(state))
    assert_set_aside(d, state, f"models/{saved['victim']}.json", "are missing")
    assert_good_restored(d, saved)


def test_a_blob_that_does_not_match_its_digest_is_set_aside_with_its_manifest(start, tmp_path):
    state = tmp_path / "state"
    saved = save_two(start, state)
    blob = state / "blobs" / f"{saved['manifest']['blob']}.onnx"
    blob.write_bytes(mlp_bytes(seed=9))  # a valid model, but not the one that was acknowledged
    d = start("--state-dir", str(state))
    assert_set_aside(d, state, f"models/{saved['victim']}.json", "do not match their digest")
    assert_set_aside(d, state, f"blobs/{blob.name}", "not its name")
    assert_good_restored(d, saved)


def test_a_blob_path_in_a_manifest_never_reaches_outside_the_state_dir(start, tmp_path):
    state = tmp_path / "state"
    saved = save_two(start, state)
    outside = tmp_path / "x.onnx"  # what blobs/../../x.onnx names
    outside.write_bytes(mlp_bytes(seed=2))
    saved["path"].write_text(json.dumps({**saved["manifest"], "blob": "../../x"}))
    d = start("--state-dir", str(state))
    assert_set_aside(d, state, f"models/{saved['victim']}.json", "is not a sha256 digest")
    assert_good_restored(d, saved)

    # The same manifest text written while serving: Unload still removes nothing outside blobs/ and models/.
    good = state / "models" / f"{saved['good']}.json"
    good.write_text(json.dumps({**json.loads(good.read_text()), "blob": "../../x"}))
    with d.client() as c:
        c.unload("good")
        c.unload("new")
    assert outside.read_bytes() == mlp_bytes(seed=2)
    assert not good.exists()
    d.stop()
    d2 = start("--state-dir", str(state))
    with d2.client() as c:
        assert c.list_models() == []
    assert outside.exists()
    assert not [f for f in files(state) if f.startswith(("models/", "blobs/"))]  # swept at start


@pytest.mark.parametrize("content", [b"garbage\n", b"0", b"-3", b"", None], ids=["garbage", "zero", "negative",
                                                                                   "empty", "missing"])
def test_a_corrupt_or_missing_next_id_is_recomputed_from_the_manifests(start, tmp_path, content):
    state = tmp_path / "state"
    saved = save_two(start, state)
    next_id = state / "next_id"
    if content is None:
        next_id.unlink()
    else:
        next_id.write_bytes(content)
    d = start("--state-dir", str(state))
    with d.client() as c:
        models = {m.name: m for m in c.list_models()}
        assert sorted(models) == ["good", "victim"]
        assert np.array_equal(c.execute("good", {"x": X})["probs"], saved["out"]["good"])
        assert np.array_equal(c.execute("victim", {"x": X[:1]})["probs"], saved["out"]["victim"])
        assert c.load(mlp_bytes(seed=3), name="new").id == saved["victim"] + 1
    assert next_id.read_text() == str(saved["victim"] + 2)
    if content is None:
        assert quarantined(state) == []
    else:
        assert_set_aside(d, state, "next_id", "not a positive integer")


def test_the_newest_load_of_a_name_wins_over_a_saved_one_that_did_not_fit(start, tmp_path):
    state = tmp_path / "state"
    big = chain_model(width=512, depth=4)  # 4 MiB of weights
    d = start("--state-dir", str(state), "--device-memory", "64MiB")
    with d.client() as c:
        old = c.load(big, name="m")
    d.stop()

    # Restarted with less memory: the saved 'm' does not fit, is skipped, and keeps its manifest.
    d = start("--state-dir", str(state), "--device-memory", "2MiB")
    with d.client() as c:
        assert c.list_models() == []
        assert any("not restored" in line and "kept" in line for line in error_lines(d)), d.log()
        assert (state / "models" / f"{old.id}.json").exists()
        new = c.load(mlp_bytes(seed=4), name="m")  # a newer acknowledged load of the name
        want = c.execute("m", {"x": X[:1]})["probs"]
    d.stop()
    assert not (state / "models" / f"{old.id}.json").exists()  # so the old one can never come back

    # With room again, the newer load is served, not the old one.
    d = start("--state-dir", str(state), "--device-memory", "64MiB")
    with d.client() as c:
        assert [(m.name, m.id) for m in c.list_models()] == [("m", new.id)]
        assert np.array_equal(c.execute("m", {"x": X[:1]})["probs"], want)
    assert quarantined(state) == []
    assert sorted(files(state / "blobs")) == [f"{json.loads((state / 'models' / f'{new.id}.json').read_text())['blob']}.onnx"]


def test_two_manifests_of_one_name_the_highest_id_wins(start, tmp_path):
    # What a crash between saving a new load of a name and removing the old manifest leaves.
    state = tmp_path / "state"
    saved = save_two(start, state)
    newer = saved["victim"] + 5
    good = json.loads((state / "models" / f"{saved['good']}.json").read_text())
    (state / "models" / f"{newer}.json").write_text(json.dumps(
        {**saved["manifest"], "id": newer, "name": "good", "options": {**saved["manifest"]["options"], "name": "good"}}))
    d = start("--state-dir", str(state))
    with d.client() as c:
        assert sorted((m.name, m.id) for m in c.list_models()) == [("good", newer), ("victim", saved["victim"])]
        assert np.array_equal(c.execute("good", {"x": X[:1]})["probs"], saved["out"]["victim"])
        assert c.load(mlp_bytes(seed=3), name="new").id == newer + 1
    assert_set_aside(d, state, f"models/{saved['good']}.json", "superseded")
    assert any(n.startswith(f"blobs-{good['blob']}.onnx.") for n in quarantined(state))


def write_repo_model(repo, name: str, data: bytes, config: bytes | None = None) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.onnx").write_bytes(data)
    if config is not None:
        (repo / name / "config.pbtxt").write_bytes(config)


def test_a_model_restored_from_state_wins_over_the_repository_one_and_keeps_its_state(start, tmp_path):
    state, repo = tmp_path / "state", tmp_path / "repo"
    write_repo_model(repo, "m", mlp_bytes(seed=1), b'name: "m"\nmax_batch_size: 4\n')
    args = ("--state-dir", str(state), "--model-repository", str(repo))
    d = start(*args)
    with d.client() as c:
        assert [m.name for m in c.list_models()] == ["m"]
        assert files(state / "models") == []  # repository models are not saved
        uploaded = c.load(mlp_bytes(seed=2), name="m", replace=True)
        want = c.execute("m", {"x": X[:1]})["probs"]
    d.stop()
    manifest = state / "models" / f"{uploaded.id}.json"
    saved = manifest.read_bytes()
    for _ in range(2):
        d = start(*args)
        with d.client() as c:
            assert [(m.name, m.id) for m in c.list_models()] == [("m", uploaded.id)]
            assert np.array_equal(c.execute("m", {"x": X[:1]})["probs"], want)
        assert any("WARNING" in line and "model m from" in line and "state-dir" in line
                   for line in d.log().splitlines()), d.log()
        d.stop()
        assert manifest.read_bytes() == saved
        assert files(state / "models") == [manifest.name]


def test_a_bad_repository_entry_skips_only_that_entry(start, tmp_path):
    repo = tmp_path / "repo"
    write_repo_model(repo, "good", mlp_bytes(seed=1), b'name: "good"\nmax_batch_size: 4\n')
    write_repo_model(repo, "badcfg", mlp_bytes(seed=2), b"name: {{{ this is not a model config")
    write_repo_model(repo, "binarycfg", mlp_bytes(seed=2), b"\xff\xfe\x00garbage")
    write_repo_model(repo, "vardims", mlp_bytes(seed=2),
                     b'input [{ name: "x" data_type: TYPE_FP32 dims: [-1, 64] }]\n')
    write_repo_model(repo, "garbage", b"\x08\x07 this is not an onnx model")
    d = start("--model-repository", str(repo))
    with d.client() as c:
        assert [m.name for m in c.list_models()] == ["good"]
        assert np.array_equal(c.execute("good", {"x": X})["probs"].shape, (2, 10))
    errors = error_lines(d)
    for name in ("badcfg", "binarycfg", "vardims", "garbage"):
        assert any(f"model {name} from" in line and "not loaded" in line for line in errors), d.log()


# -- the store itself, in process -------------------------------------------------------------------


def test_set_aside_names_never_collide(tmp_path):
    from memserve.state import StateStore

    store = StateStore(tmp_path)
    moved = []
    for _ in range(3):  # the same entry, corrupt again, within the same second
        (tmp_path / "next_id").write_text("garbage")
        restored = store.restore()
        assert restored.next_id == 1 and restored.records == []
        moved += [s.moved_to for s in restored.set_aside]
    assert len(set(moved)) == 3 and all(m.startswith("quarantine/next_id.") for m in moved)
    assert len([n for n in quarantined(tmp_path) if not n.endswith(".reason")]) == 3


def test_remove_touches_nothing_outside_blobs_and_models_and_survives_a_corrupt_manifest(tmp_path):
    from memserve.registry import LoadOptions
    from memserve.state import StateStore

    state = tmp_path / "state"
    store = StateStore(state)
    data = mlp_bytes(seed=1)
    store.save(1, "a", LoadOptions(name="a"), data)
    outside = tmp_path / "x.onnx"
    outside.write_bytes(b"precious")
    (state / "models" / "1.json").write_text(json.dumps({"id": 1, "name": "a", "blob": "../../x", "options": {}}))
    store.remove(1)
    assert outside.read_bytes() == b"precious" and not (state / "models" / "1.json").exists()

    store.save(2, "b", LoadOptions(name="b"), data)
    (state / "models" / "2.json").write_text("{trunc")
    store.remove(2)  # a corrupt manifest is removed; its blob waits for the next start's sweep
    assert not (state / "models" / "2.json").exists()
    (state / "models" / "3.json").symlink_to(outside)
    store.remove(3)  # the link goes, not what it points to
    assert outside.read_bytes() == b"precious" and not os.path.lexists(state / "models" / "3.json")
    store.remove(-1)
    store.remove(0)
    assert store.restore().records == [] and outside.exists()


def test_saving_a_name_removes_the_older_manifests_of_that_name(tmp_path):
    from memserve.registry import LoadOptions
    from memserve.state import StateStore

    store = StateStore(tmp_path)
    store.save(1, "m", LoadOptions(name="m"), mlp_bytes(seed=1))  # e.g. skipped at a start: did not fit
    store.save(2, "other", LoadOptions(name="other"), mlp_bytes(seed=2))
    store.save(3, "m", LoadOptions(name="m"), mlp_bytes(seed=3))
    assert files(tmp_path / "models") == ["2.json", "3.json"]
    assert len(files(tmp_path / "blobs")) == 2  # the old one's bytes went with it
    restored = store.restore()
    assert [(r.model_id, r.name) for r in restored.records] == [(2, "other"), (3, "m")]
    assert restored.set_aside == [] and restored.next_id == 4
