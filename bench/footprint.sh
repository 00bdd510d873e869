#!/usr/bin/env bash
# Agent footprint, side by side with prometheus-node-exporter.
#
# Builds the release agent and controller, starts a controller (SQLite in a
# temporary directory, loopback ports), one agent with `--cards sim:8` at
# 1 Hz heartbeats, and node-exporter on a loopback port scraped once a second
# with curl. After a warm-up it samples both processes' resident memory
# (VmRSS, /proc/PID/status) and CPU time (utime + stime, /proc/PID/stat)
# once a second and prints a table.
#
# Usage: bench/footprint.sh [DURATION_S] [WARMUP_S]   (defaults: 60 and 10)
# Env:   NODE_EXPORTER (default: prometheus-node-exporter or node_exporter on PATH)
#        SKIP_BUILD=1 uses the binaries already in target/release.
set -euo pipefail

DURATION=${1:-60}
WARMUP=${2:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

NE=${NODE_EXPORTER:-$(command -v prometheus-node-exporter || command -v node_exporter || true)}
if [[ -z "$NE" ]]; then
    echo "footprint: node-exporter not found; install it (Debian: apt-get install -y prometheus-node-exporter) or set NODE_EXPORTER" >&2
    exit 2
fi
command -v curl >/dev/null || { echo "footprint: curl is required" >&2; exit 2; }

if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release -q -p vigil-agent -p vigil-controller
fi
AGENT=target/release/vigil-agent
CONTROLLER=target/release/vigil-controller

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
GRPC=$(free_port); HTTP=$(free_port); PROG=$(free_port); NEP=$(free_port)

VIGIL_LOG=warn "$CONTROLLER" --grpc-listen "127.0.0.1:$GRPC" --http-listen "127.0.0.1:$HTTP" \
    --store "sqlite://$WORK/vigil.db" --heartbeat-ms 1000 >"$WORK/controller.log" 2>&1 &
CPID=$!; PIDS+=("$CPID")
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$HTTP/readyz" >/dev/null && break; sleep 0.1; done

VIGIL_LOG=warn "$AGENT" --controller "http://127.0.0.1:$GRPC" --node-id fp0 --cards sim:8 \
    --heartbeat-ms 1000 --progress-listen "127.0.0.1:$PROG" >"$WORK/agent.log" 2>&1 &
APID=$!; PIDS+=("$APID")

"$NE" --web.listen-address="127.0.0.1:$NEP" >"$WORK/node-exporter.log" 2>&1 &
NPID=$!; PIDS+=("$NPID")

# One scrape a second, like a Prometheus server with a 1 s interval.
( while sleep 1; do curl -fs -o /dev/null "http://127.0.0.1:$NEP/metrics" || true; done ) &
SPID=$!; PIDS+=("$SPID")

sleep 1
for p in "$APID" "$NPID" "$CPID"; do
    kill -0 "$p" 2>/dev/null || { echo "footprint: a process exited early; logs in $WORK" >&2; cat "$WORK"/*.log >&2; exit 1; }
done
# The agent must really be connected and heartbeating.
for _ in $(seq 50); do
    curl -fs "http://127.0.0.1:$HTTP/api/v1/nodes/fp0" >/dev/null && break; sleep 0.2
done
curl -fs "http://127.0.0.1:$HTTP/api/v1/nodes/fp0" >/dev/null || { echo "footprint: agent never registered" >&2; exit 1; }

TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" | tail -1; }  # utime + stime
rss_kb()    { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
threads()   { awk '/^Threads:/ { print $2 }' "/proc/$1/status"; }

echo "warm-up ${WARMUP}s, then sampling ${DURATION}s ..." >&2
sleep "$WARMUP"

A0=$(cpu_ticks "$APID"); N0=$(cpu_ticks "$NPID"); T0=$(date +%s.%N)
ARSS=(); NRSS=()
for _ in $(seq "$DURATION"); do
    sleep 1
    ARSS+=("$(rss_kb "$APID")"); NRSS+=("$(rss_kb "$NPID")")
done
A1=$(cpu_ticks "$APID"); N1=$(cpu_ticks "$NPID"); T1=$(date +%s.%N)

stats() {  # mean and max of the arguments (kB) in MB
    printf '%s\n' "$@" | awk '{ s += $1; if ($1 > m) m = $1 } END { printf "%.1f %.1f", s / NR / 1024, m / 1024 }'
}
cpu_pct() { awk -v a="$1" -v b="$2" -v t0="$3" -v t1="$4" -v hz="$TCK" 'BEGIN { printf "%.2f", (b - a) / hz / (t1 - t0) * 100 }'; }

read -r AMEAN AMAX <<<"$(stats "${ARSS[@]}")"
read -r NMEAN NMAX <<<"$(stats "${NRSS[@]}")"
ACPU=$(cpu_pct "$A0" "$A1" "$T0" "$T1")
NCPU=$(cpu_pct "$N0" "$N1" "$T0" "$T1")

echo "machine: $(nproc) cores, $(uname -sr); ${DURATION}s after ${WARMUP}s warm-up; CPU is % of one core (clock ticks: 1/${TCK} s)"
printf '%-28s %14s %13s %12s %8s\n' process "RSS mean (MB)" "RSS max (MB)" "CPU (%)" threads
printf '%-28s %14s %13s %12s %8s\n' "vigil-agent (sim:8, 1 Hz)" "$AMEAN" "$AMAX" "$ACPU" "$(threads "$APID")"
printf '%-28s %14s %13s %12s %8s\n' "node-exporter (1 scrape/s)" "$NMEAN" "$NMAX" "$NCPU" "$(threads "$NPID")"
