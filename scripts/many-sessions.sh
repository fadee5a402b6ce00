#!/usr/bin/env bash
# Many sessions on one machine despite a 20,000 open-file limit per process: several
# gateway processes share one port with SO_REUSEPORT (`[server] reuse_port = true`), each
# with its own demo-services process (every session also holds a backend socket), and
# several loadgen processes spread over 127.0.x.y source addresses.
#
#   scripts/many-sessions.sh [--no-build] [--gateways N] [--loadgens N] [--sessions N]
#                            [--rate MSGS_PER_S] [--duration SECONDS] [--single N]
#
# Defaults: 5 gateways, 3 loadgens, 42,000 sessions, 1,000 msg/s over all of them for
# 30 s (a probe loadgen measures steady-state round trips over its first two thirds); first
# a single gateway process holding --single (9,500) idle sessions.
# Reports: sessions held, gateway RSS per session (VmRSS summed over the gateway
# processes while holding, minus the same sum right after start, / sessions), handshake
# rate while opening, round-trip p99 under the light load (goal < 50 ms), and the
# single-process RSS per idle session (goal <= 20 KiB). Exits 1 if fewer sessions than
# asked were held or any integrity error was found. Bounded: a few minutes; every
# process is stopped on exit and the temp folder removed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
build=1
n_gw=5
n_lg=3
sessions=42000
rate=1000
duration=30
single=9500
while (($#)); do
    case "$1" in
        --no-build) build=0 ;;
        --gateways) n_gw="$2"; shift ;;
        --loadgens) n_lg="$2"; shift ;;
        --sessions) sessions="$2"; shift ;;
        --rate) rate="$2"; shift ;;
        --duration) duration="$2"; shift ;;
        --single) single="$2"; shift ;;
        -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "many-sessions.sh: unknown option $1" >&2; exit 64 ;;
    esac
    shift
done
for tool in curl jq python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "many-sessions.sh: $tool needed" >&2; exit 69; }
done
if ((build)); then
    (cd "$repo" && cargo build --release -p loadgen -p gateway -p demo-services)
fi
bin="${CARGO_TARGET_DIR:-$repo/target}/release"

# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
tmp="$(mktemp -d /tmp/wsgate-many.XXXXXX)"
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
cd "$repo"

# Every process here may use the hard limit (demo-services does not raise its own).
ulimit -n "$(ulimit -Hn)"
nofile=$(ulimit -Hn)
log "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo), open-file limit $nofile per process, load average $(cut -d' ' -f1-3 /proc/loadavg)"
per_gw=$(((sessions + n_gw - 1) / n_gw))
per_lg=$(((sessions + n_lg - 1) / n_lg))
if ((2 * per_gw + 200 > nofile)); then
    log "WARNING: ~$per_gw sessions per gateway need $((2 * per_gw)) descriptors (limit $nofile): use more --gateways"
fi
if ((per_lg + 200 > nofile)); then
    log "WARNING: $per_lg connections per loadgen exceed the descriptor limit: use more --loadgens"
fi

# Starts one demo-services process (3 backends) and one gateway on LISTEN with admin
# port ADMIN; appends their pids to be_pid / gw_pid.
be_pid=()
gw_pid=()
start_pair() { # index listen admin_port reuse_port
    local i=$1 b port
    read -r -a b <<<"$(free_ports 3)"
    "$bin/demo-services" --abc-port "${b[0]}" --pqr-port "${b[1]}" --xyz-port "${b[2]}" \
        --push-interval 0 >"$tmp/backends$i.log" 2>&1 &
    be_pid+=($!)
    pids+=($!)
    gateway_toml "$tmp/gateway$i.toml" "$2" "127.0.0.1:$3" "$4" "${b[@]}"
    RUST_LOG=warn "$bin/gateway" --config "$tmp/gateway$i.toml" >"$tmp/gateway$i.log" 2>&1 &
    gw_pid+=($!)
    pids+=($!)
    for port in "${b[@]}" "$3"; do wait_port "$port" 30; done
}

# Sum of a metric over the admin ports given.
sum_metric() { # name port...
    local name=$1 sum=0 p
    shift
    for p in "$@"; do sum=$((sum + $(metric "$p" "$name"))); done
    echo "$sum"
}
sum_rss() { local sum=0 p; for p in "$@"; do sum=$((sum + $(rss_kib "$p"))); done; echo "$sum"; }

# Waits until the gateways on ADMIN ports hold TARGET sessions, or the loadgens ended, or
# LIMIT seconds passed; prints the seconds it took (or "timeout").
wait_sessions() { # target limit lg_pids_var admin_ports...
    local target=$1 limit=$2 started=$SECONDS
    local -n _lg_pids=$3
    shift 3
    while ((SECONDS - started < limit)); do
        if (($(sum_metric wsgate_sessions_active "$@") >= target)); then
            echo $((SECONDS - started))
            return 0
        fi
        local alive=0 p
        for p in "${_lg_pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.5
    done
    echo timeout
}

# Samples the summed RSS three times, 0.3 s apart; prints the largest.
held_rss() {
    local best=0 r
    for _ in 1 2 3; do
        r=$(sum_rss "$@")
        ((r > best)) && best=$r
        sleep 0.3
    done
    echo "$best"
}

kib_per() { python3 -c "import sys; d=int(sys.argv[2]); print(f'{int(sys.argv[1]) / d:.1f}' if d else '-')" "$1" "$2"; }

fail=0
echo
echo "== 1. one gateway process, $single idle sessions"
read -r -a p <<<"$(free_ports 2)"
start_pair 0 "127.0.0.1:${p[0]}" "${p[1]}" false
wait_port "${p[0]}" 30
sleep 0.5
rss0=$(rss_kib "${gw_pid[0]}")
lg_single=()
"$bin/loadgen" --url "wss://localhost:${p[0]}/gateway" --backend all --conns "$single" \
    --rate 0.001 --hold 120s --hold-until "$tmp/go-single" --duration 1s --connect-timeout 30s \
    --no-progress --json "$tmp/single.json" >"$tmp/single.out" 2>&1 &
lg_single+=($!)
pids+=($!)
t_open=$(wait_sessions "$single" 180 lg_single "${p[1]}")
sleep 1
rss1=$(held_rss "${gw_pid[0]}")
held1=$(sum_metric wsgate_sessions_active "${p[1]}")
touch "$tmp/go-single"
wait "${lg_single[0]}" || true
single_per=$(kib_per $((rss1 - rss0)) "$held1")
log "held $held1 sessions (all open after ${t_open} s); gateway RSS $rss0 KiB fresh -> $rss1 KiB held"
echo "single gateway: $held1 idle sessions, RSS $rss0 KiB fresh, $rss1 KiB held: $single_per KiB per session (goal <= 20)"
# Stop the pair before the big run.
kill -TERM "${gw_pid[0]}" "${be_pid[0]}" 2>/dev/null || true
wait "${gw_pid[0]}" "${be_pid[0]}" 2>/dev/null || true
gw_pid=()
be_pid=()

echo
echo "== 2. $n_gw gateway processes on one port (SO_REUSEPORT), $n_lg loadgens, $sessions sessions"
read -r -a p <<<"$(free_ports $((n_gw + 1)))"
port=${p[0]}
admins=("${p[@]:1}")
for ((i = 0; i < n_gw; i++)); do
    start_pair "$i" "127.0.0.1:$port" "${admins[$i]}" true
done
wait_port "$port" 30
sleep 0.5
rss_idle=$(sum_rss "${gw_pid[@]}")
log "$n_gw gateways on 127.0.0.1:$port, idle RSS $rss_idle KiB in total"
# The load: n_lg loadgens hold most sessions and send 90 % of the messages for the whole
# --duration; a probe loadgen (300 sessions, the other 10 %) sends over its first two thirds
# only, so its round trips are the steady state: not the opening, and not the end, when
# 40,000 sessions close at once (which on 2 busy cores takes longer than the run).
# Echoes are given 60 s before they count as missing: in that closing storm a late echo is
# slow, not lost.
probe_conns=300
probe_s=$((duration * 2 / 3))
lgs=()
remaining=$((sessions - probe_conns))
t0=$SECONDS
for ((k = 0; k <= n_lg; k++)); do
    if ((k < n_lg)); then
        n=$((remaining / (n_lg - k)))
        remaining=$((remaining - n))
        args=(--conns "$n" --rate "$(python3 -c "print($rate * 0.9 / $n_lg)")" --duration "${duration}s")
    else
        args=(--conns "$probe_conns" --rate "$(python3 -c "print($rate * 0.1)")" --duration "${probe_s}s")
    fi
    # Two source addresses per loadgen (127.0.<k+1>.1-2): ~7,000 ports on each, far from
    # the 28,232 ephemeral ports one address has toward one destination.
    "$bin/loadgen" --url "wss://localhost:$port/gateway" --backend all "${args[@]}" \
        --hold 300s --hold-until "$tmp/go" --connect-timeout 30s \
        --echo-timeout 60s --drain-timeout 20s \
        --source-addrs "127.0.$((k + 1)).1-127.0.$((k + 1)).2" \
        --no-progress --json "$tmp/lg$k.json" >"$tmp/lg$k.out" 2>&1 &
    lgs+=($!)
    pids+=($!)
done
t_open=$(wait_sessions "$sessions" 300 lgs "${admins[@]}")
open_s=$((SECONDS - t0))
sleep 1
rss_held=$(held_rss "${gw_pid[@]}")
held=$(sum_metric wsgate_sessions_active "${admins[@]}")
dist=()
for a in "${admins[@]}"; do dist+=("$(metric "$a" wsgate_sessions_active)"); done
gw_fds=()
for g in "${gw_pid[@]}"; do gw_fds+=("$(ls "/proc/$g/fd" 2>/dev/null | wc -l)"); done
per=$(kib_per $((rss_held - rss_idle)) "$held")
log "held $held sessions (all open: $t_open s); per gateway: ${dist[*]}; descriptors: ${gw_fds[*]}"
log "gateway RSS $rss_idle KiB idle -> $rss_held KiB held"
log "sending: $rate msg/s over all sessions for ${duration}s"
touch "$tmp/go"
for pid in "${lgs[@]}"; do wait "$pid" || true; done

echo
for ((k = 0; k <= n_lg; k++)); do
    if ((k < n_lg)); then echo "--- loadgen $k"; else echo "--- probe loadgen (steady-state round trips)"; fi
    grep -v '^$' "$tmp/lg$k.out"
done
echo
opened=0 errors=0 echoed=0 failed=0 p99max=0 p50max=0 handshake_rates=()
for ((k = 0; k <= n_lg; k++)); do
    j="$tmp/lg$k.json"
    if [ ! -s "$j" ]; then log "loadgen $k wrote no report"; fail=1; continue; fi
    opened=$((opened + $(jq .total.connections.opened "$j")))
    failed=$((failed + $(jq .total.connections.failed "$j")))
    errors=$((errors + $(jq .total.errors.total "$j")))
    echoed=$((echoed + $(jq .total.messages.echoed "$j")))
    # null (loadgen's JSON version 2) when that loadgen got no echo: it raises no maximum
    p99=$(jq '.total.rtt_us.p99 // 0' "$j")
    p50=$(jq '.total.rtt_us.p50 // 0' "$j")
    ((p99 > p99max)) && p99max=$p99
    ((p50 > p50max)) && p50max=$p50
    handshake_rates+=("$(jq -r '.conns_per_s // 0 | floor' "$j")")
done
j="$tmp/lg$n_lg.json"
probe_p50=$(jq '.total.rtt_us.p50 // 0' "$j" 2>/dev/null || echo 0)
probe_p99=$(jq '.total.rtt_us.p99 // 0' "$j" 2>/dev/null || echo 0)
probe_n=$(jq .total.rtt_us.count "$j" 2>/dev/null || echo 0)
ms() { awk -v v="$1" 'BEGIN { printf "%.1f", v / 1000 }'; }
rate_all=$(python3 -c "print(f'{$held / max($open_s, 1):.0f}')")
echo "== many-sessions summary ($(date -u '+%F %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg))"
echo "  single gateway process: $held1 idle sessions, $single_per KiB RSS per session (goal <= 20)"
echo "  $n_gw gateways (SO_REUSEPORT, one port) + $n_gw demo-services + $n_lg loadgens"
echo "  sessions held: $held of $sessions asked (opened $opened, failed $failed); per gateway: ${dist[*]}"
echo "  gateway RSS: $rss_idle KiB idle -> $rss_held KiB held = $per KiB per session"
echo "  handshakes: $held sessions open after $open_s s = $rate_all conns/s overall (per loadgen, over its own connect phase: ${handshake_rates[*]} conns/s)"
echo "  light load: $rate msg/s total for ${duration}s, $echoed echoes"
echo "  RTT steady state (probe, first ${probe_s}s of sending, $probe_n samples): p50 $(ms "$probe_p50") ms, p99 $(ms "$probe_p99") ms (goal < 50 ms)"
echo "  RTT whole run incl. opening and the closing storm: p50 <= $(ms "$p50max") ms, p99 <= $(ms "$p99max") ms (largest over the loadgens)"
echo "  integrity errors: $errors"
if ((held < sessions)); then echo "  FAIL  fewer sessions held than asked"; fail=1; fi
if ((errors > 0)); then echo "  FAIL  integrity errors"; fail=1; fi
if ((probe_n == 0)); then echo "  FAIL  the probe got no echo: no steady-state RTT"; fail=1; fi
if ((probe_p99 >= 50000)); then echo "  NOTE  steady-state p99 above the 50 ms goal"; fi
if ((fail)); then
    for ((i = 0; i < n_gw; i++)); do
        echo "--- gateway $i log (warnings; tail)"
        tail -n 5 "$tmp/gateway$i.log"
    done
    echo "MANY-SESSIONS: FAIL"
    exit 1
fi
echo "MANY-SESSIONS: PASS"
