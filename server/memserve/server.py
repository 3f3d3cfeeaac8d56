"""Builds the servers: gRPC (the native API, the Open Inference Protocol, health and reflection) on one port,
the Open Inference Protocol over HTTP/REST on another (--http-port), metrics on a third."""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
import socket
import ssl
import sys
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from memserve_api.pb.inference import grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2
from memserve_api.pb.memserve.v1 import memserve_pb2, memserve_pb2_grpc

from .api.auth import TokenInterceptor, read_token
from .api.kserve import KServeServicer, load_options
from .api.native import NativeServicer
from .api.rest import RestServer
from .api.streams import StreamLimit
from . import hostmem
from .config import Config
from .device import make_device
from .errors import InvalidArgument, MemserveError
from .kernels import parallel
from .metrics import Metrics
from .registry import Registry
from .repository import ModelRepository
from .state import StateStore

log = logging.getLogger("memserve")
NATIVE_SERVICE = memserve_pb2.DESCRIPTOR.services_by_name["Memserve"].full_name
KSERVE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class Daemon:
    """The registry on its device, served over gRPC."""

    def __init__(self, config: Config):
        self.config = config
        parallel.set_threads(config.threads)  # BLAS at one thread, numba's and the kernel team at --threads
        self.device = make_device(config.device, config.device_memory)
        self.metrics = Metrics()
        self.registry = Registry(self.device, config.max_queue, self.metrics, config.max_load_memory)
        self.metrics.watch(self.registry)
        self.health = health.HealthServicer()
        limit = config.max_message_size
        interceptors = []
        token = read_token(config.admin_token_file) if config.admin_token_file else None
        if token is not None:
            interceptors.append(TokenInterceptor(token, config.require_token_for_execute))
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="grpc"),
            # so_reuseport 0: the port is ours alone (gRPC's default would let a second daemon share it).
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                     ("grpc.so_reuseport", 0)],
            interceptors=interceptors,
        )
        # Streams hold a worker thread while open: half the workers stay free for unary calls.
        streams = StreamLimit(max(1, config.workers // 2))
        memserve_pb2_grpc.add_MemserveServicer_to_server(
            NativeServicer(self.registry, config.max_model_size, streams), self.server)
        repository = ModelRepository(config.model_repository) if config.model_repository else None
        self.kserve = KServeServicer(self.registry, repository, streams)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.kserve, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [NATIVE_SERVICE, KSERVE_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME],
            self.server)
        address = f"{config.host}:{config.port}"
        credentials = tls_credentials(config)
        check_port_free(config.host, config.port, "--port")
        if config.http_port >= 0:
            check_port_free(config.host, config.http_port, "--http-port")
        try:
            self.port = self.server.add_secure_port(address, credentials) if credentials else \
                self.server.add_insecure_port(address)
        except RuntimeError:  # gRPC: "Failed to bind to address ..."
            self.port = 0
        if self.port == 0:
            raise ListenError(f"cannot listen on {config.host} port {config.port}: the address is in use or "
                              "not available here; choose another --port (0 picks a free one)")
        # The HTTP/REST front, on a socket bound and listening now: its port is ours from here on.
        self.rest = None
        if config.http_port >= 0:
            sock = listen_socket(config.host, config.http_port, "--http-port")
            self.rest = RestServer(self.registry, repository, sock, max_body=limit, limit=config.workers, token=token,
                                   guard_execute=config.require_token_for_execute, ssl_context=tls_context(config))
        self.http_port = self.rest.port if self.rest is not None else None

    def load_repository(self) -> None:
        """Load every model of --model-repository, so that every replica serves the same models.

        Each entry stands alone: one that cannot be read, parsed, compiled or fitted is skipped
        with an ERROR line and the others load. A name already loaded (restored from --state-dir,
        which wins) is skipped with a warning. These loads are not saved in --state-dir, so a
        repository model never replaces or removes an uploaded model's saved state."""
        repo = self.kserve.repository
        if repo is None:
            return
        try:
            names = repo.names()
        except OSError as exc:
            log.error("--model-repository %s cannot be listed; no model loaded from it: %s", repo.root, exc)
            return
        for name in names:
            try:
                if any(m.name == name for m in self.registry.list()):
                    log.warning("model %s from %s was not loaded: a model of that name was restored from "
                                "--state-dir, and that one is kept", name, repo.root, extra={"model": name})
                    continue
                data, config = repo.read(name)
                options = load_options(name, config or model_config_pb2.ModelConfig())
                self.registry.load(data, dataclasses.replace(options, replace=False), persist=False)
            except MemserveError as err:
                log.error("model %s from %s was not loaded: %s", name, repo.root, err.message, extra={"model": name})
            except Exception:  # start-up survives any one bad entry (DESIGN.md, hostile input)
                log.exception("model %s from %s was not loaded", name, repo.root, extra={"model": name})

    def restore(self) -> None:
        """Bring back every model saved in --state-dir, under its id, name and options.

        Entries that fail a check were set aside by StateStore.restore (quarantine/); a model
        that fails to load (it no longer fits, say) is logged and keeps its saved state, so it
        comes back at a later start unless a newer load of its name replaces it."""
        if not self.config.state_dir:
            return
        self.registry.state = store = StateStore(self.config.state_dir)
        restored = store.restore()
        self.registry.reserve_ids(restored.next_id)
        for record in restored.records:
            try:
                self.registry.load(record.data, record.options, model_id=record.model_id)
            except MemserveError as err:
                log.error("saved model %s (id %d) was not restored: %s (its saved state is kept)", record.name,
                          record.model_id, err.message, extra={"model": record.name})
            except Exception:  # start-up survives any one bad saved model
                log.exception("saved model %s (id %d) was not restored (its saved state is kept)", record.name,
                              record.model_id, extra={"model": record.name})

    def start(self) -> None:
        # The metrics port first: a taken port fails the start before any model is loaded.
        self.metrics_port = self.serve_metrics() if self.config.metrics_port >= 0 else None
        self.restore()
        self.load_repository()
        self.server.start()
        if self.rest is not None:
            self.rest.start()
        for service in ("", NATIVE_SERVICE, KSERVE_SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def serve_metrics(self) -> int:
        host, port = self.config.host, self.config.metrics_port
        try:
            return self.metrics.serve(host, port)
        except OSError as exc:
            raise ListenError(f"cannot serve metrics on {host} port {port}: {_reason(exc)}; choose another "
                              "--metrics-port (0 picks a free one, -1 serves none)") from None

    def stop(self, grace: float) -> None:
        """Graceful: health says NOT_SERVING, new calls get UNAVAILABLE, running and queued work
        finishes (up to `grace` seconds), then every model is unloaded."""
        self.kserve.serving = False
        if self.rest is not None:
            self.rest.serving = False  # /v2/health/ready answers 400 from here on
        self.health.enter_graceful_shutdown()
        self.registry.draining = True
        # Two phases: while queued work drains, the port stays open and new calls reach the registry,
        # which answers UNAVAILABLE (grpc's own stop would cancel them instead); then the port closes.
        until = time.monotonic() + grace
        self.registry.wait_idle(grace)
        stopped = self.server.stop(max(until - time.monotonic(), 0.0))
        if self.rest is not None:
            self.rest.stop(max(until - time.monotonic(), 0.0))
        stopped.wait()
        self.registry.close()


def tls_credentials(config: Config) -> grpc.ServerCredentials | None:
    if not (config.tls_cert or config.tls_key):
        if config.tls_client_ca:
            raise InvalidArgument("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (config.tls_cert and config.tls_key):
        raise InvalidArgument("TLS needs both --tls-cert and --tls-key")
    try:
        key, cert = (open(p, "rb").read() for p in (config.tls_key, config.tls_cert))
        ca = open(config.tls_client_ca, "rb").read() if config.tls_client_ca else None
    except OSError as exc:
        raise InvalidArgument(f"cannot read a TLS file: {exc}") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The HTTP server's TLS, from the same files as gRPC's (tls_credentials checks them first)."""
    if not (config.tls_cert and config.tls_key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
        if config.tls_client_ca:
            context.load_verify_locations(config.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgument(f"cannot use the TLS files for HTTP: {exc}") from None
    return context


class ListenError(OSError):
    """A port the daemon cannot have (in use, not permitted); `memserved` prints it on one line and exits 2."""


def check_port_free(host: str, port: int, flag: str) -> None:
    """Refuse a port another process listens on, with a message that names it and its flag, before gRPC
    tries to bind it (gRPC would only log lines of its own)."""
    if port <= 0:
        return
    try:
        addresses = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # the server reports an address it cannot resolve
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no owner
                probe.bind(address)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise ListenError(f"cannot listen on {host} port {port}: {_reason(exc)}; choose another {flag} "
                                  "(0 picks a free one)") from None


def listen_socket(host: str, port: int, flag: str) -> socket.socket:
    """A socket bound exclusively (SO_REUSEADDR as gRPC sets it, never SO_REUSEPORT) and listening on
    host:port (0: a free port); a port another process has is a ListenError naming the flag."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host} port {port}: {exc.strerror}; choose another --host") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host} port {port}: {_reason(exc)}; choose another {flag} "
                          "(0 picks a free one, -1 serves none)") from None
    return sock


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the address is already in use (another process listens on it)"
    return (exc.strerror or str(exc)).lower()


class StopSignals:
    """SIGINT and SIGTERM, caught async-signal-safely; the first one stops the daemon, the rest are ignored.

    Create it in the main thread before any other thread starts: it blocks both signals there, so every
    thread started later (gRPC's, the metrics server's, the lanes') inherits the block and never takes one.
    Python's C-level handler, in whichever thread the kernel picks (the main thread, or a native thread that
    was already running: BLAS pools start when numpy is imported), only writes the signal number to a pipe
    (signal.set_wakeup_fd); the Python-level handler does nothing. No lock is taken in a handler, so a burst
    of signals cannot deadlock the main thread (a threading.Event set from the handler did), and no signal is
    lost: one that arrives while the daemon starts is answered once it has started.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self._read, write = os.pipe()
        os.set_blocking(write, False)  # a full pipe drops the byte: one is enough
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        for sig in self.SIGNALS:
            signal.signal(sig, _ignore)  # never SIG_DFL again: a late SIGTERM must not kill a draining daemon
        signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)

    def wait(self) -> signal.Signals:
        """Block until the first SIGINT or SIGTERM (one that came during the start returns at once)."""
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.SIGNALS)  # main thread only; a pending one arrives now
        while True:
            data = os.read(self._read, 1)
            if data and data[0] in self.SIGNALS:
                return signal.Signals(data[0])

    def ignored(self) -> int:
        """How many more of them arrived since wait() returned (a burst, as a process-group kill sends)."""
        os.set_blocking(self._read, False)
        n = 0
        try:
            while data := os.read(self._read, 4096):
                n += sum(b in self.SIGNALS for b in data)
        except BlockingIOError:
            pass
        return n


def _ignore(signum, frame) -> None:
    """The Python-level handler: all the work is the wakeup byte Python's C handler already wrote."""


def run(config: Config) -> int:
    signals = StopSignals()  # before Daemon() starts any thread
    hostmem.keep_tensor_memory()
    daemon = None
    try:
        daemon = Daemon(config)
        daemon.start()
    except (ListenError, MemserveError) as err:  # a busy port, an unknown device: one line, no traceback
        if daemon is not None:
            daemon.server.stop(None)
            if daemon.rest is not None:
                daemon.rest.stop(0)
        print(f"memserved: {getattr(err, 'message', err)}", file=sys.stderr, flush=True)
        return 2
    # One line that scripts parse: "listening on HOST:PORT (http on HOST:PORT, ..., metrics on HOST:PORT)".
    http = f"http on {config.host}:{daemon.http_port}, " if daemon.http_port else ""
    metrics = f", metrics on {config.host}:{daemon.metrics_port}" if daemon.metrics_port else ""
    print(f"memserved listening on {config.host}:{daemon.port} "
          f"({http}device {daemon.device.name}, {daemon.device.capacity} bytes{metrics})", flush=True)
    sig = signals.wait()
    log.info("%s: shutting down: finishing running and queued work for up to %s s", sig.name,
             config.shutdown_grace)
    daemon.stop(config.shutdown_grace)
    if ignored := signals.ignored():
        log.info("%d more stop signals arrived during the drain and were ignored", ignored)
    log.info("stopped")
    return 0

