#!/usr/bin/env bash
# Failover through an L4 balancer: 3 gateway processes (release binaries, distinct ports)
# behind HAProxy in TCP mode (TLS passes through to the gateways), the demo backends, and
# loadgen --reconnect through HAProxy. Mid-run one gateway gets SIGTERM: it drains (its
# clients get close 1001), HAProxy's /readyz check takes it out, the clients reconnect
# through HAProxy to the other two, and loadgen's integrity check must show no error on
# the live sessions.
#
#   scripts/failover.sh [--no-build] [--no-install] [--conns N] [--rate MSGS_PER_S]
#                       [--duration SECONDS] [--kill-after SECONDS]
#
# Defaults: 300 connections, open loop at 3000 msg/s, 20 s of sending, SIGTERM 6 s after
# every session is open. Checks (exit 1 if any fails, 0 if all pass):
#   - the stopped gateway exits 0 within its drain timeout;
#   - the clients it held get close 1001, as many as it held, and each reconnects;
#   - every session is back on the other gateways while the run goes on;
#   - loadgen: 0 integrity errors, 0 dropped connections, exit status 0.
# Installs HAProxy from Debian if missing; the system service is never used: configs,
# logs and reports live in a temp folder, removed at the end. Bounded: every process is
# stopped on exit; the whole run takes about a minute.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
build=1
install=1
conns=300
rate=3000
duration=20
kill_after=6
while (($#)); do
    case "$1" in
        --no-build) build=0 ;;
        --no-install) install=0 ;;
        --conns) conns="$2"; shift ;;
        --rate) rate="$2"; shift ;;
        --duration) duration="$2"; shift ;;
        --kill-after) kill_after="$2"; shift ;;
        -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "failover.sh: unknown option $1" >&2; exit 64 ;;
    esac
    shift
done
export PATH="$PATH:/usr/sbin:/sbin"

if ! command -v haproxy >/dev/null 2>&1; then
    if ((!install)); then echo "failover.sh: haproxy missing (and --no-install given)" >&2; exit 69; fi
    sudo=(); if [ "$(id -u)" != 0 ]; then sudo=(sudo); fi
    echo "failover.sh: installing haproxy from Debian (its system service is not used)" >&2
    "${sudo[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y haproxy
fi
for tool in curl jq python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "failover.sh: $tool needed" >&2; exit 69; }
done
if ((build)); then
    (cd "$repo" && cargo build --release -p loadgen -p gateway -p demo-services)
fi
bin="${CARGO_TARGET_DIR:-$repo/target}/release"

# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
tmp="$(mktemp -d /tmp/wsgate-failover.XXXXXX)"
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

read -r -a ports <<<"$(free_ports 10)"
b_abc=${ports[0]} b_pqr=${ports[1]} b_xyz=${ports[2]}
gw_port=("${ports[3]}" "${ports[4]}" "${ports[5]}")
admin_port=("${ports[6]}" "${ports[7]}" "${ports[8]}")
lb_port=${ports[9]}

"$bin/demo-services" --abc-port "$b_abc" --pqr-port "$b_pqr" --xyz-port "$b_xyz" \
    --push-interval 0 >"$tmp/backends.log" 2>&1 &
pids+=($!)
gw_pid=()
for i in 0 1 2; do
    gateway_toml "$tmp/gateway$i.toml" "127.0.0.1:${gw_port[$i]}" "127.0.0.1:${admin_port[$i]}" \
        false "$b_abc" "$b_pqr" "$b_xyz" $'[timeouts]\ndrain = "10s"'
    RUST_LOG=warn "$bin/gateway" --config "$tmp/gateway$i.toml" >"$tmp/gateway$i.log" 2>&1 &
    gw_pid+=($!)
    pids+=($!)
done
cat >"$tmp/haproxy.cfg" <<EOF
# TCP mode: TLS passes through; /readyz on each gateway's admin port is the health check,
# so a draining gateway (503) leaves the pool within a second.
global
    maxconn 9000
defaults
    mode tcp
    timeout connect 2s
    timeout client 2m
    timeout server 2m
    retries 3
    option redispatch 1
frontend wss
    bind 127.0.0.1:$lb_port
    default_backend gateways
backend gateways
    balance roundrobin
    option httpchk GET /readyz
    # A check must fail twice (not once: this machine is busy) to take a server out;
    # connections refused meanwhile are retried on another server (redispatch).
    timeout check 2s
    default-server check inter 300ms fall 2 rise 1
    server gw0 127.0.0.1:${gw_port[0]} port ${admin_port[0]}
    server gw1 127.0.0.1:${gw_port[1]} port ${admin_port[1]}
    server gw2 127.0.0.1:${gw_port[2]} port ${admin_port[2]}
EOF
haproxy -f "$tmp/haproxy.cfg" -db >"$tmp/haproxy.log" 2>&1 &
pids+=($!)
for p in "$b_abc" "$b_pqr" "$b_xyz" "${gw_port[@]}" "${admin_port[@]}" "$lb_port"; do
    wait_port "$p" 20 || { tail -n 5 "$tmp"/*.log; exit 1; }
done
sleep 1 # HAProxy's first health checks
log "3 gateways on ${gw_port[*]} behind HAProxy 2.6 (TCP mode) on $lb_port; backends on $b_abc $b_pqr $b_xyz"
log "loadgen: $conns connections, open loop at $rate msg/s, ${duration}s, --reconnect"

cd "$repo"
"$bin/loadgen" --url "wss://localhost:$lb_port/gateway" --backend all --conns "$conns" \
    --rate "$rate" --duration "${duration}s" --reconnect --no-progress \
    --json "$tmp/loadgen.json" >"$tmp/loadgen.out" 2>"$tmp/loadgen.err" &
lg=$!
pids+=("$lg")

sessions() { # total sessions_active over the gateways given by index
    local sum=0
    for i in "$@"; do sum=$((sum + $(metric "${admin_port[$i]}" wsgate_sessions_active))); done
    echo "$sum"
}
deadline=$((SECONDS + 60))
until [ "$(sessions 0 1 2)" -ge "$conns" ]; do
    kill -0 "$lg" 2>/dev/null || { log "loadgen ended early"; cat "$tmp/loadgen.out" "$tmp/loadgen.err" "$tmp/haproxy.log"; exit 1; }
    ((SECONDS < deadline)) || { log "sessions never all open: $(sessions 0 1 2)/$conns"; exit 1; }
    sleep 0.2
done
log "all $conns sessions open: $(sessions 0) / $(sessions 1) / $(sessions 2) on gw0 / gw1 / gw2"
log "connections accepted: $(metric "${admin_port[0]}" wsgate_connections_accepted_total) / $(metric "${admin_port[1]}" wsgate_connections_accepted_total) / $(metric "${admin_port[2]}" wsgate_connections_accepted_total)"
sleep "$kill_after"
victim=1
held=$(sessions $victim)
log "SIGTERM gw$victim (holding $held sessions)"
t_kill=$SECONDS
kill -TERM "${gw_pid[$victim]}"
victim_rc=0
wait "${gw_pid[$victim]}" || victim_rc=$?
log "gw$victim exited with status $victim_rc after $((SECONDS - t_kill)) s"

# Every session back on the other two while loadgen still runs.
back_in=""
deadline=$((SECONDS + 15))
while kill -0 "$lg" 2>/dev/null && ((SECONDS < deadline)); do
    if [ "$(sessions 0 2)" -ge "$conns" ]; then back_in=$((SECONDS - t_kill)); break; fi
    sleep 0.2
done
log "sessions after the failover: $(sessions 0) / - / $(sessions 2) on gw0 / gw1 / gw2"
lg_rc=0
wait "$lg" || lg_rc=$?

echo
cat "$tmp/loadgen.out"
echo
j="$tmp/loadgen.json"
q() { jq -r "$1" "$j"; }
errors=$(q .total.errors.total)
dropped=$(q .total.connections.dropped)
opened=$(q .total.connections.opened)
reconnects=$(q .total.connections.reconnects)
closes_1001=$(q '[.total.connections.closes[] | select(.reason == "1001") | .count] | add // 0')
closes_all=$(q '[.total.connections.closes[] | "\(.reason) ×\(.count)"] | join(", ")')
lost=$(q .total.messages.lost_at_close)
sent=$(q .total.messages.sent)
echoed=$(q .total.messages.echoed)

fail=0
check() { # description, condition result (0 = pass)
    if [ "$2" = 0 ]; then echo "  PASS  $1"; else echo "  FAIL  $1"; fail=1; fi
}
echo "== failover summary ($(date -u '+%F %H:%M UTC'))"
echo "  gateways 3 behind HAProxy (TCP), $conns connections, $rate msg/s, ${duration}s; gw$victim got SIGTERM holding $held sessions"
echo "  closed by the server: ${closes_all:-none}; reconnects $reconnects; lost at close $lost of $sent sent ($echoed echoed)"
echo "  sessions back on the other gateways after: ${back_in:-never} s"
check "gw$victim drained and exited 0 (status $victim_rc)" "$victim_rc"
check "its $held clients got close 1001 (1001 closes: $closes_1001)" "$([ "$held" -gt 0 ] && [ "$closes_1001" = "$held" ] && echo 0 || echo 1)"
check "each reconnected through HAProxy (reconnects: $reconnects)" "$([ "$reconnects" = "$held" ] && echo 0 || echo 1)"
check "all $conns sessions back on gw0 + gw2 while the run went on" "$([ -n "$back_in" ] && echo 0 || echo 1)"
check "all $conns connections opened, none dropped (opened $opened, dropped $dropped)" "$([ "$opened" = "$conns" ] && [ "$dropped" = 0 ] && echo 0 || echo 1)"
check "0 integrity errors on the live sessions (errors: $errors)" "$([ "$errors" = 0 ] && echo 0 || echo 1)"
check "loadgen exit status 0 (was $lg_rc)" "$lg_rc"
if ((fail)); then
    echo "FAILOVER: FAIL"
    echo "--- gateway$victim log (tail)"; tail -n 5 "$tmp/gateway$victim.log"
    echo "--- haproxy log (tail)"; tail -n 5 "$tmp/haproxy.log"
    exit 1
fi
echo "FAILOVER: PASS"
