#!/usr/bin/env bash
# tests/test_metrics.py and tests/test_grafana.py scrape the daemon with a real Prometheus server (Debian's
# package `prometheus`). One on PATH is used; else Debian's package is fetched with `apt-get download` and
# unpacked with dpkg-deb into .venv/prometheus: nothing is installed on the system and no root is needed.
# Where neither works, those tests skip and say why.
command -v prometheus >/dev/null 2>&1 && exit 0
dir="${VENV:-.venv}/prometheus"
[ -x "$dir/usr/bin/prometheus" ] && exit 0
mkdir -p "$dir" && cd "$dir" || exit 0
fetch() { apt-get download prometheus >/dev/null 2>&1; }
# apt-get download needs the package lists; only root may refresh them.
if fetch || { [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1 && fetch; }; then
  if dpkg-deb -x prometheus_*.deb . && rm -f prometheus_*.deb; then
    echo "fetched Debian's prometheus into $dir (not installed; for the metrics tests)" >&2
    exit 0
  fi
fi
echo "prometheus is not on PATH and could not be fetched (apt-get download prometheus):" \
     "the tests that query a real Prometheus will be skipped" >&2
exit 0
