"""Admin token: a server interceptor that guards the RPCs that change or reveal the model set.

With --admin-token-file, Load, Unload, QuerySize and the repository RPCs
(and, with --require-token-for-execute, every execution) need the metadata
`authorization: Bearer <token>`; the HTTP/REST server (rest.py) asks the same
of its repository endpoints (and inference) through `denial`. Tokens are
compared in constant time and never logged.
"""
from __future__ import annotations

import hmac

import grpc

from ..errors import InvalidArgument

ADMIN = {
    "/memserve.v1.Memserve/Load", "/memserve.v1.Memserve/Unload", "/memserve.v1.Memserve/QuerySize",
    "/inference.GRPCInferenceService/RepositoryModelLoad", "/inference.GRPCInferenceService/RepositoryModelUnload",
    "/inference.GRPCInferenceService/RepositoryIndex",
}
EXECUTE = {
    "/memserve.v1.Memserve/Execute", "/memserve.v1.Memserve/ExecuteStream",
    "/inference.GRPCInferenceService/ModelInfer", "/inference.GRPCInferenceService/ModelStreamInfer",
}


def read_token(path: str) -> bytes:
    try:
        token = open(path, "rb").read().strip()
    except OSError as exc:
        raise InvalidArgument(f"cannot read --admin-token-file: {exc.strerror}") from None
    if not token:
        raise InvalidArgument("--admin-token-file is empty")
    return token


def denial(given: str, expected: bytes, carrier: str = "metadata") -> str | None:
    """Why an `authorization` value `given` is refused (None: it carries the token). `expected` is
    b"Bearer " + the token; compared in constant time. `carrier`: gRPC metadata or an HTTP header."""
    if hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
        return None
    return (f"missing authorization {carrier}: send 'authorization: Bearer <token>'" if not given
            else "the admin token does not match")


class TokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: bytes, guard_execute: bool):
        self._expected = b"Bearer " + token
        self._guarded = ADMIN | (EXECUTE if guard_execute else set())

    def intercept_service(self, continuation, details):
        if details.method not in self._guarded:
            return continuation(details)
        given = dict(details.invocation_metadata).get("authorization", "")
        message = denial(given, self._expected)
        if message is None:
            return continuation(details)
        handler = continuation(details)
        return _deny(handler, message)


def _deny(handler, message: str):
    def abort(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler is None:
        return None
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, handler.request_deserializer, handler.response_serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, handler.request_deserializer, handler.response_serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, handler.request_deserializer, handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(abort, handler.request_deserializer, handler.response_serializer)
