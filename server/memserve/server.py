"""Builds the gRPC server: the native API, health and reflection on one port."""
from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from memserve_client.pb.inference import grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2
from memserve_client.pb.memserve.v1 import memserve_pb2, memserve_pb2_grpc

from .api.auth import TokenInterceptor, read_token
from .api.kserve import KServeServicer, load_options
from .api.native import NativeServicer
from .config import Config
from .device import make_device
from .errors import InvalidArgument, MemserveError
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
        if config.threads:
            from threadpoolctl import threadpool_limits

            threadpool_limits(config.threads)
        self.device = make_device(config.device, config.device_memory)
        self.metrics = Metrics()
        self.registry = Registry(self.device, config.max_queue, self.metrics)
        self.metrics.watch(self.registry)
        self.health = health.HealthServicer()
        limit = config.max_message_size
        interceptors = []
        if config.admin_token_file:
            interceptors.append(TokenInterceptor(read_token(config.admin_token_file), config.require_token_for_execute))
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="grpc"),
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
            interceptors=interceptors,
        )
        memserve_pb2_grpc.add_MemserveServicer_to_server(
            NativeServicer(self.registry, config.max_model_size), self.server)
        repository = ModelRepository(config.model_repository) if config.model_repository else None
        self.kserve = KServeServicer(self.registry, repository)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.kserve, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [NATIVE_SERVICE, KSERVE_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME],
            self.server)
        address = f"{config.host}:{config.port}"
        credentials = tls_credentials(config)
        self.port = self.server.add_secure_port(address, credentials) if credentials else \
            self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {config.host}:{config.port}")

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
        self.restore()
        self.load_repository()
        self.metrics_port = self.metrics.serve(self.config.host, self.config.metrics_port) \
            if self.config.metrics_port >= 0 else None
        self.server.start()
        for service in ("", NATIVE_SERVICE, KSERVE_SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float) -> None:
        """Graceful: health says NOT_SERVING, new calls get UNAVAILABLE, running and queued work
        finishes (up to `grace` seconds), then every model is unloaded."""
        self.kserve.serving = False
        self.health.enter_graceful_shutdown()
        self.registry.draining = True
        self.server.stop(grace).wait()
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


def run(config: Config) -> int:
    daemon = Daemon(config)
    daemon.start()
    metrics = f", metrics on {config.host}:{daemon.metrics_port}" if daemon.metrics_port else ""
    print(f"memserved listening on {config.host}:{daemon.port} "
          f"(device {daemon.device.name}, {daemon.device.capacity} bytes{metrics})", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down: finishing running and queued work for up to %s s", config.shutdown_grace)
    daemon.stop(config.shutdown_grace)
    log.info("stopped")
    return 0

