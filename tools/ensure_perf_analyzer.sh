#!/usr/bin/env bash
# Triton's C++ load generator, perf_analyzer, for tests/test_perf_analyzer.py and bench/front.py.
# Installs it when missing into $MEMSERVE_PERF_ANALYZER_DIR (default ~/.cache/memserve/perf_analyzer) and
# prints the path of a wrapper that runs it; exits non-zero, saying why on stderr, when it cannot.
#
#   - perf_analyzer: from the tritonclient 2.41.0 manylinux wheel (tritonclient-2.41.0.data/data/bin/);
#   - libcudart.so.12, which it links although no GPU is used: from the nvidia-cuda-runtime-cu12 wheel;
#   - libb64.so.0d: Debian's libb64-0d, its .deb downloaded and unpacked into the cache (nothing installed).
#
# Quick (no network) when everything is in place. Usage: tools/ensure_perf_analyzer.sh [--quiet]
set -eu
D=${MEMSERVE_PERF_ANALYZER_DIR:-$HOME/.cache/memserve/perf_analyzer}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WRAPPER=$D/perf_analyzer

fail() { echo "ensure_perf_analyzer: $*" >&2; exit 1; }

# Resolves with the cache's libraries first; "not found" lines name what is still missing.
missing() { LD_LIBRARY_PATH=$D/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ldd "$D/bin/perf_analyzer" 2>&1 | sed -n 's/^\s*\(\S*\) => not found.*/\1/p'; }

if [ -x "$WRAPPER" ] && [ -x "$D/bin/perf_analyzer" ] && [ -z "$(missing)" ]; then
  echo "$WRAPPER"
  exit 0
fi

command -v ldd >/dev/null 2>&1 || fail "ldd is needed to check perf_analyzer's libraries"
[ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] || fail "perf_analyzer comes as a Linux x86_64 binary only (this is $(uname -s)-$(uname -m))"

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
"$PY" -m pip --version >/dev/null 2>&1 || fail "no pip for $PY (set PYTHON to an interpreter with pip)"

mkdir -p "$D/bin" "$D/lib"
TMP=$(mktemp -d "$D/.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

if [ ! -x "$D/bin/perf_analyzer" ]; then
  "$PY" -m pip download -q --no-deps --only-binary=:all: 'tritonclient==2.41.0' -d "$TMP" \
    || fail "could not download the tritonclient 2.41.0 wheel (it carries perf_analyzer)"
  "$PY" - "$TMP" "$D/bin/perf_analyzer" <<'EOF' || fail "no perf_analyzer in the tritonclient 2.41.0 wheel"
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(glob.glob(os.path.join(tmp, "tritonclient-2.41.0-*.whl"))[0]) as z:
    with z.open("tritonclient-2.41.0.data/data/bin/perf_analyzer") as src, open(dest + ".part", "wb") as out:
        shutil.copyfileobj(src, out)
os.chmod(dest + ".part", 0o755)
os.replace(dest + ".part", dest)
EOF
fi

if missing | grep -q '^libcudart\.so\.12$'; then
  "$PY" -m pip download -q --no-deps --only-binary=:all: 'nvidia-cuda-runtime-cu12' -d "$TMP" \
    || fail "could not download the nvidia-cuda-runtime-cu12 wheel (libcudart.so.12)"
  "$PY" - "$TMP" "$D/lib" <<'EOF' || fail "no libcudart.so.12 in the nvidia-cuda-runtime-cu12 wheel"
import glob, os, shutil, sys, zipfile
tmp, lib = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(glob.glob(os.path.join(tmp, "nvidia_cuda_runtime_cu12-*.whl"))[0]) as z:
    name = next(n for n in z.namelist() if n.endswith("/libcudart.so.12"))
    with z.open(name) as src, open(os.path.join(lib, "libcudart.so.12.part"), "wb") as out:
        shutil.copyfileobj(src, out)
os.replace(os.path.join(lib, "libcudart.so.12.part"), os.path.join(lib, "libcudart.so.12"))
EOF
fi

if missing | grep -q '^libb64\.so\.0d$'; then
  command -v apt-get >/dev/null 2>&1 || fail "perf_analyzer needs libb64.so.0d (Debian/Ubuntu package libb64-0d) and there is no apt-get here"
  # Unpacked into the cache, never installed on the system: no root needed (only root may refresh the lists).
  fetch() { (cd "$TMP" && apt-get download libb64-0d >/dev/null 2>&1 && dpkg -x libb64-0d_*.deb pkg); }
  fetch || { [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1 && fetch; } \
    || fail "perf_analyzer needs libb64.so.0d: apt-get download libb64-0d did not work here"
  find "$TMP/pkg" -name 'libb64.so.0d*' -exec cp -P {} "$D/lib/" \;
fi

left=$(missing)
[ -z "$left" ] || fail "perf_analyzer still lacks: $(echo $left)"

cat >"$WRAPPER.part" <<EOF
#!/bin/sh
# Written by tools/ensure_perf_analyzer.sh: perf_analyzer with the libraries it needs.
LD_LIBRARY_PATH="$D/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$D/bin/perf_analyzer" "\$@"
EOF
chmod +x "$WRAPPER.part" && mv "$WRAPPER.part" "$WRAPPER"
echo "$WRAPPER"
