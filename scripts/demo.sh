#!/usr/bin/env bash
# One command, one terminal: builds everything, starts the three demo backends and the
# gateway, then runs the sample's client against a backend until Ctrl-C.
#
#   ./scripts/demo.sh [Backend_ABC|Backend_PQR|Backend_XYZ] [extra loadgen demo flags...]
#
# Ports: as Config.toml says — the backends' in [backends] (8081-8083), the gateway's in
# [server] listen (9090) and the admin listener's in [admin] listen (9091); the backends
# are started on the ports their routes name, and the client goes to the gateway's port
# and path. Something else on one of them stops the demo before it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
backend="${1:-Backend_ABC}"
shift || true

# `key = "…:PORT…"` inside the section `[$1]` of Config.toml, or $3.
port_in() {
  local found
  found="$(sed -n "/^\[$1\]/,/^\[/{s/^$2 *= *\"[^\"]*:\([0-9][0-9]*\).*/\1/p}" Config.toml | head -1)"
  echo "${found:-$3}"
}
abc_port="$(port_in backends Backend_ABC 8081)"
pqr_port="$(port_in backends Backend_PQR 8082)"
xyz_port="$(port_in backends Backend_XYZ 8083)"
gateway_port="$(port_in server listen 9090)"
admin_port="$(port_in admin listen 9091)"
path="$(sed -n '/^\[server\]/,/^\[/{s/^path *= *"\([^"]*\)".*/\1/p}' Config.toml | head -1)"
path="${path:-/gateway}"

ports=("$abc_port" "$pqr_port" "$xyz_port" "$gateway_port" "$admin_port")
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "${ports[@]}"; do
  if in_use "$port"; then
    echo "demo: port $port is already in use (another gateway or demo still running?)" >&2
    exit 1
  fi
done

cargo build --release -p demo-services -p gateway -p loadgen
# Where cargo put them: CARGO_TARGET_DIR or build.target-dir may move them from ./target.
bin="$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release"

pids=()
# Stops the servers: one SIGTERM each (a second stop signal would make the gateway skip
# its drain). After a Ctrl-C, which the terminal sends every process of the demo, they are
# first given up to 15 s to finish on their own.
stop_servers() {
  trap - EXIT INT TERM
  if [ "${1:-}" = after-signal ]; then
    for _ in $(seq 1 150); do
      alive=0
      for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
      [ "$alive" = 0 ] && break
      sleep 0.1
    done
  fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_servers EXIT
trap 'stop_servers after-signal; exit 130' INT TERM

"$bin/demo-services" --abc-port "$abc_port" --pqr-port "$pqr_port" --xyz-port "$xyz_port" &
pids+=($!)
"$bin/gateway" --config Config.toml &
pids+=($!)

# Wait (bounded) until the gateway and backends accept connections; stop if either
# process died (a port taken meanwhile, a bad config) or the wait runs out.
for port in "$abc_port" "$pqr_port" "$xyz_port" "$gateway_port"; do
  for _ in $(seq 1 150); do
    in_use "$port" && break
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { echo "demo: a server exited; see its error above" >&2; exit 1; }
    done
    sleep 0.1
  done
  in_use "$port" || { echo "demo: nothing listens on port $port after 15 s" >&2; exit 1; }
done

"$bin/loadgen" demo --url "wss://localhost:$gateway_port$path" --backend "$backend" "$@"
