"""Models that survive restarts (`--state-dir`).

Layout: DIR/blobs/<sha256>.onnx holds each distinct model's bytes, DIR/models/<id>.json
its id, name and load options. Every file is written to a temporary name,
fsynced, renamed into place, and the directory fsynced, so a crash at any
point leaves a file whole or absent. A model is restored when its manifest
exists; a manifest is written only after its blob, so a restored model always
has its bytes. At start, temporary files and blobs no manifest names (a crash
between the two writes, or in the middle of an upload) are removed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from dataclasses import dataclass

from .registry import Batching, LoadOptions


@dataclass
class Record:
    model_id: int
    name: str
    options: LoadOptions
    data: bytes


class StateStore:
    def __init__(self, root: str | pathlib.Path):
        self.root = pathlib.Path(root)
        self.blobs = self.root / "blobs"
        self.models = self.root / "models"
        for d in (self.root, self.blobs, self.models):
            d.mkdir(parents=True, exist_ok=True)

    def save(self, model_id: int, name: str, options: LoadOptions, data: bytes) -> None:
        digest = hashlib.sha256(data).hexdigest()
        blob = self.blobs / f"{digest}.onnx"
        if not blob.exists():
            _write(blob, data)
        manifest = {"id": model_id, "name": name, "blob": digest, "options": _options_dict(options)}
        _write(self.models / f"{model_id}.json", json.dumps(manifest, indent=1).encode())
        if model_id >= self.next_id():  # ids are never reused, across restarts too
            _write(self.root / "next_id", str(model_id + 1).encode())

    def next_id(self) -> int:
        path = self.root / "next_id"
        return int(path.read_text()) if path.exists() else 1

    def remove(self, model_id: int) -> None:
        path = self.models / f"{model_id}.json"
        if not path.exists():
            return
        digest = json.loads(path.read_text())["blob"]
        path.unlink()
        _fsync_dir(self.models)
        if digest not in self._referenced():
            (self.blobs / f"{digest}.onnx").unlink(missing_ok=True)
            _fsync_dir(self.blobs)

    def restore(self) -> list[Record]:
        """The saved models, oldest id first, after removing what a crash left half-written."""
        for d in (self.blobs, self.models):
            for tmp in d.glob("*.tmp"):
                tmp.unlink()
        referenced = self._referenced()
        for blob in self.blobs.glob("*.onnx"):
            if blob.stem not in referenced:
                blob.unlink()
        records = []
        for path in self.models.glob("*.json"):
            m = json.loads(path.read_text())
            data = (self.blobs / f"{m['blob']}.onnx").read_bytes()
            records.append(Record(m["id"], m["name"], _options(m["options"]), data))
        return sorted(records, key=lambda r: r.model_id)

    def _referenced(self) -> set[str]:
        return {json.loads(p.read_text())["blob"] for p in self.models.glob("*.json")}


def _write(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _options_dict(o: LoadOptions) -> dict:
    d = dataclasses.asdict(o)
    d["input_shapes"] = {k: list(v) for k, v in o.input_shapes.items()}
    d["replace"] = False
    return d


def _options(d: dict) -> LoadOptions:
    batching = d.pop("batching", None)
    d["input_shapes"] = {k: tuple(v) for k, v in d.get("input_shapes", {}).items()}
    if batching is not None:
        batching = Batching(batching["max_queue_delay_us"], tuple(batching["preferred_batch_sizes"]))
    return LoadOptions(**d, batching=batching)
