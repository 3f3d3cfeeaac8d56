"""The Open Inference Protocol (KServe v2) over HTTP/REST, as Triton serves it, on --http-port.

Over the same registry as the gRPC servicers: a model loaded through any API is visible, executable and
unloadable through every other. The protocol-neutral parts (datatypes, metadata, configuration,
statistics, the repository) come from v2.py; this module is the HTTP edge: routes, JSON tensors, Triton's
binary-data extension (Inference-Header-Content-Length), errors as {"error": message} with Triton's HTTP
statuses, and the admin token. docs/kserve.md lists the endpoints.

An aiohttp application runs on its own event loop in its own thread. Everything that can block (JSON
parsing and decoding, loads and unloads, submitting a request, which may run the model on the calling
thread, and encoding the answer) runs on a bounded thread pool, never on the loop; a request's answer is
awaited without holding a thread. At most `limit` requests are in flight at once: past that the daemon
answers 503 at once instead of queueing without bound.

Every byte is checked before it costs memory (docs/security.md): the body is capped at
--max-message-size (413); the JSON header's values and lists are counted (a byte count, no parsing)
against what the model can take before it is parsed; shapes, element counts, datatypes and input names
are checked against the model before any tensor is built; JSON values are type-checked and decoded
straight into one array.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import socket
import ssl
import threading
import time
from concurrent import futures

import grpc
import numpy as np
from aiohttp import web

from .. import limits
from ..errors import ACL_FAILURE, InputMismatch, InvalidArgument, MemserveError, NotFound, Unavailable
from ..registry import LoadedModel, Pending, Registry
from . import decode, v2
from .auth import denial
from .calls import deadlines
from .status import shorten

log = logging.getLogger("memserve.api")

HEADER_LENGTH = "Inference-Header-Content-Length"
BODY_SECONDS = 60.0  # a request body must arrive within this (408), so slow senders cannot hold slots
JSON_ALLOWANCE = 4096  # JSON values and lists beyond the tensors' (names, parameters, outputs)

# MemserveError -> HTTP status: Triton's mapping where Triton has the code (invalid argument, already
# exists, cancelled 400; not found 404; unavailable 503; unimplemented 501; internal 500), the gRPC-HTTP
# mapping of google.rpc.Code for the others.
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "ALREADY_EXISTS": 400, "CANCELLED": 400, "FAILED_PRECONDITION": 400,
               "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
               "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "UNIMPLEMENTED": 501, "INTERNAL": 500}

# the Python types (as json.loads makes them) each kind of datatype takes
_KINDS = {"f": {int, float}, "i": {int}, "u": {int}, "b": {bool}, "V": {int, float}}  # V: bfloat16
_JSON_TYPES = {str: "string", list: "list", dict: "object", type(None): "null", bool: "boolean", float: "number",
               int: "integer"}


class Unauthenticated(MemserveError):
    """A guarded endpoint called without the admin token (401)."""

    code, acl_code, reason = grpc.StatusCode.UNAUTHENTICATED, ACL_FAILURE, "UNAUTHENTICATED"


class RestServer:
    """The HTTP/REST front: start() serves on a socket the daemon bound; stop() drains it."""

    def __init__(self, registry: Registry, repository, sock: socket.socket, *, max_body: int, limit: int,
                 token: bytes | None = None, guard_execute: bool = False, ssl_context: ssl.SSLContext | None = None):
        self.registry = registry
        self.repository = repository
        self.metrics = registry.metrics
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.max_body = max_body
        self.limit = max(1, limit)
        self.expected = b"Bearer " + token if token else None
        self.guard_execute = guard_execute
        self.ssl_context = ssl_context
        self.serving = False  # ready: set once the daemon has started, cleared when its drain begins
        self.in_flight = 0  # requests holding a slot (touched on the loop only)
        self.pool = futures.ThreadPoolExecutor(max_workers=self.limit, thread_name_prefix="rest")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="rest-loop", daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()
        self.serving = True

    async def _start(self) -> None:
        app = web.Application(client_max_size=self.max_body, middlewares=[self._errors])
        self._routes(app)
        # handler_cancellation: a client that goes away cancels its request's handler, which drops the
        # request if it has not run yet (I6).
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None, handler_cancellation=True,
                                    keepalive_timeout=75, shutdown_timeout=5.0)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock, ssl_context=self.ssl_context, backlog=1024).start()

    def stop(self, grace: float) -> None:
        """Close the port and wait (up to `grace` seconds) for requests in flight to be answered."""
        self.serving = False
        if self.loop is None:
            self.sock.close()
            self.pool.shutdown(wait=False)
            return
        if self.runner is not None:
            done = asyncio.run_coroutine_threadsafe(self._stop(grace), self.loop)
            try:
                done.result(grace + 10)
            except Exception:  # noqa: BLE001 - the process is stopping; log and go on
                log.exception("the HTTP server did not stop cleanly")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _stop(self, grace: float) -> None:
        until = time.monotonic() + grace
        while self.in_flight and time.monotonic() < until:  # answers owed: let them go out first
            await asyncio.sleep(0.01)
        await self.runner.cleanup()

    # -- routes ------------------------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        get, post = app.router.add_get, app.router.add_post
        get("/v2/health/live", self.live, allow_head=False)
        get("/v2/health/ready", self.ready, allow_head=False)
        get("/v2", self.server_metadata, allow_head=False)
        get("/v2/models/stats", self.all_stats, allow_head=False)  # before /v2/models/{name}
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            get(base, self.model_metadata, allow_head=False)
            get(base + "/ready", self.model_ready, allow_head=False)
            get(base + "/config", self.model_config, allow_head=False)
            get(base + "/stats", self.model_stats, allow_head=False)
            post(base + "/infer", self.infer)
        post("/v2/repository/index", self.repository_index)
        post("/v2/repository/models/{name}/load", self.repository_load)
        post("/v2/repository/models/{name}/unload", self.repository_unload)
        for kind in ("systemsharedmemory", "cudasharedmemory"):
            app.router.add_route("*", f"/v2/{kind}/{{action:.*}}", self.no_shared_memory)

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        """Every answer that is not a success is {"error": message}, as Triton's are."""
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"the request body is larger than --max-message-size ({self.max_body} bytes); "
                               "send smaller requests or raise --max-message-size")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(exc.status, exc.reason)

    # -- health and metadata ---------------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        # Triton answers 400 when not ready; any non-2xx fails a readiness probe.
        return web.Response(status=200 if self.serving else 400)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return await self._json(request, lambda: v2.as_json(v2.server_metadata()))

    async def model_metadata(self, request: web.Request) -> web.Response:
        return await self._json(request, lambda: v2.as_json(v2.model_metadata(self._model(request))))

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            self._model(request)
        except NotFound as err:  # Triton: 400 for a model that is not ready, known or not
            return _error(400, err.message)
        return web.Response(status=200)

    async def model_config(self, request: web.Request) -> web.Response:
        return await self._json(request, lambda: v2.as_json(v2.model_config(self._model(request),
                                                                          self.registry.device.kind)))

    async def model_stats(self, request: web.Request) -> web.Response:
        return await self._json(request, lambda: {"model_stats": [v2.as_json(v2.statistics(self._model(request)))]})

    async def all_stats(self, request: web.Request) -> web.Response:
        return await self._json(request, lambda: {"model_stats": [v2.as_json(v2.statistics(m))
                                                                  for m in self.registry.list()]})

    async def no_shared_memory(self, request: web.Request) -> web.Response:
        return _error(501, "memserve does not take tensors through shared memory: it keeps every byte in memory "
                           "it accounts for; send tensors in the request (binary data)")

    # -- the repository (admin) -------------------------------------------------------------------

    async def repository_index(self, request: web.Request) -> web.Response:
        def index(body: bytes) -> list:
            ready = _object(body, "index request").get("ready", False) if body else False
            if not isinstance(ready, bool):
                raise InvalidArgument("'ready' must be true or false")
            return [v2.as_json(m, defaults=False) for m in
                    v2.repository_index(self.registry, self.repository, ready).models]

        return await self._json(request, index, admin=True, body=True)

    async def repository_load(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        def load(body: bytes) -> None:
            params = _object(body, "load request").get("parameters", {}) if body else {}
            if not isinstance(params, dict):
                raise InvalidArgument("'parameters' must be an object")
            config = params.get("config")
            if config is not None and not isinstance(config, str):
                raise InvalidArgument("parameter 'config' must be a string: the model configuration in JSON")
            files = {}
            for key, value in params.items():
                if key.startswith("file:"):
                    if not isinstance(value, str):
                        raise InvalidArgument(f"parameter {key[:64]!r} must be a string (the file, base64)")
                    try:
                        files[key[len("file:"):]] = base64.b64decode(value, validate=True)
                    except (binascii.Error, ValueError):
                        raise InvalidArgument(f"parameter {key[:64]!r} is not base64") from None
            del params
            with self.registry.load_job(alive=lambda: not cancelled.is_set()):
                model = v2.repository_load(self.registry, self.repository, name, config, files)
            log.info("repository load of %s over HTTP: model id %d", name, model.id)
            if cancelled.is_set():  # the caller went away before its answer: undo, as calls.py does
                _forget(self.registry, model)

        cancelled = threading.Event()
        try:
            return await self._json(request, load, admin=True, body=True)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def repository_unload(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        def unload(body: bytes) -> None:
            if body:
                params = _object(body, "unload request").get("parameters", {})
                if not isinstance(params, dict) or not isinstance(params.get("unload_dependents", False), bool):
                    raise InvalidArgument("'parameters' must be an object; 'unload_dependents' true or false")
            self.registry.unload(v2.model(self.registry, name, "").id)

        return await self._json(request, unload, admin=True, body=True)

    # -- inference -------------------------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        start = time.perf_counter()
        status = "OK"
        try:
            async with self._slot(request, admin=self.guard_execute):
                model = self._model(request)  # an unknown model is 404 before the body is read
                body = await _read(request)
                header = _header_length(request, len(body))
                call = _Call()
                try:
                    decoded = await self._run(self._submit, model, body, header, call)
                    del body
                    result = await _wait(call.pending)
                except asyncio.CancelledError:
                    call.cancel()  # the client went away: its request never runs if it has not yet
                    status = "CANCELLED"
                    raise
                data, headers = await self._run(_encode, model, decoded, result)
                return web.Response(body=data, headers=headers)
        except MemserveError as err:
            status = err.code.name
            return self._failed("infer", err, name)
        except web.HTTPException as exc:  # 413, 408: the middleware answers them
            status = f"HTTP_{exc.status}"
            raise
        except Exception as exc:  # noqa: BLE001 - the daemon outlives its bugs
            status = "INTERNAL"
            log.exception("internal error in HTTP infer")
            return _error(500, f"internal error in infer: {type(exc).__name__}: {exc}")
        finally:
            if self.metrics is not None:
                self.metrics.request(name, "rest", status, time.perf_counter() - start)

    def _submit(self, model: LoadedModel, body: bytes, header_length: int, call: "_Call") -> "_Decoded":
        """On the pool: parse and check the request, then queue it (an idle lane runs it right here)."""
        decoded = parse_infer(model, body, header_length)
        start_by, finish_by = deadlines(_NO_DEADLINE, decoded.timeout_us)
        call.submitted(self.registry.submit(model.id, decoded.arrays, start_by, decoded.priority, finish_by))
        decoded.arrays = None  # the request's bytes go with it
        return decoded

    # -- plumbing --------------------------------------------------------------------------------

    def _model(self, request: web.Request) -> LoadedModel:
        return v2.model(self.registry, request.match_info["name"], request.match_info.get("version", ""))

    def _slot(self, request: web.Request, admin: bool) -> "_Slot":
        return _Slot(self, request, admin)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _json(self, request: web.Request, fn, *, admin: bool = False, body: bool = False) -> web.Response:
        """Answer with fn() (fn(body) with `body`) as JSON, run on the pool; None answers 200 with no body."""
        endpoint = request.match_info.route.resource.canonical if request.match_info.route.resource else "?"
        try:
            async with self._slot(request, admin):
                args = (await _read(request),) if body else ()
                value = await self._run(fn, *args)
        except MemserveError as err:
            return self._failed(endpoint, err, request.match_info.get("name", ""))
        except (asyncio.CancelledError, web.HTTPException):
            raise
        except Exception as exc:  # noqa: BLE001
            log.exception("internal error in HTTP %s", endpoint)
            return _error(500, f"internal error in {endpoint}: {type(exc).__name__}: {exc}")
        if value is None:
            return web.Response(status=200)
        return web.Response(body=_dumps(value), content_type="application/json")

    def _failed(self, endpoint: str, err: MemserveError, model: str) -> web.Response:
        # The caller's mistake, not the daemon's: INFO, as on gRPC (status.handle_errors).
        log.info("HTTP %s failed: %s", endpoint, err.message,
                 extra={"rpc": f"http {endpoint}", "code": err.code.name, **({"model": model} if model else {})})
        response = _error(HTTP_STATUS.get(err.code.name, 500), err.message)
        if isinstance(err, Unauthenticated):
            response.headers["WWW-Authenticate"] = "Bearer"
        return response


class _Slot:
    """One of the server's `limit` places for a request in flight, and the admin-token check."""

    def __init__(self, server: RestServer, request: web.Request, admin: bool):
        self.server, self.request, self.admin = server, request, admin

    async def __aenter__(self):
        s = self.server
        if self.admin and s.expected is not None:
            message = denial(self.request.headers.get("Authorization", ""), s.expected, "header")
            if message is not None:
                raise Unauthenticated(message)
        if s.in_flight >= s.limit:
            raise Unavailable(f"{s.limit} HTTP requests are in flight (--workers); retry shortly")
        s.in_flight += 1
        return self

    async def __aexit__(self, *exc):
        self.server.in_flight -= 1
        return False


class _NoDeadline:
    """HTTP carries no deadline: a request's own `timeout` parameter is its only one (calls.deadlines)."""

    @staticmethod
    def time_remaining():
        return None


_NO_DEADLINE = _NoDeadline()


class _Call:
    """The submitted request of an HTTP call, and whether its client left before it was submitted."""

    def __init__(self):
        self._lock = threading.Lock()
        self.pending: Pending | None = None
        self.gone = False

    def submitted(self, pending: Pending) -> None:
        with self._lock:
            self.pending = pending
            gone = self.gone
        if gone:
            pending.cancel()

    def cancel(self) -> None:
        with self._lock:
            self.gone = True
            pending = self.pending
        if pending is not None:
            pending.cancel()


async def _wait(pending: Pending):
    """The request's result, awaited on the loop without a thread (and without cancelling the lane's future)."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def settle(f: futures.Future) -> None:
        if waiter.done():
            return
        exc = f.exception()
        if exc is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(f.result())

    def done(f: futures.Future) -> None:
        try:
            loop.call_soon_threadsafe(settle, f)
        except RuntimeError:  # the loop closed: the daemon is stopping
            pass

    pending.request.future.add_done_callback(done)
    return await waiter


async def _read(request: web.Request) -> bytes:
    """The whole body, within --max-message-size (413) and BODY_SECONDS (408)."""
    try:
        async with asyncio.timeout(BODY_SECONDS):
            return await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(reason=f"the request body did not arrive within {BODY_SECONDS:.0f} s") from None


def _header_length(request: web.Request, body_length: int) -> int:
    """The JSON header's length: Inference-Header-Content-Length, or the whole body without it."""
    values = request.headers.getall(HEADER_LENGTH, [])
    if not values:
        return body_length
    text = values[0].strip()
    if len(values) > 1 or not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise InvalidArgument(f"{HEADER_LENGTH} must be one non-negative integer, got {', '.join(values)[:64]!r}")
    n = int(text)
    if n > body_length:
        raise InvalidArgument(f"{HEADER_LENGTH} is {n} but the body has only {body_length} bytes")
    if n == 0:
        raise InvalidArgument(f"{HEADER_LENGTH} 0 (a body of raw tensor bytes and no JSON) is not supported; "
                              "send the inference request JSON first")
    return n


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=_dumps({"error": shorten(message)}), content_type="application/json")


def _dumps(value) -> bytes:
    # NaN and Infinity as Triton writes them (rapidjson's kWriteNanAndInfFlag): NaN, Infinity, -Infinity
    return json.dumps(value, separators=(",", ":")).encode()


def _object(body: bytes, what: str) -> dict:
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"the {what} is not valid UTF-8 (byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"the {what} is not JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"the {what} must be a JSON object, got {_JSON_TYPES.get(type(value), 'something else')}")
    return value


def _forget(registry: Registry, model: LoadedModel) -> None:
    try:
        registry.unload(model.id)
        log.info("model %s (id %d) unloaded: its HTTP caller went away before it got the answer", model.name,
                 model.id, extra={"model": model.name})
    except MemserveError:
        pass


# -- the inference request and its answer --------------------------------------------------------------

class _Decoded:
    """An inference request, checked: its arrays, what to answer and how."""

    def __init__(self):
        self.id = ""
        self.arrays: dict | None = None
        self.outputs: dict[str, bool] = {}  # the outputs to answer: name -> as binary data
        self.binary_default = False
        self.priority = 0
        self.timeout_us = 0


def parse_infer(model: LoadedModel, body: bytes, header_length: int) -> _Decoded:
    """Check and decode an inference request: its JSON header (body[:header_length]) and the binary tensors
    after it. Every count is checked before the memory it implies is taken."""
    specs = {s.name: s for s in model.plan.inputs}
    header = body if header_length == len(body) else body[:header_length]
    _bound_json(model, header)
    r = _object(header, "inference request")
    d = _Decoded()
    rid = r.get("id", "")
    if not isinstance(rid, str):
        raise InvalidArgument("'id' must be a string")
    d.id = rid
    _parameters(r.get("parameters", {}), d)
    inputs = r.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidArgument("the request needs 'inputs': a list of tensors")
    offset = header_length
    pairs = []
    for k, t in enumerate(inputs):
        name, dtype, shape, count, binary = _input(model, specs, t, k)
        if binary is None:
            pairs.append((name, _json_tensor(name, dtype, shape, t["data"], count)))
            continue
        if header_length == len(body) and binary > 0:
            raise InvalidArgument(f"input {name[:64]!r} is binary ({binary} bytes): send the "
                                  f"{HEADER_LENGTH} header with the JSON's length")
        if offset + binary > len(body):
            raise InvalidArgument(f"input {name[:64]!r} needs {binary} bytes of binary data; the body has "
                                  f"{len(body) - offset} left")
        raw = memoryview(body)[offset:offset + binary]
        if offset % 16:  # an unaligned view would be an unaligned array: copy it (as gRPC's bytes are)
            raw = bytes(raw)
        offset += binary
        pairs.append((name, decode.tensor(name, dtype, shape, raw=raw, max_elements=count)))
    if offset != len(body):
        raise InvalidArgument(f"{len(body) - offset} bytes after the binary inputs; their binary_data_size "
                              "values must add up to the body after the JSON")
    d.arrays = decode.named(pairs)
    d.outputs = _outputs(model, r.get("outputs"), d.binary_default)
    return d


def _bound_json(model: LoadedModel, header: bytes) -> None:
    """Refuse a JSON header with more values and lists than the model's inputs could need, before parsing
    it (json.loads makes a Python object of each: up to 20x the bytes). Counted, not parsed: commas and
    opening brackets, an upper bound of what parsing would create."""
    specs = {s.name: s for s in model.plan.inputs}
    need = sum(2 * v2.most(model, specs, s.name, v2.datatype(s.dtype)) * max(len(s.shape), 1) + 4
               for s in model.plan.inputs) + JSON_ALLOWANCE
    tokens = header.count(b",") + header.count(b"[") + header.count(b"{")
    if tokens > need:
        raise InvalidArgument(f"the request JSON has {tokens} values and lists; model {model.name!r} takes at most "
                              f"{need} (its inputs at max_batch); send large tensors as binary data")


def _parameters(params, d: _Decoded) -> None:
    if not isinstance(params, dict):
        raise InvalidArgument("'parameters' must be an object")
    for key, value in params.items():
        if key in ("priority", "timeout"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidArgument(f"parameter {key!r} must be an integer, got {type(value).__name__}")
            if key == "priority":
                d.priority = v2.priority_level(v2.int_parameter(key, value, v2.MAX_PRIORITY))
            else:
                d.timeout_us = v2.int_parameter(key, value, limits.MAX_TIMEOUT_US)
        elif key == "binary_data_output":
            if not isinstance(value, bool):
                raise InvalidArgument("parameter 'binary_data_output' must be true or false")
            d.binary_default = value
        elif key.startswith("triton_"):
            raise InvalidArgument("parameter keys starting with 'triton_' are reserved")
        elif not isinstance(value, (str, int, bool)):  # as Triton: custom parameters are int, bool or string
            raise InvalidArgument(f"parameter {key[:64]!r} must be an integer, a boolean or a string")


def _input(model: LoadedModel, specs: dict, t, k: int):
    """An input's name, dtype, shape and element count, checked against the model; and its binary size
    (None when it carries JSON 'data')."""
    if not isinstance(t, dict):
        raise InvalidArgument(f"inputs[{k}] must be an object")
    name, datatype, dims = t.get("name"), t.get("datatype"), t.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise InvalidArgument(f"inputs[{k}] needs a 'name' and a 'datatype' (strings)")
    if not isinstance(dims, list) or any(not isinstance(x, int) or isinstance(x, bool) for x in dims):
        raise InvalidArgument(f"input {name[:64]!r} needs a 'shape': a list of integers")
    dtype = v2.dtype_of(name, datatype)
    most = v2.most(model, specs, name, datatype)
    shape = limits.check_shape(f"input {name[:64]!r} shape", dims)
    count = math.prod(shape)
    if count > most:
        raise InputMismatch(f"input {name[:64]!r} has {count} elements; the model takes at most {most}")
    params = t.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidArgument(f"input {name[:64]!r}: 'parameters' must be an object")
    if "shared_memory_region" in params:
        raise InvalidArgument(f"input {name[:64]!r}: memserve does not take tensors through shared memory; "
                              "send them in the request")
    has_data, has_binary = "data" in t, "binary_data_size" in params
    if has_data == has_binary:
        raise InvalidArgument(f"input {name[:64]!r} must carry exactly one of 'data' and "
                              f"parameters.binary_data_size")
    if not has_binary:
        if datatype == "FP16":
            raise InvalidArgument(f"input {name[:64]!r}: FP16 travels only as binary data (no JSON number is one)")
        return name, dtype, shape, count, None
    size = params["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"input {name[:64]!r}: binary_data_size must be a non-negative integer")
    return name, dtype, shape, count, size


def _json_tensor(name: str, dtype: np.dtype, shape: tuple, data, count: int) -> np.ndarray:
    """JSON 'data' (flat, or nested along the shape) as an array: its nesting checked against the shape,
    every value against the datatype, then decoded straight into one array."""
    values = _flatten(name, data, shape)
    kinds = _KINDS[dtype.kind]
    bad = set(map(type, values)) - kinds  # type(True) is bool, never int: no bool passes as a number
    if bad:
        what = "true or false" if dtype.kind == "b" else "integers" if dtype.kind in "iu" else "numbers"
        raise InvalidArgument(f"input {name[:64]!r}: {v2.datatype(dtype)} values must be {what}, got "
                              f"{sorted(_JSON_TYPES.get(t, t.__name__) for t in bad)[:4]}")
    try:
        return decode.tensor(name, dtype, shape, values=values, max_elements=count)
    except (OverflowError, ValueError, TypeError):  # an integer no float can hold (10**400)
        raise InvalidArgument(f"input {name[:64]!r} has a value {v2.datatype(dtype)} cannot hold") from None


def _flatten(name: str, data, shape: tuple) -> list:
    """The values of `data`, flat. It may be flat, or nested along the shape's leading dimensions with the
    innermost lists holding the rest ([2, 3, 4]: 24 values, 2 lists of 12, or 2 of 3 of 4); ragged lists,
    values beside lists, and more nesting than the shape has are refused."""
    if not isinstance(data, list):
        raise InvalidArgument(f"input {name[:64]!r}: 'data' must be a list")
    level, depth = [data], 0
    while True:
        children = [c for x in level for c in x]
        lists = sum(isinstance(c, list) for c in children)
        if lists and lists != len(children):
            raise InvalidArgument(f"input {name[:64]!r}: 'data' mixes lists and values at depth {depth + 1}")
        if not lists:  # the innermost lists: each holds the rest of the shape
            rest = math.prod(shape[depth:])
            if any(len(x) != rest for x in level):
                raise InputMismatch(f"input {name[:64]!r}: 'data' does not match shape {list(shape)} "
                                    f"(lists at depth {depth + 1} must hold {rest} values)")
            return children
        if depth + 1 >= len(shape):
            raise InputMismatch(f"input {name[:64]!r}: 'data' is nested deeper than shape {list(shape)}")
        if any(len(x) != shape[depth] for x in level):
            raise InputMismatch(f"input {name[:64]!r}: 'data' does not match shape {list(shape)} "
                                f"(lists at depth {depth + 1} must hold {shape[depth]})")
        level, depth = children, depth + 1


def _outputs(model: LoadedModel, requested, binary_default: bool) -> dict[str, bool]:
    """The outputs to answer, each as binary data or JSON: those requested, or all."""
    known = {s.name: s for s in model.plan.outputs}
    wanted = {}
    if requested is not None:
        if not isinstance(requested, list):
            raise InvalidArgument("'outputs' must be a list")
        wanted = {}
        for k, o in enumerate(requested):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise InvalidArgument(f"outputs[{k}] must be an object with a 'name'")
            params = o.get("parameters", {})
            if not isinstance(params, dict):
                raise InvalidArgument(f"output {o['name'][:64]!r}: 'parameters' must be an object")
            binary = params.get("binary_data", binary_default)
            if not isinstance(binary, bool):
                raise InvalidArgument(f"output {o['name'][:64]!r}: binary_data must be true or false")
            if "classification" in params or "shared_memory_region" in params:
                raise InvalidArgument(f"output {o['name'][:64]!r}: memserve has no classification or shared "
                                      "memory outputs")
            wanted[o["name"]] = binary
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            raise InvalidArgument(f"model {model.name!r} has no outputs {[u[:64] for u in unknown[:8]]}; "
                                  f"it has {sorted(known)}")
    names = wanted or {n: binary_default for n in known}
    fp16 = [n for n, binary in names.items() if not binary and known[n].dtype == np.float16]
    if fp16:
        raise InvalidArgument(f"outputs {fp16[:8]} are FP16, which travels only as binary data: request them "
                              "with parameters.binary_data true")
    return names


def _encode(model: LoadedModel, d: _Decoded, result) -> tuple[bytes, dict]:
    """The inference response: JSON, then the binary outputs in order (Triton's binary-data extension)."""
    response = {"model_name": model.name, "model_version": v2.VERSION}
    if d.id:
        response["id"] = d.id
    outputs, buffers = [], []
    for out in result.outputs:
        binary = d.outputs.get(out.name)
        if binary is None:
            continue
        entry = {"name": out.name, "datatype": v2.datatype(out.dtype), "shape": list(out.shape)}
        if binary:
            entry["parameters"] = {"binary_data_size": memoryview(out.data).nbytes}
            buffers.append(out.data)
        else:
            entry["data"] = np.frombuffer(out.data, out.dtype).tolist()
        outputs.append(entry)
    response["outputs"] = outputs
    header = _dumps(response)
    if not buffers:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *buffers]), {"Content-Type": "application/octet-stream",
                                          HEADER_LENGTH: str(len(header))}

