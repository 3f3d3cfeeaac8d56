"""Errors become gRPC statuses with an ErrorInfo detail; bugs become INTERNAL, logged."""
import logging

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from memserve.api.status import handle_errors
from memserve.errors import NotFound


class FakeContext:
    def __init__(self):
        self.status = None

    def abort_with_status(self, status):
        self.status = status
        raise RuntimeError("aborted")  # grpc raises to unwind the handler

    def code(self):
        return None if self.status is None else self.status.code


class Servicer:
    @handle_errors
    def Missing(self, request, context):
        raise NotFound("no model with id 7 is loaded")

    @handle_errors
    def Buggy(self, request, context):
        return {}["oops"]


def decode(status):
    details = dict(status.trailing_metadata)["grpc-status-details-bin"]
    s = status_pb2.Status.FromString(details)
    info = error_details_pb2.ErrorInfo()
    assert s.details[0].Unpack(info)
    return s, info


def test_memserve_error_maps_to_its_code_and_acl_code():
    ctx = FakeContext()
    with pytest.raises(RuntimeError):
        Servicer().Missing(None, ctx)
    assert ctx.status.code == grpc.StatusCode.NOT_FOUND
    s, info = decode(ctx.status)
    assert s.message == "no model with id 7 is loaded"
    assert (info.reason, info.domain, info.metadata["acl_code"]) == ("MODEL_NOT_FOUND", "memserve", "100011")


def test_a_bug_is_internal_and_logged_with_its_trace(caplog):
    ctx = FakeContext()
    with caplog.at_level(logging.ERROR, logger="memserve.api"), pytest.raises(RuntimeError):
        Servicer().Buggy(None, ctx)
    assert ctx.status.code == grpc.StatusCode.INTERNAL
    assert "KeyError" in decode(ctx.status)[0].message
    assert "Traceback" in caplog.text and "Buggy" in caplog.text
