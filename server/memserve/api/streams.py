"""Pipelined bidirectional streams: submit requests as they arrive, answer each as it finishes."""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

import grpc

Answer = Callable[[Any], None]


def pipelined(request_iterator, handle: Callable[[Any, Answer], None], name: str) -> Iterator[Any]:
    """Read requests on a thread of their own; `handle(request, answer)` must call `answer(response)`
    exactly once, at once or later (from a future's callback). Yields the responses as they come."""
    answers: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:
        count = 0
        try:
            for request in request_iterator:
                count += 1
                handle(request, answers.put)
        except grpc.RpcError:
            pass  # the client went away; the servicer's cancel callback drops what waits
        finally:
            answers.put(_Done(count))  # this many answers are owed

    threading.Thread(target=read, name=name, daemon=True).start()
    owed, sent = None, 0
    while owed is None or sent < owed:
        item = answers.get()
        if isinstance(item, _Done):
            owed = item.count
            continue
        sent += 1
        yield item


class _Done:
    def __init__(self, count: int):
        self.count = count
