"""The committed stubs are what tools/gen_protos.py makes from proto/ today."""
import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_generated_stubs_are_not_stale(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "tools" / "gen_protos.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in gen.generate(tmp_path)}
    committed_root = ROOT / "client"
    committed = {p.relative_to(committed_root): p.read_bytes()
                 for p in (committed_root / "memserve_api" / "pb").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    assert sorted(fresh) == sorted(committed), "stub files differ: run `make protos`"
    stale = [str(p) for p in fresh if fresh[p] != committed[p]]
    assert not stale, f"stale stubs {stale}: run `make protos` and commit the result"
