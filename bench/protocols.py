"""Superseded by bench/front.py, which measures the same paths (native, v2 gRPC, the grpcio echo)
and more (v2 REST, the grpc.aio echo, Triton, perf_analyzer, server and client CPU, 1 MiB).

    python bench/protocols.py [--seconds 3] [--quick]   (runs bench/front.py)
"""
from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from front import main, tiny_model  # noqa: E402,F401 - tiny_model: the Relu [N, 16] model, kept importable

if __name__ == "__main__":
    main()
