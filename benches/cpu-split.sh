#!/usr/bin/env bash
# Where a proxy's CPU goes in one e2e_load scenario: kernel and user time per message (or per
# handshake), from perf's cpu-clock samples of the proxy's threads, for each proxy side by side.
#
# Why: on loopback most of a proxy's CPU is the kernel's TCP work, the same for every proxy that
# makes the same syscalls; this shows how much of a ratio user space can still move. It is the
# measurement behind issue 10's note (64 B echo: ~92 % kernel for switchboard and nginx alike).
#
# Usage: benches/cpu-split.sh SCENARIO [PROXY ...]
#   SCENARIO: echo64, echo4k or handshake (an e2e_load scenario that prints a rate)
#   PROXY:    switchboard, nginx, haproxy (default: all three)
# Environment: E2E_SECONDS (window, default 8), SPLIT_TOP (kernel and user symbols listed per
# proxy, default 12), SPLIT_OUT (where perf data is kept, default target/cpu-split).
# Needs root (perf -a) and perf (Debian: linux-perf). Samples at 4 kHz on every CPU while the
# bench runs; the proxy is busy only in its own window, so idle samples outside it are few.
set -euo pipefail
cd "$(dirname "$0")/.."

scenario=${1:?usage: benches/cpu-split.sh SCENARIO [PROXY ...]}
shift
proxies=("$@")
[ ${#proxies[@]} -gt 0 ] || proxies=(switchboard nginx haproxy)
command -v perf >/dev/null || { echo "perf not found (Debian: apt-get install linux-perf)"; exit 2; }
seconds=${E2E_SECONDS:-8}
top=${SPLIT_TOP:-12}
out=${SPLIT_OUT:-target/cpu-split}
mkdir -p "$out"
cargo bench --bench e2e_load --no-run >/dev/null 2>&1

for proxy in "${proxies[@]}"; do
  case $proxy in
    switchboard) comms=switchboard,switchboard-loo ;;
    nginx) comms=nginx ;;
    haproxy) comms=haproxy ;;
    *) echo "unknown proxy $proxy"; exit 2 ;;
  esac
  data=$out/$scenario-$proxy.data
  log=$out/$scenario-$proxy.log
  E2E_SCENARIOS=$scenario E2E_PROXIES=$proxy E2E_SECONDS=$seconds \
    perf record -q -F 4000 -e cpu-clock -a -o "$data" -- cargo bench --bench e2e_load >"$log" 2>&1
  # The rate of the proxied run: "... PROXY : N msg/s" (echo) or "... PROXY : N/s" (handshakes).
  line=$(grep -E "^(echo|handshakes).* $proxy *:" "$log" | head -1 || true)
  rate=$(sed -E 's/.*: +([0-9]+)(\/s| msg\/s).*/\1/' <<<"$line")
  if [ -z "$line" ] || [ -z "$rate" ]; then
    echo "$proxy: no rate in $log (skipped by the bench?)"
    continue
  fi
  unit=$([ "$scenario" = handshake ] && echo handshake || echo msg)
  echo "== $proxy, $scenario: $line"
  perf script -i "$data" --comms "$comms" -F ip,sym 2>/dev/null |
    awk -v rate="$rate" -v secs="$seconds" -v top="$top" -v unit="$unit" '
      # One line per sample (recorded without call chains): the sampled address (kernel
      # addresses start with ffff) and its symbol.
      NF > 0 {
        n++
        kernel = ($1 ~ /^ffff/)
        $1 = ""
        if (kernel) { nk++; ks[$0]++ } else { nu++; us[$0]++ }
      }
      END {
        per = 1e6 / 4000 / (rate * secs)   # microseconds of CPU per unit, per sample
        printf "CPU us/%s: total %.2f, kernel %.2f (%.0f %%), user %.2f\n", unit, n * per, nk * per, 100 * nk / n, nu * per
        cmd = "sort -rn | head -" top
        for (s in ks) printf "  %7.3f us  kernel %s\n", ks[s] * per, s | cmd
        close(cmd)
        for (s in us) printf "  %7.3f us  user   %s\n", us[s] * per, s | cmd
        close(cmd)
      }'
done
