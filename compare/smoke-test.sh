#!/usr/bin/env bash
# Smoke test of the comparison harness, so that it does not rot: runs `run.sh --smoke`
# (scenarios a and b, ~2 s per target, 1 round, plus the token check) and checks that
#   - the table has a row per scenario and target (gateway, nginx, haproxy, relay, direct) with
#     nonzero msgs/s and no errors or failed connections;
#   - the gateway and HAProxy accept the valid token and refuse every bad one with 401/403.
# Extra arguments go to run.sh (e.g. --no-build). Exit 0 when all holds. Needs root (or
# sudo) only if nginx/haproxy must be installed. Takes well under a minute.
# COMPARE_SMOKE_MD=FILE checks FILE instead of running (to test the checks themselves).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(mktemp -d -t wsgate-compare-smoke.XXXXXX)"
trap 'rm -rf "$out"' EXIT

start=$SECONDS
if [ -n "${COMPARE_SMOKE_MD:-}" ]; then
    # Check a given table instead of running (to test these checks themselves).
    cp "$COMPARE_SMOKE_MD" "$out/smoke.md"
    cp "$COMPARE_SMOKE_MD" "$out/stdout.md"
elif ! "$here/run.sh" --smoke --out "$out" "$@" >"$out/stdout.md"; then
    echo "smoke-test: run.sh --smoke failed" >&2
    cat "$out/stdout.md" >&2
    exit 1
fi
md="$out/smoke.md"
[ -s "$md" ] || { echo "smoke-test: no $md" >&2; exit 1; }
cat "$md"

fail=0
bad() { echo "smoke-test: FAIL: $*" >&2; fail=1; }
grep -q '^| Scen. | Target |' "$out/stdout.md" || bad "the table is not on stdout"

# Table columns (split on |): 2 scenario, 3 target, 5 msgs/s, last-but-one errors.
for s in a b; do
    for t in gateway nginx haproxy relay direct; do
        row="$(grep -E "^\| \($s\) \| $t \|" "$md" || true)"
        if [ -z "$row" ]; then bad "no row for ($s) $t"; continue; fi
        msgs="$(awk -F'|' '{print $5}' <<<"$row" | sed 's/(.*//; s/[[:space:],]//g')"
        errors="$(awk -F'|' '{print $(NF-1)}' <<<"$row" | tr -d '[:space:]')"
        if ! awk -v m="$msgs" 'BEGIN { exit !(m ~ /^[0-9.]+$/ && m + 0 > 0) }'; then
            bad "($s) $t: msgs/s is '$msgs'"
        fi
        [ "$errors" = 0 ] || bad "($s) $t: errors/failed connections: '$errors'"
    done
done

# Auth table: | Token | gateway | nginx | haproxy |
auth="$(sed -n '/^| Token | gateway | nginx | haproxy |/,/^$/p' "$md" | tail -n +3)"
[ -n "$auth" ] || bad "no auth check table"
while IFS='|' read -r _ case gw _nginx hp _; do
    case="$(xargs <<<"$case")"
    [ -n "$case" ] || continue
    for pair in "gateway:$gw" "haproxy:$hp"; do
        name="${pair%%:*}"
        got="$(xargs <<<"${pair#*:}")"
        case "$case" in
            "valid RS256 token") [ "$got" = accepted ] || bad "$name refused the valid token: $got" ;;
            "unknown ID"*) [[ "$got" == refused* ]] || bad "$name accepted an unknown ID" ;;
            *) [[ "$got" =~ ^refused\ (401|403)$ ]] || bad "$name: '$case' gave '$got', not 401/403" ;;
        esac
    done
done <<<"$auth"
n_cases="$(grep -c . <<<"$auth" || true)"
[ "$n_cases" -ge 10 ] || bad "only $n_cases auth cases"

# Every TLS target ran the same cipher suite (loadgen's report), so the CPU figures compare
# the same job.
suites="$(grep '^TLS cipher suite the connections got' "$md" || true)"
for t in gateway nginx haproxy; do
    grep -qE "[:,] $t TLS13_AES_128_GCM_SHA256[,.]" <<<"$suites" || bad "$t did not run TLS13_AES_128_GCM_SHA256 alone: '$suites'"
done

# The CPU of loadgen and the backends in each proxy's window, which caps every msgs/s ratio
# on these shared cores (a full run also reports the (b) ratio it predicts).
tools="$(grep '^CPU µs per echoed message of loadgen and the demo backends' "$md" || true)"
for t in gateway nginx haproxy; do
    grep -qE "\(b\) [^;]*$t [0-9]+\.[0-9]+" <<<"$tools" || bad "no (b) loadgen and backends CPU for $t: '$tools'"
done

# The hypervisor's share (steal) over each proxy's CPU window, one figure per round, so a
# reader can tell a noisy run from a slow proxy.
steal="$(grep '^Machine CPU taken by the hypervisor' "$md" || true)"
for t in gateway nginx haproxy; do
    grep -qE "\(b\) [^;]*$t [0-9]+%" <<<"$steal" || bad "no (b) steal share for $t: '$steal'"
done

# Syscall counts are optional (perf on the raw_syscalls tracepoint); where perf can count
# them, every proxy's (b) figure must be in the table.
if [ -z "${COMPARE_SMOKE_MD:-}" ] && command -v perf >/dev/null \
    && perf stat -x, -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
    calls="$(grep '^System calls per forwarded message' "$md" || true)"
    for t in gateway nginx haproxy; do
        grep -qE "\(b\) [^;]*$t [0-9]+\.[0-9]+" <<<"$calls" || bad "no (b) syscall count for $t: '$calls'"
    done
fi

if ((fail)); then
    exit 1
fi
echo "smoke-test: PASS in $((SECONDS - start)) s"
