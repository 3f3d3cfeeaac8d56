"""Who may import whom, read from the source (ast), not from what happens to be installed.

The daemon (`server/memserve`) imports `memserve_api`, never `memserve_client`; the client distribution
(`client/`: `memserve_api` and `memserve_client`) imports nothing of the daemon, and `memserve_api` nothing of
either side. Everything third-party the client imports is one of its declared dependencies, and the optional
ones (tqdm, matplotlib) only inside a function, so that a bare install still imports and runs.
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

from models import ROOT

SERVER = ROOT / "server" / "memserve"
CLIENT = ROOT / "client"
API = CLIENT / "memserve_api"
OURS = {"memserve", "memserve_api", "memserve_client"}

# Top-level import -> the client distribution's requirement that provides it.
REQUIRED = {
    "grpc": "grpcio",
    "grpc_status": "grpcio-status",
    "google.protobuf": "protobuf",
    "google.rpc": "grpcio-status",  # googleapis-common-protos, which grpcio-status requires
    "numpy": "numpy",
}
OPTIONAL = {"tqdm": "progress", "matplotlib": "plot", "ml_dtypes": "narrow"}  # import -> the extra that installs it


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(absolute module name, line, inside a function) for every import in the file; relative imports
    stay inside their own package, so they name nothing of another one and are left out."""
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and not child.level:
                found.append((child.module, child.lineno, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def sources(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*.py") if "egg-info" not in str(p) and "build" not in p.parts)
    assert files, folder
    return files


def top(module: str) -> str:
    return module.split(".")[0]


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}"


def violations(folder: Path, forbidden: set[str]) -> list[str]:
    return [f"{where(p, line)} imports {mod}"
            for p in sources(folder) for mod, line, _ in imports(p) if top(mod) in forbidden]


def test_the_daemon_never_imports_the_client():
    assert violations(SERVER, {"memserve_client"}) == []


def test_the_client_distribution_imports_nothing_of_the_daemon():
    assert violations(CLIENT, {"memserve"}) == []


def test_the_api_package_imports_neither_side():
    assert violations(API, {"memserve", "memserve_client"}) == []


def test_the_checker_sees_imports_in_every_form(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import memserve.model as m\nfrom memserve import x\nfrom . import y\n"
                 "def f():\n    import tqdm\n    from matplotlib import pyplot\n")
    assert imports(f) == [("memserve.model", 1, False), ("memserve", 2, False),
                          ("tqdm", 5, True), ("matplotlib", 6, True)]
    assert len(violations(tmp_path, {"memserve"})) == 2


def _version(text: str) -> tuple[int, int, int]:
    parts = [int(x) for x in text.split(".")] + [0, 0]
    return parts[0], parts[1], parts[2]


def _floors(specs: list[str]) -> dict[str, tuple[int, int, int]]:
    return {m[1].lower(): _version(m[2])
            for m in (re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*>=\s*([0-9.]+)", s) for s in specs) if m}


def test_declared_floors_import_the_committed_stubs():
    """The generated stubs check the runtime at import: grpcio no older than the grpcio-tools that made
    them, protobuf no older than its gencode. The client's lowest allowed versions must pass both checks."""
    floors = _floors(tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]["dependencies"])
    for p in sources(API / "pb"):
        text = p.read_text()
        if m := re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", text):
            assert floors["grpcio"] >= _version(m[1]), (p.name, m[1], floors["grpcio"])
        if m := re.search(r"# Protobuf Python Version: ([0-9.]+)", text):
            assert floors["protobuf"] >= _version(m[1]), (p.name, m[1], floors["protobuf"])


def _requirement_names(specs: list[str]) -> set[str]:
    names = set()
    for spec in specs:
        name = spec.split(";")[0]
        for stop in "<>=!~[ ":
            name = name.split(stop)[0]
        names.add(name.strip().lower().replace("_", "-"))
    return names


def test_every_third_party_import_of_the_client_is_declared():
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    required = _requirement_names(project["dependencies"])
    extras = {k: _requirement_names(v) for k, v in project.get("optional-dependencies", {}).items()}
    assert set(REQUIRED.values()) <= required
    for module, extra in OPTIONAL.items():
        assert module.replace("_", "-") in extras.get(extra, set()), (module, extra)  # ml_dtypes: ml-dtypes

    bad = []
    for p in sources(CLIENT):
        for mod, line, in_function in imports(p):
            at = f"{where(p, line)} imports {mod}"
            if top(mod) in sys.stdlib_module_names or top(mod) in OURS:
                continue
            if top(mod) in OPTIONAL:
                if not in_function:
                    bad.append(at + f" at module level (optional, the {OPTIONAL[top(mod)]} extra: "
                                       "import it inside the function that needs it)")
            elif top(mod) == "google":
                if ".".join(mod.split(".")[:2]) not in REQUIRED:
                    bad.append(at + " (no declared dependency provides it)")
            elif mod not in REQUIRED and top(mod) not in REQUIRED:
                bad.append(at + " (not a dependency of memserve-client)")
    assert bad == []
