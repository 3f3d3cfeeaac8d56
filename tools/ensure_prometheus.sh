#!/usr/bin/env bash
# tests/test_metrics.py scrapes the daemon with a real Prometheus server
# (Debian's package `prometheus`); install it when it is missing and we may.
command -v prometheus >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } \
    >/dev/null 2>&1 || echo "could not install prometheus: the metrics test will be skipped" >&2
else
  echo "prometheus is not installed (apt-get install prometheus): the metrics test will be skipped" >&2
fi
exit 0
