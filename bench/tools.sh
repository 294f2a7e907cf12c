#!/usr/bin/env bash
# Installs what the benchmarks (and the profile-guided build's training run) use:
# HAProxy, nginx with its stream module, wrk, h2load, valgrind. Sourced by
# bench/run.sh and deploy/build-pgo.sh.
export DEBIAN_FRONTEND=noninteractive
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
command -v valgrind >/dev/null || need+=(valgrind)
command -v curl >/dev/null || need+=(curl)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The Debian packages start system services; the benchmarks run their own instances.
systemctl stop nginx haproxy >/dev/null 2>&1 || true
