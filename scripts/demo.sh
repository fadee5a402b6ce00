#!/usr/bin/env bash
# One command, one terminal: builds everything, starts the three demo backends and the
# gateway, then runs the sample's client against a backend until Ctrl-C.
#
#   ./scripts/demo.sh [Backend_ABC|Backend_PQR|Backend_XYZ] [extra loadgen demo flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
backend="${1:-Backend_ABC}"
shift || true

cargo build --release -p demo-services -p gateway -p loadgen

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

./target/release/demo-services &
pids+=($!)
./target/release/gateway --config Config.toml &
pids+=($!)

# Wait (bounded) until the gateway and backends accept connections.
for port in 8081 8082 8083 9090; do
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
  done
done

./target/release/loadgen demo --backend "$backend" "$@"
