# Helpers shared by scripts/failover.sh and scripts/many-sessions.sh (sourced, not run).
# The sourcing script sets `tmp` (a temp folder) and appends every process it starts to
# `pids`; `cleanup` (run on EXIT) stops them, SIGTERM first, and removes `tmp`.

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    [ -n "${tmp:-}" ] && rm -rf "$tmp"
}

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# N free loopback TCP ports (the kernel's choice; released before use, so a clash is
# possible but unlikely).
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Waits until something accepts on 127.0.0.1:PORT, at most SECONDS.
wait_port() {
    local deadline=$((SECONDS + $2))
    until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        ((SECONDS < deadline)) || { log "nothing listens on $1 after $2 s"; return 1; }
        sleep 0.1
    done
}

# A metric from a gateway's admin port, summed over its labels (0 if unreachable).
metric() {
    { curl -s --max-time 2 "http://127.0.0.1:$1/metrics" || true; } |
        awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%d\n", s + 0 }'
}

# Resident memory (VmRSS, KiB) of a process; 0 if gone.
rss_kib() {
    awk '/^VmRSS:/ { print $2; found = 1 } END { if (!found) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# Writes a gateway config: gateway_toml FILE LISTEN ADMIN_LISTEN REUSE_PORT ABC PQR XYZ [EXTRA]
gateway_toml() {
    cat >"$1" <<EOF
[server]
listen = "$2"
reuse_port = $4

[admin]
listen = "$3"

[tls]
cert = "$repo/certs/server.crt"
key = "$repo/certs/server.key"

[auth]
public_key = "$repo/certs/jwt-public.pem"

[backends]
Backend_ABC = "ws://127.0.0.1:$5/backend/abc"
Backend_PQR = "ws://127.0.0.1:$6/backend/pqr"
Backend_XYZ = "ws://127.0.0.1:$7/backend/xyz"
${8:-}
EOF
}
