"""A curl-like HTTP client for the daemon's REST port (urllib only), shared by the REST tests."""
from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self):
        """The JSON part of the body (all of it without Inference-Header-Content-Length)."""
        n = self.headers.get("inference-header-content-length")
        return json.loads(self.body[: int(n)] if n is not None else self.body)

    @property
    def error(self) -> str:
        return self.json()["error"]

    def binary(self) -> bytes:
        n = self.headers.get("inference-header-content-length")
        return self.body[int(n):] if n is not None else b""


def http(address: str, method: str, path: str, body: bytes | str | dict | None = None,
         headers: dict | None = None, timeout: float = 30) -> Reply:
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    req = urllib.request.Request(f"http://{address}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


def binary_request(header: dict, *tensors: bytes) -> tuple[bytes, dict]:
    """A body of Triton's binary-data extension: the JSON, then the tensors' bytes; and its header."""
    text = json.dumps(header).encode()
    body = struct.pack(f"{len(text)}s", text) + b"".join(tensors)
    return body, {"Inference-Header-Content-Length": str(len(text))}


def infer_json(name: str, x: np.ndarray, datatype: str = "FP32", nested: bool = False, **extra) -> dict:
    data = x.tolist() if nested else x.reshape(-1).tolist()
    return {"inputs": [{"name": name, "datatype": datatype, "shape": list(x.shape), "data": data}], **extra}
