"""Turns exceptions into gRPC statuses with an AscendCL-style code in the details.

The details are a google.rpc.Status carrying one google.rpc.ErrorInfo
(reason, domain "memserve", metadata {"acl_code": "100011"}), the standard
rich-error form that grpcio-status and other gRPC clients decode.
"""
from __future__ import annotations

import functools
import logging
import time

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..errors import InternalError, MemserveError

log = logging.getLogger("memserve.api")
DOMAIN = "memserve"


MAX_MESSAGE = 2048  # characters of a status message: it travels in a header, which gRPC caps at 16 KiB


def shorten(message: str) -> str:
    """A status message that fits its header, whatever a client put in the names it repeats."""
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def abort(context: grpc.ServicerContext, err: MemserveError) -> None:
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata={"acl_code": str(err.acl_code)})
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=err.code.value[0], message=shorten(err.message), details=[detail])
    context.abort_with_status(rpc_status.to_status(status))


def _ids(request) -> dict:
    """The request id and model a request line should carry, where the message has them."""
    out = {}
    rid = getattr(request, "id", "")
    if isinstance(rid, str) and rid:
        out["request_id"] = rid
    model = getattr(request, "model_name", "") or getattr(getattr(request, "model", None), "name", "")
    if model:
        out["model"] = model
    return out


def handle_errors(method):
    """Map MemserveError to its status; anything else is a bug: log it, answer INTERNAL."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except MemserveError as err:
            # The caller's mistake, not the daemon's: INFO, so that --log-level WARNING silences it.
            log.info("%s failed: %s", method.__name__, err.message,
                     extra={"rpc": method.__name__, "code": err.code.name, **_ids(request)})
            abort(context, err)
        except Exception as exc:  # noqa: BLE001 - the daemon must outlive its bugs
            if context.code() is not None:  # already aborted, e.g. by grpc itself
                raise
            log.exception("internal error in %s", method.__name__)
            abort(context, InternalError(f"internal error in {method.__name__}: {type(exc).__name__}: {exc}"))

    return wrapper


def counted(api: str, model_of):
    """Count a unary request in the metrics: model label (model_of(servicer, request)), API, status, duration."""

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, request, context):
            start = time.perf_counter()
            status = "OK"
            try:
                return method(self, request, context)
            except BaseException:
                code = context.code()
                status = code.name if code is not None else "UNKNOWN"
                raise
            finally:
                if self.metrics is not None:
                    self.metrics.request(model_of(self, request), api, status, time.perf_counter() - start)

        return wrapper

    return decorate
