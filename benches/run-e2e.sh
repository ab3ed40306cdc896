#!/usr/bin/env bash
# The end-to-end load run, side by side with nginx and HAProxy: installs them from Debian's
# packages when missing (root needed; skipped with a message otherwise), then runs e2e_load.
# Only their binaries are used: each is started on a private config and port by the bench and
# ended by it; no system service is started.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps the packages from starting their system services.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq "${missing[@]}" >/dev/null || echo "could not install ${missing[*]}; those runs are skipped"
    rm -f /usr/sbin/policy-rc.d
  else
    echo "not root: ${missing[*]} not installed; those runs are skipped"
  fi
fi

cargo bench --bench e2e_load "$@"
