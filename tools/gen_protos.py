"""Regenerate the Python stubs for every .proto under proto/.

The stubs land in client/memserve_api/pb/, importable as
``memserve_api.pb.<package path>``; both the daemon and the client import
them from there. protoc's virtual include path gives the generated modules
that import prefix, so no post-processing of the output is needed.

    python tools/gen_protos.py [--out DIR]
"""
from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PREFIX = "memserve_api/pb"


def generate(out_root: pathlib.Path) -> list[pathlib.Path]:
    """Write the stubs under out_root/memserve_api/pb and return them."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PREFIX}={PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[f"{PREFIX}/{p}" for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    pb = out_root / PREFIX
    for d in [pb, *[p for p in pb.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    return sorted(p for p in pb.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "client")
    generate(ap.parse_args().out)


if __name__ == "__main__":
    sys.exit(main())
