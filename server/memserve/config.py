"""Daemon configuration: one dataclass, filled from flags, MEMSERVE_* variables and a file.

Precedence, highest first: command-line flags, environment variables
(MEMSERVE_<FLAG>, e.g. MEMSERVE_DEVICE_MEMORY=4GiB), the TOML file given by
--config or MEMSERVE_CONFIG (keys as the flags, e.g. device-memory = "4GiB"),
built-in defaults.
"""
from __future__ import annotations

import argparse
import os
import re
import tomllib
from dataclasses import dataclass

_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
# Decimal or bare units: 4GB is 4e9 bytes to a disk vendor and 4 * 2^30 to most people; refused, not guessed.
_AMBIGUOUS = {"k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12}


def parse_size(text: str) -> int:
    """'512MiB' -> 536870912; plain numbers are bytes; KiB, MiB, GiB, TiB are powers of 1024."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if m and unit in _AMBIGUOUS:
        binary = f"{m.group(1)}{unit[0].upper()}iB"
        raise argparse.ArgumentTypeError(
            f"{text!r} is ambiguous: write {binary} ({parse_size(binary)} bytes) or "
            f"{int(float(m.group(1)) * _AMBIGUOUS[unit])} (bytes)")
    if not m or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 1048576, 512MiB, 4GiB)")
    return int(float(m.group(1)) * _UNITS[unit])


MAX_THREADS = 256


def _threads(text: str) -> int:
    """--threads: kernel threads per call, 0 for every core this process may use."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a thread count (0 for every core, or 1 to {MAX_THREADS})")
    return n


def host_ram() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 * 2**30


def default_device_memory() -> int:
    """Half of the host's RAM: the rest stays for the process and the OS."""
    return host_ram() // 2


def default_load_memory(device_memory: int) -> int:
    """Enough load-time memory for a model as large as the device (upload, parsed model and weights:
    about 4x its size), at most the RAM."""
    return min(4 * device_memory, host_ram())


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 50051
    http_port: int = 8000  # the Open Inference Protocol over HTTP/REST (Triton's port); -1: none; 0: a free port
    device: str = "cpu"
    device_memory: int = 0  # 0: default_device_memory()
    max_model_size: int = 2 * 2**30
    max_message_size: int = 64 * 2**20
    max_load_memory: int = 0  # 0: 4x --device-memory, at most the RAM
    max_queue: int = 1024
    workers: int = 64
    # BLAS threads per kernel call; 0 leaves numpy's default (all cores). 1 by default: with all
    # cores, one busy process elsewhere made conv-heavy models several times slower (bench/busy.py)
    threads: int = 1
    model_repository: str = ""
    metrics_port: int = 8002  # Triton's metrics port; -1: no metrics endpoint; 0: a free port
    shutdown_grace: float = 30.0
    state_dir: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""  # set: clients must present a certificate signed by it (mutual TLS)
    admin_token_file: str = ""
    require_token_for_execute: bool = False  # Triton-style DIR/<name>/<version>/model.onnx, loaded on request
    log_level: str = "INFO"
    log_format: str = "text"
    config: str = ""


def parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(prog="memserved", description="memserve: a gRPC model-serving daemon")
    p.add_argument("--host", default=d.host, help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port,
                   help="gRPC port (native API and the Open Inference Protocol); 0 picks a free one "
                        "(default %(default)s)")
    p.add_argument("--http-port", type=int, default=d.http_port,
                   help="HTTP/REST port of the Open Inference Protocol (KServe v2, as Triton serves it) on --host; "
                        "0 picks a free one, -1 serves none (default %(default)s)")
    p.add_argument("--device", default=d.device, help="device kind (default %(default)s)")
    p.add_argument("--device-memory", type=parse_size, default=0,
                   help="device memory capacity, e.g. 512MiB or 4GiB (default: half of RAM)")
    p.add_argument("--max-model-size", type=parse_size, default=d.max_model_size,
                   help="largest model upload accepted (default 2GiB)")
    p.add_argument("--max-load-memory", type=parse_size, default=0,
                   help="host memory that loads in flight may hold together: upload staging, the parsed model, "
                        "folded constants (default: 4x --device-memory, at most the RAM); a load past it gets RESOURCE_EXHAUSTED")
    p.add_argument("--max-message-size", type=parse_size, default=d.max_message_size,
                   help="largest gRPC message, or HTTP request body, accepted or sent (default 64MiB)")
    p.add_argument("--max-queue", type=int, default=d.max_queue,
                   help="requests that may wait on one workspace (default %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="gRPC handler threads, and HTTP requests in flight at once (default %(default)s)")
    p.add_argument("--threads", type=_threads, default=d.threads,
                   help="threads one kernel call may use (default %(default)s; 0: every core): large convolutions "
                        "split over one team of helper threads that all models share, compiled kernels use as "
                        "many, BLAS always one; models on different workspaces also run side by side on their "
                        "lanes (see docs/performance.md)")
    p.add_argument("--model-repository", default="", metavar="DIR",
                   help="Triton-style model repository (DIR/<name>/<version>/model.onnx and config.pbtxt): "
                        "every model in it is loaded at start, and RepositoryModelLoad (re)loads by name")
    p.add_argument("--metrics-port", type=int, default=d.metrics_port,
                   help="Prometheus /metrics HTTP port on --host (default %(default)s; 0 picks a free one, -1 none)")
    p.add_argument("--state-dir", default="", metavar="DIR",
                   help="keep loaded models here: a load is durable before it is acknowledged, and every saved "
                        "model is restored at start with its id, name and options; unload removes it")
    p.add_argument("--shutdown-grace", type=float, default=d.shutdown_grace,
                   help="seconds SIGTERM waits for running and queued requests (default %(default)s)")
    p.add_argument("--tls-cert", default="", help="PEM certificate chain: serve TLS only")
    p.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", default="", help="PEM CA bundle: require client certificates (mutual TLS)")
    p.add_argument("--admin-token-file", default="",
                   help="file holding the bearer token that Load, Unload, QuerySize and the repository RPCs require")
    p.add_argument("--require-token-for-execute", action="store_true",
                   help="require the admin token for executions too")
    p.add_argument("--log-level", default=d.log_level, help="DEBUG, INFO, WARNING or ERROR (default %(default)s)")
    p.add_argument("--log-format", choices=["text", "json"], default=d.log_format,
                   help="one line per event, as text or as JSON (default %(default)s)")
    p.add_argument("--config", default="", metavar="FILE",
                   help="TOML file of settings (keys as these flags); flags and MEMSERVE_* variables win")
    return p


def from_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    p = parser()
    actions = {a.dest: a for a in p._actions if a.dest != "help"}
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=environ.get("MEMSERVE_CONFIG", ""))
    path = pre.parse_known_args(argv)[0].config
    defaults = {}
    if path:
        for key, value in _read_file(path).items():
            dest = key.replace("-", "_")
            if dest not in actions:
                p.error(f"{path}: unknown setting {key!r}")
            defaults[dest] = _convert(p, actions[dest], value, f"{path}: {key}")
    for dest, action in actions.items():
        name = f"MEMSERVE_{dest.upper()}"
        if name in environ:
            defaults[dest] = _convert(p, action, environ[name], name)
    p.set_defaults(**defaults)
    ns = p.parse_args(argv)
    cfg = Config(**vars(ns))
    if cfg.device == "cpu" and cfg.device_memory > host_ram():
        p.error(f"--device-memory {cfg.device_memory} bytes is more than this machine's RAM ({host_ram()} bytes), "
                "which the cpu device's memory is; leave it out for half the RAM")
    cfg.device_memory = cfg.device_memory or default_device_memory()
    cfg.max_load_memory = cfg.max_load_memory or default_load_memory(cfg.device_memory)
    return cfg


def _read_file(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SystemExit(f"memserved: cannot read --config {path}: {exc}") from None


def _convert(p: argparse.ArgumentParser, action: argparse.Action, value, where: str):
    """A file or environment value as the flag's parser would have made it."""
    if isinstance(action, argparse._StoreTrueAction):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
    if action.type is None or not isinstance(value, str) and action.type in (int, float):
        return value
    try:
        return action.type(value) if isinstance(value, str) else action.type(str(value))
    except (ValueError, argparse.ArgumentTypeError) as exc:
        p.error(f"{where}: {exc}")
