#!/usr/bin/env bash
# The I/O-model probe: a bare TCP relay on epoll (tokio) and on io_uring (monoio), and
# HAProxy's TCP mode as the harness's floor, each driven by loadgen with (b)'s settings
# (100 connections x 32 in flight, 128 B, ws:// to one demo backend) in interleaved
# rounds. Prints each relay's CPU per forwarded message (utime+stime from /proc over a
# window in the middle of the run) and its kernel share.
#
# usage: compare/probes/relay-io/run.sh [ROUNDS] [SECONDS_PER_RUN]    (default 3, 10)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
rounds=${1:-3}
secs=${2:-10}
(( secs >= 8 )) || { echo "runs of at least 8 s (the CPU window is 5 s from the 3rd)" >&2; exit 2; }

cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p loadgen -p demo-services
CARGO_TARGET_DIR="$root/target" cargo build --release --quiet --manifest-path "$here/Cargo.toml"
bin=$root/target/release
tck=$(getconf CLK_TCK)
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  local deadline=$((SECONDS + 20))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    (( SECONDS < deadline )) || { echo "nothing listens on :$1" >&2; exit 1; }
    sleep 0.05
  done
}
ticks() { awk '{print $14 + $15, $15}' "/proc/$1/stat"; }

bport=$(free_port)
RUST_LOG=warn "$bin/demo-services" --only abc --abc-port "$bport" --push-interval 0 >"$tmp/backend.log" 2>&1 &
pids+=($!)
wait_port "$bport"

targets=(tokio uring uring-defer)
command -v haproxy >/dev/null && targets+=(haproxy)

# Starts TARGET, sets relay_pid and relay_port.
start() {
  case $1 in
    haproxy)
      relay_port=$(free_port)
      printf 'global\n    nbthread 2\n    maxconn 9900\ndefaults\n    mode tcp\n    timeout connect 10s\n    timeout client 30s\n    timeout server 30s\nfrontend fe\n    bind 127.0.0.1:%s\n    default_backend be\nbackend be\n    server abc 127.0.0.1:%s\n' \
        "$relay_port" "$bport" >"$tmp/relay.cfg"
      haproxy -f "$tmp/relay.cfg" -db >"$tmp/haproxy.log" 2>&1 &
      relay_pid=$!
      ;;
    *)
      "$bin/relay-io" "$1" "127.0.0.1:$bport" 2 >"$tmp/relay.out" 2>&1 &
      relay_pid=$!
      local deadline=$((SECONDS + 10))
      until grep -q '^listening on' "$tmp/relay.out"; do
        (( SECONDS < deadline )) || { cat "$tmp/relay.out" >&2; exit 1; }
        sleep 0.05
      done
      relay_port=$(awk '/^listening on/{print $3}' "$tmp/relay.out")
      ;;
  esac
  pids+=("$relay_pid")
  wait_port "$relay_port"
}

echo "round target msgs/s relay_cpu_us_per_fwd_msg kernel_share"
for ((r = 0; r < rounds; r++)); do
  for ((i = 0; i < ${#targets[@]}; i++)); do
    t=${targets[$(((i + r) % ${#targets[@]}))]}
    start "$t"
    "$bin/loadgen" --url "ws://127.0.0.1:$relay_port/backend/abc" --conns 100 --inflight 32 \
      --size 128 --duration "${secs}s" >"$tmp/lg.out" 2>&1 &
    lg=$!
    sleep 3
    read -r all1 sys1 < <(ticks "$relay_pid")
    sleep 5
    read -r all2 sys2 < <(ticks "$relay_pid")
    wait "$lg" || { cat "$tmp/lg.out" >&2; exit 1; }
    kill "$relay_pid"; wait "$relay_pid" 2>/dev/null || true
    grep -q 'PASS: no integrity errors' "$tmp/lg.out" || { cat "$tmp/lg.out" >&2; exit 1; }
    rate=$(awk '/^total/{print $8}' "$tmp/lg.out")
    awk -v r=$((r + 1)) -v t="$t" -v rate="$rate" -v cpu=$((all2 - all1)) -v sys=$((sys2 - sys1)) -v tck="$tck" \
      'BEGIN { printf "%d %s %d %.4f %.0f%%\n", r, t, rate, cpu / tck * 1e6 / (rate * 5 * 2), 100 * sys / cpu }'
  done
done | tee "$tmp/rounds.txt"

echo
echo "median per target (µs of relay CPU per forwarded message; an echo is two):"
for t in "${targets[@]}"; do
  awk -v t="$t" '$2 == t { print $4 }' "$tmp/rounds.txt" | sort -n |
    awk -v t="$t" '{ v[NR] = $1 } END { printf "  %-12s %.4f\n", t, v[int((NR + 1) / 2)] }'
done
