#!/usr/bin/env bash
# wsgate vs nginx vs HAProxy vs no proxy, on this machine, in one run (issue 4).
#
#   compare/run.sh            full run (~8-10 min): scenarios a-f, 3 rounds interleaved;
#                             writes compare/results/latest.md and latest.json
#   compare/run.sh --smoke    a few seconds per target, scenarios a+b, auth check (< 1 min);
#                             writes compare/results/smoke.md and smoke.json
#
# Own options: --no-build (use target/release as it is), --no-install (fail instead of
# running apt-get). Everything else goes to compare.py (`compare/run.sh --help`).
# Installs nginx, haproxy (and python3) from Debian if missing; the system services are
# never used: configs, pid files and logs live in a temp folder removed at the end.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
build=1
install=1
args=()
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        --no-install) install=0 ;;
        -h | --help)
            sed -n '2,12p' "$here/run.sh" | sed 's/^# \{0,1\}//'
            echo
            exec python3 "$here/compare.py" --help
            ;;
        *) args+=("$arg") ;;
    esac
done
export PATH="$PATH:/usr/sbin:/sbin"

have() { command -v "$1" >/dev/null 2>&1; }
missing=()
have nginx || missing+=(nginx)
have haproxy || missing+=(haproxy)
have python3 || missing+=(python3)
if ((${#missing[@]})); then
    if ((!install)); then
        echo "run.sh: missing ${missing[*]} (and --no-install given)" >&2
        exit 69
    fi
    sudo=()
    if [ "$(id -u)" != 0 ]; then sudo=(sudo); fi
    echo "run.sh: installing ${missing[*]} from Debian (their system services are not used)" >&2
    "${sudo[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "${missing[@]}"
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' || {
    echo "run.sh: python3 >= 3.9 needed (Debian 12 has 3.11)" >&2
    exit 69
}

if ((build)); then
    (cd "$repo" && cargo build --release -p loadgen -p gateway -p demo-services)
fi

# compare.py stops everything it started on exit, Ctrl-C or SIGTERM; this trap makes sure
# it gets that SIGTERM if this script is stopped, and waits for the clean-up.
py=""
cleanup() {
    if [ -n "$py" ] && kill -0 "$py" 2>/dev/null; then
        kill -TERM "$py" 2>/dev/null || true
        wait "$py" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

cd "$repo"
python3 "$here/compare.py" ${args[@]+"${args[@]}"} &
py=$!
rc=0
wait "$py" || rc=$?
py=""
exit "$rc"
