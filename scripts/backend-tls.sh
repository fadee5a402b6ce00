#!/usr/bin/env bash
# What a wss:// backend costs against a ws:// one, through one gateway (release binaries):
# the same demo backend served plain and over TLS (demo-services --tls-cert), one gateway
# routing Backend_PLAIN to the first and Backend_TLS to the second, and loadgen driving
# each in turn, in interleaved rounds (PLAIN TLS PLAIN TLS ...) so drift hits both alike.
#
#   scripts/backend-tls.sh [--no-build] [--rounds N] [--conns N] [--inflight N]
#                          [--size BYTES] [--duration SECONDS] [--storm N] [--idle N]
#
# Defaults: 3 rounds of 100 connections x 32 in flight, 128 B, 8 s each (the comparison's
# scenario b), each round also --storm 1000 new connections per kind (client TLS, token,
# backend connect, one echo); then --idle 2000 sessions held on a fresh gateway per kind
# for the memory figure. Prints per round msgs/s, RTT p50/p99 and the gateway's CPU per
# forwarded message (utime+stime from /proc over the run, / 2 per echo), new connections
# per second and the gateway's CPU per new connection, the medians and the TLS/plain
# ratios, and the gateway's RSS per idle session of each kind. Exit 1 if loadgen saw an
# integrity error or a failed connection. Loopback only; every process is stopped on exit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
build=1 rounds=3 conns=100 inflight=32 size=128 duration=8 storm=1000 idle=2000
while (($#)); do
    case "$1" in
        --no-build) build=0 ;;
        --rounds) rounds="$2"; shift ;;
        --conns) conns="$2"; shift ;;
        --inflight) inflight="$2"; shift ;;
        --size) size="$2"; shift ;;
        --duration) duration="$2"; shift ;;
        --storm) storm="$2"; shift ;;
        --idle) idle="$2"; shift ;;
        -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "backend-tls.sh: unknown option $1" >&2; exit 64 ;;
    esac
    shift
done
for tool in curl python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "backend-tls.sh: $tool needed" >&2; exit 69; }
done
if ((build)); then
    (cd "$repo" && cargo build --release -p loadgen -p gateway -p demo-services)
fi
bin="${CARGO_TARGET_DIR:-$repo/target}/release"

# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
tmp="$(mktemp -d /tmp/wsgate-backend-tls.XXXXXX)"
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

read -r -a ports <<<"$(free_ports 4)"
plain=${ports[0]} secure=${ports[1]} gw=${ports[2]} admin=${ports[3]}
"$bin/demo-services" --only abc --abc-port "$plain" --push-interval 0 >"$tmp/plain.log" 2>&1 &
pids+=($!)
"$bin/demo-services" --only abc --abc-port "$secure" --push-interval 0 \
    --tls-cert "$repo/certs/server.crt" --tls-key "$repo/certs/server.key" >"$tmp/tls.log" 2>&1 &
pids+=($!)
cat >"$tmp/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$gw"

[admin]
listen = "127.0.0.1:$admin"

[tls]
cert = "$repo/certs/server.crt"
key = "$repo/certs/server.key"

[backend_tls]
ca = "$repo/certs/ca.crt"

[auth]
public_key = "$repo/certs/jwt-public.pem"

[backends]
Backend_PLAIN = "ws://127.0.0.1:$plain/backend/abc"
Backend_TLS = "wss://localhost:$secure/backend/abc"
EOF
gw_pid=""
start_gateway() {
    RUST_LOG=warn "$bin/gateway" --config "$tmp/gateway.toml" >>"$tmp/gateway.log" 2>&1 &
    gw_pid=$!
    pids+=("$gw_pid")
    wait_port "$gw" 20
}
stop_gateway() {
    kill -TERM "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
}
wait_port "$plain" 20 && wait_port "$secure" 20
start_gateway
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

cd "$repo"
: >"$tmp/runs.tsv"
: >"$tmp/storms.tsv"
fail=0
log "gateway on $gw; Backend_PLAIN ws://:$plain, Backend_TLS wss://localhost:$secure"
log "$rounds rounds of $conns connections x $inflight in flight, $size B, ${duration}s each"
for r in $(seq "$rounds"); do
    for b in Backend_PLAIN Backend_TLS; do
        before=$(cpu_ticks "$gw_pid")
        "$bin/loadgen" --url "wss://localhost:$gw/gateway" --backend "$b" --conns "$conns" \
            --inflight "$inflight" --size "$size" --duration "${duration}s" --no-progress \
            --json "$tmp/$b-$r.json" >"$tmp/$b-$r.out" 2>&1 || fail=1
        after=$(cpu_ticks "$gw_pid")
        python3 - "$tmp/$b-$r.json" "$b" "$r" "$((after - before))" "$(getconf CLK_TCK)" >>"$tmp/runs.tsv" <<'EOF'
import json, sys
path, backend, rnd, ticks, hz = sys.argv[1:]
t = json.load(open(path))["total"]
echoed = t["messages"]["echoed"]
cpu_us = int(ticks) / int(hz) * 1e6
per_fwd = cpu_us / (2 * echoed) if echoed else float("nan")
errors = t["errors"]["total"] + t["connections"]["failed"]
print(backend, rnd, f'{t["messages"]["msgs_per_s"]:.0f}', t["rtt_us"]["p50"], t["rtt_us"]["p99"],
      f"{per_fwd:.3f}", errors, sep="\t")
EOF
        [ "$(tail -n 1 "$tmp/runs.tsv" | cut -f7)" = 0 ] || fail=1
        tail -n 1 "$tmp/runs.tsv" | awk -F'\t' '{ printf "  round %s %-13s %9s msgs/s  p50 %6s µs  p99 %6s µs  gateway %s µs/fwd msg  errors %s\n", $2, $1, $3, $4, $5, $6, $7 }'
    done
    ((storm > 0)) || continue
    for b in Backend_PLAIN Backend_TLS; do
        before=$(cpu_ticks "$gw_pid")
        "$bin/loadgen" --url "wss://localhost:$gw/gateway" --backend "$b" --conns "$storm" \
            --duration 1ms --no-progress --json "$tmp/storm-$b-$r.json" >"$tmp/storm-$b-$r.out" 2>&1 || fail=1
        after=$(cpu_ticks "$gw_pid")
        python3 - "$tmp/storm-$b-$r.json" "$b" "$r" "$((after - before))" "$(getconf CLK_TCK)" >>"$tmp/storms.tsv" <<'EOF'
import json, sys
path, backend, rnd, ticks, hz = sys.argv[1:]
doc = json.load(open(path))
opened = doc["total"]["connections"]["opened"]
cpu_us = int(ticks) / int(hz) * 1e6
print(backend, rnd, f'{doc["conns_per_s"] or 0:.0f}', f"{cpu_us / opened if opened else float('nan'):.0f}",
      doc["total"]["connections"]["failed"], sep="\t")
EOF
        [ "$(tail -n 1 "$tmp/storms.tsv" | cut -f5)" = 0 ] || fail=1
        tail -n 1 "$tmp/storms.tsv" | awk -F'\t' '{ printf "  round %s %-13s %9s new conns/s  gateway %s µs/conn  failed %s\n", $2, $1, $3, $4, $5 }'
    done
done

# Idle sessions: a fresh gateway per kind, RSS before and with every session open.
idle_kib=""
idle_rss() { # backend; sets idle_kib to the KiB per session (not in a subshell: it restarts the gateway)
    stop_gateway
    start_gateway
    local base held
    base=$(rss_kib "$gw_pid")
    "$bin/loadgen" --url "wss://localhost:$gw/gateway" --backend "$1" --conns "$idle" \
        --hold 30s --duration 1s --rate 1 --no-progress >"$tmp/idle-$1.out" 2>&1 &
    local lg=$!
    pids+=("$lg")
    local deadline=$((SECONDS + 60))
    until [ "$(metric "$admin" wsgate_sessions_active)" -ge "$idle" ]; do
        ((SECONDS < deadline)) || { log "only $(metric "$admin" wsgate_sessions_active) of $idle sessions opened"; fail=1; break; }
        sleep 0.2
    done
    sleep 1
    held=$(rss_kib "$gw_pid")
    kill -TERM "$lg" 2>/dev/null || true
    wait "$lg" 2>/dev/null || true
    idle_kib=$(python3 -c "print(f'{($held - $base) / $idle:.1f}')")
}
if ((idle > 0)); then
    log "idle: $idle sessions held per kind, each on a freshly started gateway"
    idle_rss Backend_PLAIN
    plain_kib=$idle_kib
    idle_rss Backend_TLS
    tls_kib=$idle_kib
fi

python3 - "$tmp/runs.tsv" "${plain_kib:-}" "${tls_kib:-}" "$tmp/storms.tsv" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
med = {}
for kind in ("Backend_PLAIN", "Backend_TLS"):
    mine = [r for r in rows if r[0] == kind]
    med[kind] = [statistics.median(float(r[i]) for r in mine) for i in (2, 3, 4, 5)]
p, t = med["Backend_PLAIN"], med["Backend_TLS"]
print()
print("| backend | msgs/s | RTT p50 µs | RTT p99 µs | gateway CPU µs/fwd msg | RSS KiB/idle session |")
print("|---|---|---|---|---|---|")
print(f"| ws:// | {p[0]:,.0f} | {p[1]:.0f} | {p[2]:.0f} | {p[3]:.3f} | {sys.argv[2] or '-'} |")
print(f"| wss:// | {t[0]:,.0f} | {t[1]:.0f} | {t[2]:.0f} | {t[3]:.3f} | {sys.argv[3] or '-'} |")
print(f"| wss / ws | {t[0] / p[0]:.2f}× | {t[1] / p[1]:.2f}× | {t[2] / p[2]:.2f}× | {t[3] / p[3]:.2f}× | "
      + (f"{float(sys.argv[3]) / float(sys.argv[2]):.2f}× |" if sys.argv[2] and sys.argv[3] else "- |"))
storms = [l.rstrip("\n").split("\t") for l in open(sys.argv[4]) if l.strip()]
if storms:
    s = {k: [statistics.median(float(r[i]) for r in storms if r[0] == k) for i in (2, 3)]
         for k in ("Backend_PLAIN", "Backend_TLS")}
    sp, st = s["Backend_PLAIN"], s["Backend_TLS"]
    print()
    print("| backend | new conns/s | gateway CPU µs/conn |")
    print("|---|---|---|")
    print(f"| ws:// | {sp[0]:,.0f} | {sp[1]:.0f} |")
    print(f"| wss:// | {st[0]:,.0f} | {st[1]:.0f} |")
    print(f"| wss / ws | {st[0] / sp[0]:.2f}× | {st[1] / sp[1]:.2f}× |")
print("(medians over the rounds)")
EOF
if ((fail)); then
    echo "BACKEND-TLS: FAIL (integrity errors, failed connections or idle sessions not all open; logs follow)"
    tail -n 5 "$tmp"/*.out "$tmp/gateway.log"
    exit 1
fi
echo "BACKEND-TLS: done"
