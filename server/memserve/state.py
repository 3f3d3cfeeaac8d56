"""Models that survive restarts (`--state-dir`).

Layout: DIR/blobs/<sha256>.onnx holds each distinct model's bytes, DIR/models/<id>.json
its id, name and load options, DIR/next_id the first id not yet given out. Every file
is written to a temporary name, fsynced, renamed into place, and the directory
fsynced, so a crash at any point leaves a file whole or absent. A model is restored
when its manifest exists; a manifest is written only after its blob, so a restored
model always has its bytes. At start, temporary files and blobs no manifest names (a
crash between the two writes, or in the middle of an upload) are removed.

Restarts recover per model. The state directory is trusted no more than a request:
each manifest is checked strictly (its file name is `<id>.json` with that id inside,
`name` a string, `blob` exactly 64 lowercase hex digits, `options` an object whose
keys and types are those of LoadOptions), and its blob must exist and hash to its
name. Blobs are found by digest only: no path is ever built from manifest text, and
nothing outside blobs/ and models/ is ever removed. An entry that fails a check is
set aside, not deleted: moved into DIR/quarantine/ under a unique name (with a
`.reason` file beside it), logged at ERROR, and every other model restores. A
corrupt or missing next_id is set aside and recomputed from the manifests.

Newest acknowledged load of a name wins. Saving a model under a name removes the
manifests of every other id saved under that name (the model it replaces, or a saved
model that did not fit at the last start and was never loaded), so an old one can
never come back over a newer one. If a crash leaves two manifests of one name, the
highest id restores and the older ones are set aside. A saved model that does not fit
at a start keeps its manifest and comes back at a later start that has room for it,
as long as no newer load of its name was saved in between.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import pathlib
import re
import stat
import time
from dataclasses import dataclass

import numpy as np

from .registry import Batching, LoadOptions

log = logging.getLogger("memserve.state")

_MANIFEST_NAME = re.compile(r"[1-9][0-9]{0,17}\.json")  # <id>.json, no sign, no leading zero
_DIGEST = re.compile(r"[0-9a-f]{64}")
_NEXT_ID = re.compile(rb"\s*[1-9][0-9]{0,17}\s*")
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few hundred bytes; a bigger file is not one
_OPTION_FIELDS = {f.name for f in dataclasses.fields(LoadOptions)}
_BATCHING_FIELDS = {f.name for f in dataclasses.fields(Batching)}
_VALUE_TYPES = {"bool", "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                "uint32", "uint64"}


@dataclass
class Record:
    model_id: int
    name: str
    options: LoadOptions
    data: bytes


@dataclass
class SetAside:
    """An entry of the state directory that was not restored: `entry` (relative to the
    state directory) was moved to `moved_to` (None if even the move failed) because of `reason`."""

    entry: str
    reason: str
    moved_to: str | None


@dataclass
class Restored:
    """What `StateStore.restore` found: the models to load (oldest id first), the entries
    set aside, and the first id that new models may take."""

    records: list[Record]
    set_aside: list[SetAside]
    next_id: int


class BadEntry(Exception):
    """An entry of the state directory that fails a check; the message says which."""


@dataclass
class _Manifest:
    path: pathlib.Path
    model_id: int
    name: str
    digest: str
    options: LoadOptions


class StateStore:
    def __init__(self, root: str | pathlib.Path):
        self.root = pathlib.Path(root)
        self.blobs = self.root / "blobs"
        self.models = self.root / "models"
        self.quarantine = self.root / "quarantine"
        for d in (self.root, self.blobs, self.models):
            d.mkdir(parents=True, exist_ok=True)

    # -- while serving ------------------------------------------------------

    def save(self, model_id: int, name: str, options: LoadOptions, data: bytes) -> None:
        """Make a load durable; the manifests of other ids saved under `name` go (newest load wins)."""
        digest = hashlib.sha256(data).hexdigest()
        next_id = self.next_id()  # before the manifest: without a next_id file, it counts the manifests
        blob = self.blobs / f"{digest}.onnx"
        if not _blob_ok(blob, digest):  # absent, or (tampered with) not these bytes: write it whole
            _write(blob, data)
        manifest = {"id": model_id, "name": name, "blob": digest, "options": _options_dict(options)}
        _write(self.models / f"{model_id}.json", json.dumps(manifest, indent=1).encode())
        if model_id >= next_id:  # ids are never reused, across restarts too
            _write(self.root / "next_id", str(model_id + 1).encode())
        # The new manifest is durable: an older one of the same name must never come back over it.
        # (A crash before these removals leaves both; restore keeps the highest id.)
        for other in self._ids_named(name):
            if other != model_id:
                try:
                    self.remove(other)
                except OSError as exc:
                    log.warning("could not remove the superseded saved model %d of name %r: %s (the next "
                                "start sets it aside)", other, name, exc)

    def next_id(self) -> int:
        """The first id not given out yet: the next_id file, or, when that is missing or
        corrupt, one more than the highest manifest id."""
        stored = _read_next_id(self.root / "next_id")
        return stored if stored is not None else self._max_manifest_id() + 1

    def remove(self, model_id: int) -> None:
        """Forget a saved model: its manifest, and its blob unless another manifest names it.
        Touches nothing but models/<id>.json and blobs/<sha256>.onnx; a corrupt manifest is removed
        and its blob left for the next start's sweep."""
        if isinstance(model_id, bool) or not isinstance(model_id, int) or model_id < 1:
            return
        path = self.models / f"{model_id}.json"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            log.error("--state-dir %s: models/%s is a directory, not a manifest; left for the next start to set "
                      "aside", self.root, path.name)
            return
        digest = _digest_of(path)
        path.unlink(missing_ok=True)
        _fsync_dir(self.models)
        if digest is None:
            return
        referenced = self._referenced()
        if referenced is not None and digest not in referenced:
            blob = self.blobs / f"{digest}.onnx"
            if os.path.lexists(blob) and not os.path.isdir(blob):
                blob.unlink()
                _fsync_dir(self.blobs)

    # -- at start -------------------------------------------------------------

    def restore(self) -> Restored:
        """Check every saved model; set aside what fails a check; clean up what a crash left."""
        for d in (self.root, self.blobs, self.models):
            for tmp in d.glob("*.tmp"):
                if tmp.is_file() or tmp.is_symlink():
                    tmp.unlink()
        set_aside: list[SetAside] = []
        highest_id = 0
        manifests: list[_Manifest] = []
        unrestored: set[str] = set()  # digests of set-aside manifests: their blobs go to quarantine/ too
        unknown_owner = False  # a set-aside manifest whose blob is unknown (unreadable): keep every orphan blob
        for path in sorted(self.models.iterdir()):
            if _MANIFEST_NAME.fullmatch(path.name):
                highest_id = max(highest_id, int(path.stem))
            try:
                manifests.append(_parse_manifest(path))
            except BadEntry as bad:
                digest = _digest_of(path)
                if digest is not None:
                    unrestored.add(digest)
                else:
                    unknown_owner = True
                set_aside.append(self._set_aside(path, f"not a valid manifest: {bad}"))

        # Blobs: each must be a regular file whose sha256 is its name.
        blobs: dict[str, bytes | str] = {}  # digest -> bytes, or why the blob is bad
        good: list[_Manifest] = []
        for m in manifests:
            if m.digest not in blobs:
                blobs[m.digest] = self._read_blob(m.digest, set_aside)
            blob = blobs[m.digest]
            if isinstance(blob, str):
                set_aside.append(self._set_aside(m.path, f"model {m.name!r} (id {m.model_id}): {blob}"))
            else:
                good.append(m)

        # Newest acknowledged load of a name wins.
        newest: dict[str, _Manifest] = {}
        for m in sorted(good, key=lambda m: m.model_id):
            newest[m.name] = m
        winners = sorted(newest.values(), key=lambda m: m.model_id)
        for m in good:
            if newest[m.name] is not m:
                set_aside.append(self._set_aside(
                    m.path, f"model {m.name!r} (id {m.model_id}) was superseded by a newer load of its name "
                    f"(id {newest[m.name].model_id})"))

        # Blobs no restored manifest names: those of set-aside models go with them to quarantine/
        # (so they can be recovered by hand), as does every well-named one when a set-aside manifest
        # could not even be read; any other is what a crash left, and is removed.
        referenced = {m.digest for m in winners}
        unrestored |= {m.digest for m in good}
        for blob in sorted(self.blobs.glob("*.onnx")):
            if blob.stem in referenced or not (blob.is_file() or blob.is_symlink()):
                continue
            if blob.stem in unrestored or (unknown_owner and _DIGEST.fullmatch(blob.stem)):
                self._set_aside(blob, "model bytes no restored manifest names, kept with the set-aside "
                                      "manifests", quiet=True)
            else:
                blob.unlink()
        _fsync_dir(self.blobs)

        next_id = self._restore_next_id(highest_id, set_aside)
        records = [Record(m.model_id, m.name, m.options, blobs[m.digest]) for m in winners]
        return Restored(records, set_aside, next_id)

    def _read_blob(self, digest: str, set_aside: list[SetAside]) -> bytes | str:
        """The blob's bytes, or why it cannot be used (a bad blob itself goes to quarantine/)."""
        path = self.blobs / f"{digest}.onnx"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return f"its model bytes blobs/{path.name} are missing"
        if not stat.S_ISREG(st.st_mode):
            set_aside.append(self._set_aside(path, "not a regular file"))
            return f"its model bytes blobs/{path.name} are not a regular file"
        try:
            data = path.read_bytes()
        except OSError as exc:
            return f"its model bytes blobs/{path.name} cannot be read: {exc}"
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            set_aside.append(self._set_aside(path, f"its content has sha256 {actual}, not its name"))
            return f"its model bytes blobs/{path.name} do not match their digest (sha256 {actual})"
        return data

    def _restore_next_id(self, highest_id: int, set_aside: list[SetAside]) -> int:
        path = self.root / "next_id"
        stored = _read_next_id(path)
        if stored is None and os.path.lexists(path):
            set_aside.append(self._set_aside(path, f"not a positive integer; recomputed from the manifests "
                                                   f"as {highest_id + 1}"))
        next_id = max(stored or 1, highest_id + 1)
        if next_id != (stored or 1):
            _write(path, str(next_id).encode())
        return next_id

    def _set_aside(self, path: pathlib.Path, reason: str, *, quiet: bool = False) -> SetAside:
        """Move an entry into quarantine/ under a name no other entry has, with its reason beside it."""
        entry = str(path.relative_to(self.root))
        try:
            self.quarantine.mkdir(exist_ok=True)
            base = f"{entry.replace('/', '-')}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            target, k = self.quarantine / base, 1
            while os.path.lexists(target) or os.path.lexists(f"{target}.reason"):
                target, k = self.quarantine / f"{base}.{k}", k + 1
            os.rename(path, target)
            _fsync_dir(path.parent)
            moved_to = str(target.relative_to(self.root))
        except OSError as exc:
            log.error("could not move %s of --state-dir %s into quarantine/: %s", entry, self.root, exc)
            moved_to = None
        else:
            try:
                _write(target.with_name(target.name + ".reason"), f"{entry}: {reason}\n".encode())
            except OSError:
                pass  # the log line below says it too
        if not quiet:
            log.error("--state-dir %s: set aside %s (moved to %s): %s", self.root, entry, moved_to, reason)
        return SetAside(entry, reason, moved_to)

    # -- reading manifests while serving ----------------------------------------

    def _manifests(self):
        """(id, manifest object or None if it cannot be read) for every models/<id>.json."""
        for path in self.models.glob("*.json"):
            if _MANIFEST_NAME.fullmatch(path.name):
                yield int(path.stem), _read_json(path)

    def _ids_named(self, name: str) -> list[int]:
        return [i for i, m in self._manifests() if isinstance(m, dict) and m.get("name") == name]

    def _max_manifest_id(self) -> int:
        return max((i for i, _ in self._manifests()), default=0)

    def _referenced(self) -> set[str] | None:
        """The digests the manifests name; None if some manifest cannot be read (keep every blob)."""
        digests = set()
        for _, m in self._manifests():
            digest = m.get("blob") if isinstance(m, dict) else None
            if not (isinstance(digest, str) and _DIGEST.fullmatch(digest)):
                return None
            digests.add(digest)
        return digests


def _parse_manifest(path: pathlib.Path) -> _Manifest:
    if not _MANIFEST_NAME.fullmatch(path.name):
        raise BadEntry("its file name is not <id>.json")
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise BadEntry("not a regular file")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise BadEntry(f"{st.st_size} bytes is too large for a manifest")
    try:
        m = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:  # truncated, garbage, not UTF-8, absurdly nested
        raise BadEntry(f"not JSON: {exc}") from None
    except OSError as exc:
        raise BadEntry(f"cannot be read: {exc}") from None
    if not isinstance(m, dict):
        raise BadEntry(f"a JSON {type(m).__name__}, not an object")
    if set(m) != {"id", "name", "blob", "options"}:
        raise BadEntry(f"its keys are {sorted(m)}, not ['blob', 'id', 'name', 'options']")
    model_id, name, digest, options = m["id"], m["name"], m["blob"], m["options"]
    if not _is_int(model_id) or model_id < 1:
        raise BadEntry(f"id {model_id!r} is not a positive integer")
    if model_id != int(path.stem):
        raise BadEntry(f"id {model_id} does not match its file name")
    if not isinstance(name, str) or not name:
        raise BadEntry(f"name {name!r} is not a non-empty string")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise BadEntry(f"blob {digest!r} is not a sha256 digest (64 lowercase hex digits)")
    load_options = _options(options)
    if (load_options.name or f"model-{model_id}") != name:
        raise BadEntry(f"options name {load_options.name!r} does not match name {name!r}")
    return _Manifest(path, model_id, name, digest, load_options)


def _blob_ok(path: pathlib.Path, digest: str) -> bool:
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        return hashlib.sha256(path.read_bytes()).hexdigest() == digest
    except OSError:
        return False


def _read_json(path: pathlib.Path):
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode) or os.path.getsize(path) > MAX_MANIFEST_BYTES:
            return None
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None


def _digest_of(path: pathlib.Path) -> str | None:
    m = _read_json(path)
    digest = m.get("blob") if isinstance(m, dict) else None
    return digest if isinstance(digest, str) and _DIGEST.fullmatch(digest) else None


def _read_next_id(path: pathlib.Path) -> int | None:
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode) or os.path.getsize(path) > 64:
            return None
        text = path.read_bytes()
    except OSError:
        return None
    return int(text) if _NEXT_ID.fullmatch(text) else None


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
    d["input_values"] = {k: {"dtype": v.dtype.name, "shape": list(v.shape), "values": v.reshape(-1).tolist()}
                         for k, v in o.input_values.items()}
    d["replace"] = False
    return d


def _input_values(d) -> dict[str, np.ndarray]:
    """Saved input_values back as arrays, each entry's type, shape and count checked (BadEntry if not)."""
    if not isinstance(d, dict):
        raise BadEntry(f"options.input_values {d!r:.80} is not an object")
    values = {}
    for name, e in d.items():
        ok = isinstance(e, dict) and set(e) == {"dtype", "shape", "values"} and isinstance(e["values"], list) \
            and isinstance(e["shape"], list) and all(_is_int(x) and x >= 0 for x in e["shape"]) \
            and e["dtype"] in _VALUE_TYPES and len(e["values"]) == math.prod(e["shape"])
        if not ok:
            raise BadEntry(f"options.input_values[{name[:64]!r}] is not a dtype, shape and matching values")
        try:
            values[name] = np.array(e["values"], np.dtype(e["dtype"])).reshape(e["shape"])
        except (TypeError, ValueError, OverflowError) as exc:
            raise BadEntry(f"options.input_values[{name[:64]!r}]: {exc}") from None
    return values


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _options(d) -> LoadOptions:
    """Saved options back as LoadOptions, every key and type checked (BadEntry if not)."""
    if not isinstance(d, dict):
        raise BadEntry(f"options is a JSON {type(d).__name__}, not an object")
    unknown = sorted(set(d) - _OPTION_FIELDS)
    if unknown:
        raise BadEntry(f"options has unknown keys {unknown}")
    for key, kind in (("name", str), ("workspace", str), ("replace", bool)):
        if key in d and not isinstance(d[key], kind):
            raise BadEntry(f"options.{key} {d[key]!r} is not a {kind.__name__}")
    for key, low in (("max_batch", 0), ("instances", 1)):
        if key in d and not (_is_int(d[key]) and d[key] >= low):
            raise BadEntry(f"options.{key} {d[key]!r} is not an integer >= {low}")
    shapes = d.get("input_shapes", {})
    if not isinstance(shapes, dict) or not all(
            isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v) for v in shapes.values()):
        raise BadEntry(f"options.input_shapes {shapes!r} is not an object of lists of dimensions")
    batching = d.get("batching")
    if batching is not None:
        if not isinstance(batching, dict) or set(batching) != _BATCHING_FIELDS:
            raise BadEntry(f"options.batching {batching!r} is not an object with keys {sorted(_BATCHING_FIELDS)}")
        delay, sizes = batching["max_queue_delay_us"], batching["preferred_batch_sizes"]
        if not (_is_int(delay) and delay >= 0) or not (
                isinstance(sizes, list) and all(_is_int(x) and x >= 1 for x in sizes)):
            raise BadEntry(f"options.batching {batching!r} has a wrong type or a negative value")
        batching = Batching(delay, tuple(sizes))
    fields = {k: v for k, v in d.items() if k not in ("input_shapes", "batching", "replace", "input_values")}
    values = _input_values(d.get("input_values", {}))
    try:
        return LoadOptions(**fields, input_shapes={k: tuple(v) for k, v in shapes.items()}, replace=False,
                           batching=batching, input_values=values)
    except (TypeError, ValueError) as exc:
        raise BadEntry(f"options are not LoadOptions: {exc}") from None
