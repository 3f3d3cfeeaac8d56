"""One exception type per row of DESIGN.md's error table.

Each carries the gRPC status code it maps to and an AscendCL-style numeric
code; the API layer turns any of them into a gRPC status, so the layers below
never import grpc.
"""
from __future__ import annotations

import grpc

# AscendCL-style numeric codes (acl/error_codes): the value travels in the
# status details so that users of the ACL API recognise the failure.
ACL_INVALID_PARAM = 100000
ACL_INVALID_MODEL_ID = 100011
ACL_PARSE_MODEL = 100013
ACL_INPUT_NOT_MATCH = 100017
ACL_OP_NOT_FOUND = 100024
ACL_BAD_ALLOC = 200000
ACL_FAILURE = 500000
ACL_INTERNAL = 500001


class MemserveError(Exception):
    """An error that is the caller's to act on; `reason` is a stable label."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    acl_code: int = ACL_INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str, *, acl_code: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.message = message
        if acl_code is not None:
            self.acl_code = acl_code
        if reason is not None:
            self.reason = reason


class InvalidArgument(MemserveError):
    code, acl_code, reason = grpc.StatusCode.INVALID_ARGUMENT, ACL_INVALID_PARAM, "INVALID_ARGUMENT"


class ModelParseError(InvalidArgument):
    acl_code, reason = ACL_PARSE_MODEL, "PARSE_MODEL"


class UnsupportedModel(InvalidArgument):
    acl_code, reason = ACL_OP_NOT_FOUND, "UNSUPPORTED"


class InputMismatch(InvalidArgument):
    acl_code, reason = ACL_INPUT_NOT_MATCH, "INPUT_NOT_MATCH"


class NotFound(MemserveError):
    code, acl_code, reason = grpc.StatusCode.NOT_FOUND, ACL_INVALID_MODEL_ID, "MODEL_NOT_FOUND"


class AlreadyExists(MemserveError):
    code, acl_code, reason = grpc.StatusCode.ALREADY_EXISTS, ACL_INVALID_PARAM, "ALREADY_EXISTS"


class ResourceExhausted(MemserveError):
    code, acl_code, reason = grpc.StatusCode.RESOURCE_EXHAUSTED, ACL_BAD_ALLOC, "BAD_ALLOC"


class FailedPrecondition(MemserveError):
    code, acl_code, reason = grpc.StatusCode.FAILED_PRECONDITION, ACL_FAILURE, "FAILED_PRECONDITION"


class DeadlineExceeded(MemserveError):
    code, acl_code, reason = grpc.StatusCode.DEADLINE_EXCEEDED, ACL_FAILURE, "DEADLINE_EXCEEDED"


class Cancelled(MemserveError):
    code, acl_code, reason = grpc.StatusCode.CANCELLED, ACL_FAILURE, "CANCELLED"


class Unavailable(MemserveError):
    code, acl_code, reason = grpc.StatusCode.UNAVAILABLE, ACL_FAILURE, "UNAVAILABLE"


class InternalError(MemserveError):
    code, acl_code, reason = grpc.StatusCode.INTERNAL, ACL_INTERNAL, "INTERNAL"
