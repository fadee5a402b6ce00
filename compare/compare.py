#!/usr/bin/env python3
"""Comparison harness: wsgate vs nginx vs HAProxy vs no proxy at all (issue 4).

Starts its own demo backends, the gateway, nginx and HAProxy on free loopback ports, with
configs in a temp folder, drives each with identical loadgen settings in interleaved
rounds, reads each proxy's CPU time and resident memory from /proc, and writes one table
(Markdown + JSON). Python 3.11 standard library only. Normally started by compare/run.sh,
which installs nginx/HAProxy if missing and builds the binaries; see compare/README.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CERTS = REPO / "certs"
CLK_TCK = os.sysconf("SC_CLK_TCK")

BACKENDS = [("Backend_ABC", "abc"), ("Backend_PQR", "pqr"), ("Backend_XYZ", "xyz")]
TARGETS = ["gateway", "nginx", "haproxy", "relay", "direct"]
PEERS = ["nginx", "haproxy"]
PROXIES = ["gateway", "nginx", "haproxy"]
# The proxies whose CPU is reported: the three, and the floor (a relay doing no TLS, no
# HTTP, no WebSocket: only the kernel's work of moving the bytes through a process).
CHARGED = PROXIES + ["relay"]
# (e) measures TLS handshakes and token checks: the relay does neither.
STORM_TARGETS = [t for t in TARGETS if t != "relay"]
JWT_NOTE = {
    "gateway": "yes",
    "nginx": "no¹",
    "haproxy": "yes",
    "relay": "–",
    "direct": "–",
}

SCENARIOS = {
    "a": "100 conns × 1 in flight, 128 B (latency-bound)",
    "b": "100 conns × 32 in flight, 128 B (throughput-bound)",
    "c": "100 conns × 4 in flight, 16 KiB (bytes-bound)",
    "d": "idle sessions held, fresh processes (memory)",
    "e": "handshake storm: connect + 1 echo + close, as fast as possible",
    "f": "open loop at ½ of the gateway's (b) msgs/s, 100 conns, 128 B",
}
CLOSED = {"a": (100, 1, 128), "b": (100, 32, 128), "c": (100, 4, 16384)}
# From "every connection open" to the start of the CPU window: loadgen's 100 ms tick + slack.
LEAD_IN_S = 0.2


def syscall_window_s(duration: float) -> float:
    """The end of the sending phase where system calls are counted, after the CPU window
    (its last LEAD_IN_S left out)."""
    return min(1.2, duration / 3)


def wait_while_running(p: subprocess.Popen, deadline: float) -> None:
    """Sleeps until `deadline` (time.monotonic()) or until `p` exits, whichever comes first."""
    while time.monotonic() < deadline and p.poll() is None:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def log(msg: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# /proc readings


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of the whole process (all threads, live and exited), seconds."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return 0.0, 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def machine_ticks() -> tuple[int, int, int]:
    """(steal, idle, total) clock ticks of the whole machine so far, from /proc/stat's
    `cpu` line. Steal is the time the hypervisor ran something else while this machine's
    CPUs had work: on a shared host it slows every process alike, and a run during which
    it was high measures the host more than the proxy."""
    text = _read("/proc/stat") or ""
    for line in text.splitlines():
        if line.startswith("cpu "):
            f = [int(x) for x in line.split()[1:9]]
            return f[7], f[3] + f[4], sum(f)
    return 0, 0, 0


def shares(before: tuple[int, int, int], after: tuple[int, int, int]) -> tuple[float | None, float | None]:
    """(steal, idle) as shares of the machine's CPU time between two `machine_ticks`."""
    steal, idle, total = (a - b for a, b in zip(after, before))
    return (steal / total, idle / total) if total > 0 else (None, None)


def cpu_s(pid: int) -> float:
    """utime + stime of the whole process (all threads, live and exited), seconds."""
    return sum(cpu_split(pid))


class SyscallCount:
    """The rate of system calls a proxy's processes make, with `perf stat` on the
    raw_syscalls tracepoint, read in 100 ms intervals (counted in the kernel, no tracing
    overhead per call).

    Enabling the tracepoint puts every system call of the counted threads on the kernel's
    slower traced path: on this machine that added 0.04-0.06 µs of CPU per forwarded
    message to the gateway and to HAProxy alike. The harness therefore counts in a window
    of its own after the CPU window, never over it. The rate is taken over perf's whole
    100 ms intervals, so the moment perf attaches does not matter.

    Optional: without perf, or where tracepoints are not allowed, it counts nothing and the
    table leaves the column empty."""

    _usable: bool | None = None

    def __init__(self, pids: list[int]):
        self.proc: subprocess.Popen | None = None
        perf = shutil.which("perf")
        if not pids or perf is None or not SyscallCount.usable(perf):
            return
        self.proc = subprocess.Popen(
            [perf, "stat", "-x", ",", "-I", "100", "-e", "raw_syscalls:sys_enter",
             "-p", ",".join(map(str, pids))],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    @classmethod
    def usable(cls, perf: str) -> bool:
        if cls._usable is None:
            try:
                r = subprocess.run([perf, "stat", "-x", ",", "-e", "raw_syscalls:sys_enter",
                                    "--", "true"], capture_output=True, text=True, timeout=20)
                cls._usable = r.returncode == 0 and parse_syscalls(r.stderr) is not None
            except (OSError, subprocess.TimeoutExpired):
                cls._usable = False
        return cls._usable

    def stop(self) -> float | None:
        """System calls per second so far (None if nothing was counted); ends the counting."""
        if self.proc is None:
            return None
        try:
            self.proc.send_signal(signal.SIGINT)
            _, err = self.proc.communicate(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.communicate()
            return None
        return syscall_rate(err)


def parse_syscalls(perf_csv: str) -> int | None:
    """The raw_syscalls:sys_enter count from `perf stat -x,` output (no intervals)."""
    for line in perf_csv.splitlines():
        f = line.split(",")
        if len(f) > 2 and f[2].startswith("raw_syscalls:sys_enter") and f[0].isdigit():
            return int(f[0])
    return None


def syscall_rate(perf_csv: str) -> float | None:
    """Calls per second from `perf stat -x, -I 100` output: lines `time,count,,event,…`,
    `time` counted from when perf attached. The last interval, cut short by the stop, is
    left out when there are whole ones before it."""
    points: list[tuple[float, int]] = []
    for line in perf_csv.splitlines():
        f = line.split(",")
        if len(f) > 3 and f[3].startswith("raw_syscalls:sys_enter"):
            try:
                t = float(f[0])
            except ValueError:
                continue
            points.append((t, int(f[1]) if f[1].isdigit() else 0))
    if len(points) > 1:
        points = points[:-1]
    if not points or points[-1][0] <= 0:
        return None
    return sum(c for _, c in points) / points[-1][0]


def status_kib(pid: int, key: str) -> int:
    text = _read(f"/proc/{pid}/status") or ""
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


def pss_kib(pid: int) -> int:
    text = _read(f"/proc/{pid}/smaps_rollup") or ""
    m = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def children(ppid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        stat = _read(f"/proc/{d}/stat")
        if stat is None:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == ppid:
            out.append(int(d))
    return sorted(out)


def listening(port: int) -> bool:
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in (_read(table) or "").splitlines()[1:]:
            parts = line.split()
            if len(parts) > 3 and parts[1].endswith(want) and parts[3] == "0A":
                return True
    return False


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


# ---------------------------------------------------------------------------------------
# Processes


class Proc:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], logdir: Path, env: dict | None = None):
        self.name = name
        self.argv = argv
        self.logfile = logdir / f"{name}.log"
        self.env = env
        self.p: subprocess.Popen | None = None

    def start(self) -> None:
        out = open(self.logfile, "ab")
        env = dict(os.environ, **(self.env or {}))
        self.p = subprocess.Popen(
            self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True,
        )
        out.close()

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def stop(self, sig: int = signal.SIGTERM, wait: float = 8.0) -> None:
        p = self.p
        if p is None:
            return
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        # Whatever is left of the group we created (e.g. nginx workers): kill it.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.p = None

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class Target:
    """One way of doing the job: a proxy process (or none, for direct)."""

    def __init__(self, name: str, url: str, proc: Proc | None, port: int | None,
                 workers: int = 0, pidfile: Path | None = None):
        self.pidfile = pidfile  # written here for processes that do not write their own
        self.name = name
        self.url = url
        self.proc = proc
        self.port = port
        self.workers = workers  # child processes to wait for (nginx)
        self._pids: list[int] = []
        self.idle_fds = 0

    @property
    def is_proxy(self) -> bool:
        return self.proc is not None

    def pids(self) -> list[int]:
        if self.proc is None or not self.proc.alive():
            return []
        # Scanning /proc for children costs ~10 ms: keep the list while it stays complete.
        cached = self._pids
        if cached and cached[0] == self.proc.pid and len(cached) == 1 + self.workers \
                and all(os.path.exists(f"/proc/{p}") for p in cached[1:]):
            return cached
        pid = self.proc.pid
        self._pids = [pid] + (children(pid) if self.workers else [])
        return self._pids

    def cpu(self) -> float:
        return sum(cpu_s(p) for p in self.pids())

    def cpu_kernel(self) -> float:
        return sum(cpu_split(p)[1] for p in self.pids())

    def rss(self) -> int:
        return sum(status_kib(p, "VmRSS") for p in self.pids())

    def pss(self) -> int:
        return sum(pss_kib(p) for p in self.pids())

    def fds(self) -> int:
        return sum(fd_count(p) for p in self.pids())

    def start(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        self.proc.start()
        if self.pidfile is not None:
            self.pidfile.write_text(f"{self.proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"{self.name} exited at start-up:\n{self.proc.tail()}")
            if listening(self.port) and len(self.pids()) >= 1 + self.workers:
                time.sleep(0.3)  # let workers finish initialising
                self.idle_fds = self.fds()
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {self.port}:\n{self.proc.tail()}")

    def restart(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.start()

    def settle(self, timeout: float = 10.0) -> None:
        """Waits until the previous run's connections are gone (fd count back to idle)."""
        if not self.is_proxy:
            time.sleep(0.2)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.fds() > self.idle_fds:
            time.sleep(0.05)
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------
# Configs


# Extra lines for the gateway's [server] table (`--gateway-server`), e.g. threading = "shared".
GATEWAY_SERVER_EXTRA = ""
GATEWAY_TLS_EXTRA = ""
# Extra loadgen arguments for every run (--loadgen-args).
LOADGEN_EXTRA: list[str] = []
# --client-certs: every proxy requires a client certificate from the dev CA (mutual TLS),
# and loadgen presents the dev client certificate.
CLIENT_CERTS = False


def gateway_config(tmp: Path, port: int, bports: list[int], admin_key: bool = True) -> Path:
    cfg = tmp / "gateway.toml"
    backends = "\n".join(
        f'{bid} = "ws://127.0.0.1:{p}/backend/{path}"'
        for (bid, path), p in zip(BACKENDS, bports)
    )
    cfg.write_text(f"""# written by compare/compare.py
[server]
listen = "127.0.0.1:{port}"
path = "/gateway"
{GATEWAY_SERVER_EXTRA}

[tls]
cert = "{CERTS / 'server.crt'}"
key = "{CERTS / 'server.key'}"
{f'client_ca = "{CERTS / "ca.crt"}"' if CLIENT_CERTS else ""}
{GATEWAY_TLS_EXTRA}

[auth]
issuer = "wso2"
audience = "ballerina"
algorithms = ["RS256"]
public_key = "{CERTS / 'jwt-public.pem'}"
scope_claim = "scp"
required_scopes = ["admin"]

{"[admin]" + chr(10) + "enabled = false" + chr(10) if admin_key else ""}
[backends]
{backends}
""")
    return cfg


def nginx_config(tmp: Path, port: int, bports: list[int]) -> Path:
    d = tmp / "nginx"
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    user = "user nobody nogroup;" if os.geteuid() == 0 else ""
    if os.geteuid() == 0:
        os.chmod(tmp, 0o755)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            shutil.chown(d / sub, "nobody", "nogroup")
    routes = "\n".join(
        f"        {bid} 127.0.0.1:{p}/backend/{path};" for (bid, path), p in zip(BACKENDS, bports)
    )
    conf = d / "nginx.conf"
    conf.write_text(f"""# written by compare/compare.py: TLS termination, routing by the ID header,
# WebSocket tunnelling. nginx (open source) cannot verify a JWT without njs or NGINX Plus.
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile 20000;
{user}
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;

events {{
    worker_connections 16000;
}}

http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    map $http_id $wsgate_backend {{
        default "";
{routes}
    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate     {CERTS / 'server.crt'};
        ssl_certificate_key {CERTS / 'server.key'};
        ssl_protocols TLSv1.2 TLSv1.3;
        {f"ssl_client_certificate {CERTS / 'ca.crt'}; ssl_verify_client on;" if CLIENT_CERTS else ""}

        location = /gateway {{
            if ($http_id = "") {{ return 400; }}
            if ($wsgate_backend = "") {{ return 404; }}
            proxy_pass http://$wsgate_backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_connect_timeout 10s;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
        location / {{
            return 404;
        }}
    }}
}}
""")
    return conf


def relay_config(tmp: Path, port: int, bport: int) -> Path:
    """HAProxy as a bare TCP relay (no TLS, no HTTP, no routing, no token) in front of the
    first demo backend: what it costs a proxy process here just to move the bytes."""
    cfg = tmp / "relay.cfg"
    cfg.write_text(f"""# written by compare/compare.py: the floor reference, a plain TCP relay.
global
    nbthread 2
    maxconn 9900

defaults
    mode tcp
    timeout connect 10s
    timeout client 30s
    timeout server 30s

frontend fe_relay
    bind 127.0.0.1:{port}
    default_backend be_relay

backend be_relay
    server abc 127.0.0.1:{bport}
""")
    return cfg


def haproxy_config(tmp: Path, port: int, bports: list[int]) -> Path:
    pem = tmp / "haproxy-server.pem"
    pem.write_bytes((CERTS / "server.crt").read_bytes() + b"\n" + (CERTS / "server.key").read_bytes())
    os.chmod(pem, 0o600)
    pub = CERTS / "jwt-public.pem"
    backends = "\n".join(
        f"""backend be_{path}
    mode http
    http-request set-path /backend/{path}
    server {path} 127.0.0.1:{p}
"""
        for (_, path), p in zip(BACKENDS, bports)
    )
    use = "\n".join(
        f"    use_backend be_{path} if {{ req.hdr(ID) -m str {bid} }}" for bid, path in BACKENDS
    )
    known = " ".join(bid for bid, _ in BACKENDS)
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(f"""# written by compare/compare.py: TLS termination, the same RS256 JWT checks as the
# gateway (signature, alg, iss, aud, exp, scope), routing by the ID header, WebSocket tunnelling.
global
    nbthread 2
    maxconn 9900
    tune.ssl.default-dh-param 2048
    # TLS 1.3 suites in a browser's order (and loadgen's). The gateway and nginx follow the
    # client's order; HAProxy imposes its own, which is OpenSSL's (AES-256-GCM first): so
    # that all three run the same cipher, it is given the browser's order here.
    ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256

defaults
    mode http
    timeout connect 10s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout tunnel 1h
    timeout client-fin 5s
    timeout server-fin 5s

frontend fe_gateway
    bind 127.0.0.1:{port} ssl crt {pem} alpn http/1.1{f" ca-file {CERTS / 'ca.crt'} verify required" if CLIENT_CERTS else ""}
    http-request deny deny_status 404 unless {{ path /gateway }}

    # The bearer token: present, RS256, signature valid under jwt-public.pem.
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
    http-request deny deny_status 401 unless {{ var(txn.bearer) -m found }}
    http-request deny deny_status 401 unless {{ var(txn.alg) -m str RS256 }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(txn.alg,"{pub}") -m int 1 }}
    # Claims: issuer, audience (a string or an array holding it), expiry (5 s leeway, as
    # the gateway), then the scope (a space-separated string or an array; 403 as the gateway).
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.iss') -m str wso2 }}
    acl aud_ok var(txn.bearer),jwt_payload_query('$.aud') -m str ballerina
    acl aud_ok var(txn.bearer),jwt_payload_query('$.aud[0]') -m str ballerina
    acl aud_ok var(txn.bearer),jwt_payload_query('$.aud[1]') -m str ballerina
    acl aud_ok var(txn.bearer),jwt_payload_query('$.aud[2]') -m str ballerina
    acl aud_ok var(txn.bearer),jwt_payload_query('$.aud[3]') -m str ballerina
    http-request deny deny_status 401 unless aud_ok
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request set-var(txn.now) date
    http-request deny deny_status 401 unless {{ var(txn.exp) -m found }}
    http-request deny deny_status 401 if {{ var(txn.exp),add(5),sub(txn.now) -m int lt 0 }}
    acl scope_ok var(txn.bearer),jwt_payload_query('$.scp') -m reg (^|\\s)admin(\\s|$)
    acl scope_ok var(txn.bearer),jwt_payload_query('$.scp[0]') -m str admin
    acl scope_ok var(txn.bearer),jwt_payload_query('$.scp[1]') -m str admin
    acl scope_ok var(txn.bearer),jwt_payload_query('$.scp[2]') -m str admin
    acl scope_ok var(txn.bearer),jwt_payload_query('$.scp[3]') -m str admin
    http-request deny deny_status 403 unless scope_ok

    # Routing by the ID header.
    http-request deny deny_status 400 unless {{ req.hdr(ID) -m found }}
    http-request deny deny_status 404 unless {{ req.hdr(ID) -m str {known} }}
{use}

{backends}""")
    return cfg


# ---------------------------------------------------------------------------------------
# JWTs for the auth check (RS256 signing in pure Python: PKCS#8 DER + PKCS#1 v1.5)


def _der(data: bytes, i: int) -> tuple[int, int, int]:
    """Returns (tag, start of content, end of content) of the DER element at i."""
    tag = data[i]
    length = data[i + 1]
    i += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[i : i + n], "big")
        i += n
    return tag, i, i + length


def _der_children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    i = start
    while i < end:
        el = _der(data, i)
        out.append(el)
        i = el[2]
    return out


def rsa_private_key(pem: bytes) -> tuple[int, int]:
    text = pem.decode()
    body = "".join(l for l in text.splitlines() if l and not l.startswith("-----"))
    der = base64.b64decode(body)
    _, s, e = _der(der, 0)
    kids = _der_children(der, s, e)
    if "BEGIN PRIVATE KEY" in text:  # PKCS#8: version, algorithm, OCTET STRING(RSAPrivateKey)
        _, s, e = kids[2]
        inner = der[s:e]
        _, s, e = _der(inner, 0)
        der, kids = inner, _der_children(inner, s, e)
    ints = [int.from_bytes(der[s:e], "big") for _, s, e in kids]
    return ints[1], ints[3]  # n, d


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def mint(claims: dict, key: tuple[int, int], alg: str = "RS256", hs_key: bytes = b"") -> str:
    header = {"alg": alg, "typ": "JWT", "kid": "NTAxZmMxNDMyZDg3MTU1ZGM0MzEzODJhZWI4NDNlZDU1OGFkNjFiMQ"}
    signing = f"{b64u(json.dumps(header).encode())}.{b64u(json.dumps(claims).encode())}"
    if alg == "none":
        return signing + "."
    if alg == "HS256":
        return signing + "." + b64u(hmac.new(hs_key, signing.encode(), hashlib.sha256).digest())
    n, d = key
    k = (n.bit_length() + 7) // 8
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(signing.encode()).digest()
    em = b"\x00\x01" + b"\xff" * (k - len(digest_info) - 3) + b"\x00" + digest_info
    sig = pow(int.from_bytes(em, "big"), d, n).to_bytes(k, "big")
    return signing + "." + b64u(sig)


def auth_cases() -> list[tuple[str, str | None, bool]]:
    """(case, token or None for no header, should a JWT-checking proxy accept it)."""
    key = rsa_private_key((CERTS / "jwt-private.pem").read_bytes())
    now = int(time.time())
    good = {"sub": "ballerina", "iss": "wso2", "aud": ["ballerina", "ballerina.org", "ballerina.io"],
            "jti": "compare", "scp": "admin", "iat": now, "exp": now + 3600}
    valid = mint(good, key)
    h, p, s = valid.split(".")
    tampered = ".".join([h, b64u(json.dumps(dict(good, scp="admin", sub="mallory")).encode()), s])
    return [
        ("valid RS256 token", valid, True),
        ("no Authorization header", None, False),
        ("garbage token", "not.a.jwt", False),
        ("payload altered after signing", tampered, False),
        ("wrong issuer", mint(dict(good, iss="evil"), key), False),
        ("wrong audience", mint(dict(good, aud=["someone.else"]), key), False),
        ("scope without admin (403)", mint(dict(good, scp="user"), key), False),
        ("expired an hour ago", mint(dict(good, exp=now - 3600, iat=now - 7200), key), False),
        ('alg "none"', mint(good, key, alg="none"), False),
        ("HS256 keyed with the public key", mint(good, key, alg="HS256",
                                                 hs_key=(CERTS / "jwt-public.pem").read_bytes()), False),
    ]


# ---------------------------------------------------------------------------------------
# Loadgen runs


class Harness:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.bin = Path(args.bin_dir)
        self.tmp = Path(tempfile.mkdtemp(prefix="wsgate-compare-"))
        self.runs_dir = self.tmp / "runs"
        self.runs_dir.mkdir()
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.run_no = 0
        self.procs: list[Proc] = []
        self.targets: dict[str, Target] = {}
        self.backends: Proc | None = None
        self.loadgens: set[subprocess.Popen] = set()  # running loadgen processes
        self.lock = threading.Lock()
        self.stopping = False
        self.versions = "?"

    def spawn(self, argv: list[str]) -> subprocess.Popen:
        """Starts a loadgen (own session: a Ctrl-C reaches us, and we stop it) with its
        output next to its JSON report."""
        with self.lock:
            if self.stopping:
                raise KeyboardInterrupt("stopping")
            logf = open(Path(argv[argv.index("--json") + 1]).with_suffix(".out"), "wb")
            p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
            logf.close()
            self.loadgens.add(p)
            return p

    def reap(self, p: subprocess.Popen, timeout: float) -> int:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"loadgen {p.pid} overran its time: killing it")
            p.kill()
            p.wait()
        with self.lock:
            self.loadgens.discard(p)
        return p.returncode

    def run_loadgen(self, argv: list[str], timeout: float = 120) -> int:
        return self.reap(self.spawn(argv), timeout)

    # -- set-up / tear-down ---------------------------------------------------------------

    def setup(self) -> None:
        a = self.args
        # Every process started here inherits the raised soft limit on open files (the
        # gateway does not raise its own; nginx and HAProxy do). Each idle session costs a
        # proxy two descriptors.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        need = 2 * a.idle_sessions + 200
        if "d" in (a.scenarios or "abcdef") and not a.smoke and hard != resource.RLIM_INFINITY and hard < need:
            log(f"WARNING: the open-file limit ({hard}) is below the {need} that (d) needs per proxy")
        # Run copies, so that a rebuild in the workspace during the run changes nothing.
        snap = self.tmp / "bin"
        snap.mkdir()
        for exe in ("loadgen", "gateway", "demo-services"):
            if not (self.bin / exe).exists():
                raise SystemExit(f"missing {self.bin / exe}: build with cargo build --release "
                                 "-p loadgen -p gateway -p demo-services")
            shutil.copy2(self.bin / exe, snap / exe)
        self.bin = snap
        self.versions = versions(snap)
        ports = free_ports(7)
        bports, gw_port, ng_port, hp_port, relay_port = ports[:3], ports[3], ports[4], ports[5], ports[6]
        self.bports = bports
        log(f"temp folder {self.tmp}; backends on {bports}, gateway :{gw_port}, "
            f"nginx :{ng_port}, haproxy :{hp_port}, relay :{relay_port}")
        quiet = {"RUST_LOG": "warn"}
        self.backends = Proc("demo-services", [
            str(self.bin / "demo-services"), "--host", "127.0.0.1",
            "--abc-port", str(bports[0]), "--pqr-port", str(bports[1]), "--xyz-port", str(bports[2]),
            "--push-interval", "0"], self.logs, quiet)
        self.procs.append(self.backends)
        self.backends.start()
        deadline = time.monotonic() + 20
        while not all(listening(p) for p in bports):
            if not self.backends.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"demo-services did not start:\n{self.backends.tail()}")
            time.sleep(0.05)

        wanted = [t for t in TARGETS if t in a.targets]
        if "gateway" in wanted:
            cfg = gateway_config(self.tmp, gw_port, bports)
            p = Proc("gateway", [str(self.bin / "gateway"), "--config", str(cfg),
                                 "--log-level", "warn"], self.logs, quiet)
            self.procs.append(p)
            self.targets["gateway"] = Target("gateway", f"wss://127.0.0.1:{gw_port}/gateway", p, gw_port,
                                            pidfile=self.tmp / "gateway.pid")
        if "nginx" in wanted:
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            conf = nginx_config(self.tmp, ng_port, bports)
            p = Proc("nginx", [nginx, "-p", str(self.tmp / "nginx"), "-c", str(conf),
                               "-e", str(self.tmp / "nginx" / "logs" / "error.log")], self.logs)
            self.procs.append(p)
            self.targets["nginx"] = Target("nginx", f"wss://127.0.0.1:{ng_port}/gateway", p, ng_port, workers=2)
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if "haproxy" in wanted:
            out = subprocess.run([haproxy, "-v"], capture_output=True, text=True).stdout
            m = re.search(r"version (\d+)\.(\d+)", out)
            if not m or (int(m.group(1)), int(m.group(2))) < (2, 5):
                raise RuntimeError(f"HAProxy 2.5 or later is needed for jwt_verify; found: "
                                   f"{out.splitlines()[0] if out else 'nothing'}")
            cfg = haproxy_config(self.tmp, hp_port, bports)
            check = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True)
            if check.returncode != 0:
                raise RuntimeError(f"haproxy rejects its config:\n{check.stdout}{check.stderr}")
            p = Proc("haproxy", [haproxy, "-f", str(cfg), "-db"], self.logs)
            self.procs.append(p)
            self.targets["haproxy"] = Target("haproxy", f"wss://127.0.0.1:{hp_port}/gateway", p, hp_port,
                                            pidfile=self.tmp / "haproxy.pid")  # -db: foreground
        if "relay" in wanted:
            cfg = relay_config(self.tmp, relay_port, bports[0])
            p = Proc("relay", [haproxy, "-f", str(cfg), "-db"], self.logs)
            self.procs.append(p)
            self.targets["relay"] = Target("relay", f"ws://127.0.0.1:{relay_port}/backend/abc", p, relay_port,
                                          pidfile=self.tmp / "relay.pid")
        if "direct" in wanted:
            self.targets["direct"] = Target("direct", f"ws://127.0.0.1:{bports[0]}/backend/abc", None, None)
        for t in self.targets.values():
            try:
                t.start()
            except RuntimeError as e:
                # Builds without the [admin] section refuse the key: write the config without.
                if t.name != "gateway" or "unknown field `admin`" not in str(e):
                    raise
                gateway_config(self.tmp, gw_port, bports, admin_key=False)
                t.start()

    def teardown(self) -> None:
        with self.lock:
            self.stopping = True
            loadgens = list(self.loadgens)
        for p in loadgens:
            if p.poll() is None:
                p.kill()
            p.wait()
        for p in reversed(self.procs):
            p.stop()
        if self.args.keep_tmp:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def check_alive(self) -> None:
        for p in self.procs:
            if p.p is not None and not p.alive():
                raise RuntimeError(f"{p.name} died (exit {p.p.returncode}):\n{p.tail()}")

    # -- one loadgen invocation -----------------------------------------------------------

    def loadgen_argv(self, t: Target, *, conns: int, duration: str, size: int = 128,
                     inflight: int = 1, rate: float | None = None, backend: str = "all",
                     token: str | None = "mint", extra: list[str] | None = None) -> tuple[list[str], Path]:
        self.run_no += 1
        out = self.runs_dir / f"{self.run_no:04d}-{t.name}.json"
        argv = [str(self.bin / "loadgen"), "--url", t.url, "--backend", backend,
                "--conns", str(conns), "--duration", duration, "--size", str(size),
                "--inflight", str(inflight), "--ca", str(CERTS / "ca.crt"),
                "--json", str(out), "--no-progress"]
        if token == "mint":
            argv += ["--jwt-key", str(CERTS / "jwt-private.pem")]
        elif token is None:
            argv += ["--no-token"]
        else:
            argv += ["--token", token]
        if rate is not None:
            argv += ["--rate", f"{rate:.3f}"]
        if CLIENT_CERTS:
            argv += ["--client-cert", str(CERTS / "client.crt"), "--client-key", str(CERTS / "client.key")]
        return argv + LOADGEN_EXTRA + (extra or []), out

    @staticmethod
    def read_json(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def measured(self, t: Target, *, conns: int, duration: float, **kw) -> dict:
        """A closed- or open-loop run, with the proxy's CPU read over the sending phase.

        Every connection is open once the proxy holds two more descriptors per connection
        (client and backend socket) than when idle; loadgen starts sending on its next
        100 ms tick after that and sends for `duration`. The CPU window is therefore
        [all open + 0.2 s, all open + duration - the syscall window]: inside the sending
        phase, so the messages it covers are the run's msgs/s × its length. System calls are
        counted in the rest of the sending phase, after it. CPU over the whole invocation
        (connects and closes included) is kept too.
        """
        t.settle()
        self.check_alive()
        argv, out = self.loadgen_argv(t, conns=conns, duration=f"{duration}s", **kw)
        base_fds = t.fds()
        cpu_before = t.cpu()
        started = time.monotonic()
        p = self.spawn(argv)
        window = None
        rss_open = None
        try:
            if t.is_proxy:
                while p.poll() is None:
                    if t.fds() >= base_fds + 2 * conns:
                        end = time.monotonic() + duration
                        cpu_end = end - syscall_window_s(duration)
                        time.sleep(LEAD_IN_S)
                        c0, k0, t0 = t.cpu(), t.cpu_kernel(), time.monotonic()
                        m0 = machine_ticks()
                        tools0 = self.tools_cpu(p)
                        rss_open = t.rss()
                        wait_while_running(p, cpu_end)
                        if p.poll() is None:
                            cpu_w = (t.cpu() - c0, time.monotonic() - t0, t.cpu_kernel() - k0,
                                     shares(m0, machine_ticks()), self.tools_cpu(p) - tools0)
                            # System calls are counted after the CPU window (see SyscallCount).
                            calls = SyscallCount(t.pids())
                            # Stops short of the end, so that loadgen is surely still sending.
                            calls_end = end - LEAD_IN_S
                            wait_while_running(p, calls_end)
                            rate = calls.stop()
                            window = cpu_w + ((rate if p.poll() is None else None),)
                        break
                    time.sleep(0.01)
        except BaseException:
            p.kill()
            self.reap(p, 5)
            raise
        self.reap(p, duration + 60)
        wall = time.monotonic() - started
        cpu_total = t.cpu() - cpu_before if t.is_proxy else None
        rep = self.read_json(out)
        return self.summarise(t, rep, p.returncode, wall, cpu_total, window, rss_open, out)

    def tools_cpu(self, loadgen: subprocess.Popen) -> float:
        """CPU seconds so far of what shares the machine with the proxy in a run: this
        loadgen and the demo backends."""
        backends = cpu_s(self.backends.pid) if self.backends is not None else 0.0
        return cpu_s(loadgen.pid) + backends

    def summarise(self, t: Target, rep: dict | None, rc: int, wall: float,
                  cpu_total: float | None, window, rss_open, out: Path) -> dict:
        r: dict = {"target": t.name, "exit": rc, "wall_s": round(wall, 3), "json": out.name}
        if rep is None:
            r["error"] = "no JSON report: " + (out.with_suffix(".out").read_text(errors="replace")[-500:]
                                                if out.with_suffix(".out").exists() else "")
            return r
        tot = rep["total"]
        echoed = tot["messages"]["echoed"]
        r.update(
            opened=tot["connections"]["opened"], failed=tot["connections"]["failed"],
            dropped=tot["connections"]["dropped"],
            failures=[f"{f['count']}× {f['reason']}" for f in tot["connections"]["failures"]][:3],
            echoed=echoed, msgs_per_s=tot["messages"]["msgs_per_s"],
            rtt_p50_us=tot["rtt_us"]["p50"], rtt_p99_us=tot["rtt_us"]["p99"],
            rtt_p999_us=tot["rtt_us"]["p999"], rtt_max_us=tot["rtt_us"]["max"],
            errors=tot["errors"]["total"], duration_s=rep["duration_s"],
            connect_p50_ms=tot["connections"]["connect_ms"]["p50"],
            loadgen_cpu_s=rep.get("loadgen", {}).get("cpu_s"),
        )
        if rep.get("tls_suites"):
            r["tls_suites"] = {s["suite"]: s["connections"] for s in rep["tls_suites"]}
        if t.is_proxy:
            r["proxy_cpu_s_whole_run"] = round(cpu_total, 3)
            r["proxy_rss_kib_open"] = rss_open
            r["proxy_rss_kib_after"] = t.rss()
            if window is not None and window[1] >= 0.2 and echoed:
                # Messages echoed inside the window (which lies inside the sending phase):
                # the run's rate times the window's length.
                cpu_w, len_w, kernel_w, (steal, idle), tools_w, calls_per_s = window
                r["steal_share"], r["idle_share"] = steal, idle
                msgs_w = min(echoed, r["msgs_per_s"] * len_w)
                r["proxy_cpu_s_window"] = round(cpu_w, 3)
                r["window_s"] = round(len_w, 3)
                r["cpu_us_per_fwd_msg"] = cpu_w * 1e6 / (2 * msgs_w) if msgs_w else None
                r["cpu_basis"] = "sending phase"
                if msgs_w:
                    r["tools_cpu_us_per_echo"] = tools_w * 1e6 / msgs_w
                if cpu_w > 0:
                    r["cpu_kernel_share"] = kernel_w / cpu_w
                if calls_per_s is not None and r["msgs_per_s"]:
                    r["syscalls_per_fwd_msg"] = calls_per_s / (2 * r["msgs_per_s"])
            elif echoed:
                r["cpu_us_per_fwd_msg"] = cpu_total * 1e6 / (2 * echoed)
                r["cpu_basis"] = "whole run (incl. connect/close)"
        return r

    # -- scenarios ------------------------------------------------------------------------

    def order(self, names: list[str]) -> list[Target]:
        return [self.targets[n] for n in TARGETS if n in self.targets and n in names]

    def round_order(self, names: list[str], rnd: int) -> list[Target]:
        """The targets for round `rnd`, rotated by one place per round (A B C D, B C D A,
        ...), so a machine that gets busier or quieter during the run does not always
        favour or penalise the target that goes first."""
        order = self.order(names)
        k = rnd % len(order) if order else 0
        return order[k:] + order[:k]

    def closed_scenario(self, key: str, rounds: int, duration: float) -> dict:
        conns, inflight, size = CLOSED[key]
        per: dict[str, list] = {t.name: [] for t in self.order(TARGETS)}
        for rnd in range(rounds):
            for t in self.round_order(TARGETS, rnd):
                r = self.measured(t, conns=conns, duration=duration, size=size, inflight=inflight)
                r["round"] = rnd + 1
                per[t.name].append(r)
                log(f"({key}) round {rnd + 1}/{rounds} {t.name:8s} {brief(r)}")
        return per

    def open_scenario(self, rate: float, rounds: int, duration: float) -> dict:
        per: dict[str, list] = {t.name: [] for t in self.order(TARGETS)}
        for rnd in range(rounds):
            for t in self.round_order(TARGETS, rnd):
                r = self.measured(t, conns=100, duration=duration, size=128, rate=rate)
                r["round"] = rnd + 1
                per[t.name].append(r)
                log(f"(f) round {rnd + 1}/{rounds} {t.name:8s} {brief(r)}")
        return per

    def idle_scenario(self, rounds: int, sessions: int) -> dict:
        """(d): fresh process, RSS idle, then `sessions` idle sessions held, RSS again."""
        per: dict[str, list] = {t.name: [] for t in self.order(PROXIES)}
        for rnd in range(rounds):
            for t in self.order(PROXIES):
                t.restart()
                time.sleep(0.5)
                rss0, pss0 = t.rss(), t.pss()
                base_fds = t.fds()
                # Open loop at a rate so low that no message is due during the hold:
                # loadgen opens every session, then they sit idle for --duration.
                argv, out = self.loadgen_argv(t, conns=sessions, duration="3s", rate=0.001,
                                              extra=["--connect-timeout", "30s"])
                started = time.monotonic()
                p = self.spawn(argv)
                held = rss1 = pss1 = None
                connect_s = None
                while p.poll() is None:
                    if t.fds() >= base_fds + 2 * sessions:
                        connect_s = time.monotonic() - started
                        time.sleep(1.0)
                        samples = []
                        for _ in range(3):
                            samples.append((t.rss(), t.pss(), (t.fds() - base_fds) // 2))
                            time.sleep(0.2)
                        rss1, pss1, held = max(samples)
                        break
                    time.sleep(0.05)
                self.reap(p, 120)
                rep = self.read_json(out)
                r = {"target": t.name, "round": rnd + 1, "exit": p.returncode,
                     "rss_kib_fresh": rss0, "pss_kib_fresh": pss0, "rss_kib_held": rss1,
                     "pss_kib_held": pss1, "sessions_held": held,
                     "connect_phase_s": round(connect_s, 3) if connect_s else None,
                     "opened": rep["total"]["connections"]["opened"] if rep else None,
                     "failed": rep["total"]["connections"]["failed"] if rep else None,
                     "errors": rep["total"]["errors"]["total"] if rep else None, "json": out.name}
                if held:
                    r["rss_kib_per_conn"] = (rss1 - rss0) / held
                    r["pss_kib_per_conn"] = (pss1 - pss0) / held
                else:
                    r["error"] = f"the {sessions} sessions never were all open"
                per[t.name].append(r)
                log(f"(d) round {rnd + 1}/{rounds} {t.name:8s} fresh {rss0} KiB, held {rss1} KiB "
                    f"for {held} sessions: {fmt(r.get('rss_kib_per_conn'), 2)} KiB/conn")
                t.settle(30)
        return per

    def storm_scenario(self, rounds: int, seconds: float, batch: int, workers: int) -> dict:
        """(e): `workers` loops of loadgen invocations, each opening `batch` fresh
        connections (full TLS handshake, no resumption; token check; backend connect),
        one echo each, then closing them; new connections per second = all connections
        opened / wall time of the storm."""
        per: dict[str, list] = {t.name: [] for t in self.order(STORM_TARGETS)}
        for rnd in range(rounds):
            for t in self.round_order(STORM_TARGETS, rnd):
                t.settle(30)
                self.check_alive()
                cpu0 = t.cpu()
                start = time.monotonic()
                stop_at = start + seconds
                results: list[dict] = []
                lock = threading.Lock()

                def loop() -> None:
                    while time.monotonic() < stop_at and not self.stopping:
                        with lock:
                            # Open loop with one message per connection: each connection's
                            # interval is the whole 100 ms sending phase, and its first
                            # message falls at a random point inside it.
                            argv, out = self.loadgen_argv(t, conns=batch, duration="100ms",
                                                          rate=batch / 0.1, backend="all")
                        try:
                            rc = self.run_loadgen(argv)
                        except KeyboardInterrupt:
                            return
                        rep = self.read_json(out)
                        with lock:
                            results.append({"rc": rc, "rep": rep})

                threads = [threading.Thread(target=loop, daemon=True) for _ in range(workers)]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                wall = time.monotonic() - start
                cpu = t.cpu() - cpu0 if t.is_proxy else None
                reps = [x["rep"] for x in results if x["rep"]]
                opened = sum(r["total"]["connections"]["opened"] for r in reps)
                failed = sum(r["total"]["connections"]["failed"] for r in reps)
                echoed = sum(r["total"]["messages"]["echoed"] for r in reps)
                errors = sum(r["total"]["errors"]["total"] for r in reps)
                c50 = [r["total"]["connections"]["connect_ms"]["p50"] for r in reps if r["total"]["connections"]["opened"]]
                c99 = [r["total"]["connections"]["connect_ms"]["p99"] for r in reps if r["total"]["connections"]["opened"]]
                res = {"target": t.name, "round": rnd + 1, "invocations": len(results),
                       "opened": opened, "failed": failed, "echoed": echoed, "errors": errors,
                       "wall_s": round(wall, 3), "conns_per_s": opened / wall if wall else 0,
                       "connect_p50_ms": statistics.median(c50) if c50 else None,
                       "connect_p99_ms": statistics.median(c99) if c99 else None}
                if t.is_proxy:
                    res["proxy_cpu_s"] = round(cpu, 3)
                    res["cpu_us_per_conn"] = cpu * 1e6 / opened if opened else None
                per[t.name].append(res)
                log(f"(e) round {rnd + 1}/{rounds} {t.name:8s} {opened} conns in {wall:.1f}s = "
                    f"{res['conns_per_s']:.0f}/s, failed {failed}, proxy CPU "
                    f"{fmt(res.get('cpu_us_per_conn'), 0)} µs/conn")
        return per

    def auth_check(self) -> list[dict]:
        rows = []
        cases = auth_cases() + [("unknown ID (valid token)", "mint", None)]
        for case, token, should in cases:
            row = {"case": case, "expect_accept": should}
            for t in self.order(PROXIES):
                backend = "Backend_NOPE" if should is None else "Backend_ABC"
                argv, out = self.loadgen_argv(t, conns=1, duration="50ms", backend=backend,
                                              token=token, extra=["--connect-timeout", "5s"])
                self.run_loadgen(argv, 60)
                rep = self.read_json(out)
                if rep is None:
                    row[t.name] = "error"
                elif rep["total"]["connections"]["opened"]:
                    row[t.name] = "accepted"
                else:
                    reasons = " ".join(f["reason"] for f in rep["total"]["connections"]["failures"])
                    m = re.search(r"\b([1-5]\d\d)\b", reasons)
                    row[t.name] = f"refused {m.group(1)}" if m else f"refused ({reasons[:60]})"
            rows.append(row)
            log(f"auth: {case:34s} " + "  ".join(f"{n}={row.get(n)}" for n in PROXIES if n in row))
        return rows


# ---------------------------------------------------------------------------------------
# Aggregation and the table


def fmt(v, digits: int = 0) -> str:
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def fmt_us(v) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f} µs" if v < 10_000 else f"{v / 1000:,.1f} ms"


def brief(r: dict) -> str:
    if "error" in r:
        return "ERROR " + r["error"][:200]
    s = (f"{r['msgs_per_s']:>10,.0f} msg/s  p50 {fmt_us(r['rtt_p50_us'])}  p99 {fmt_us(r['rtt_p99_us'])}"
         f"  p99.9 {fmt_us(r['rtt_p999_us'])}  errors {r['errors']}  opened {r['opened']}")
    if r.get("cpu_us_per_fwd_msg") is not None:
        s += f"  proxy CPU {r['cpu_us_per_fwd_msg']:.2f} µs/fwd msg ({r['cpu_basis']})"
    if r.get("cpu_kernel_share") is not None:
        s += f", {r['cpu_kernel_share']:.0%} in the kernel"
    if r.get("syscalls_per_fwd_msg") is not None:
        s += f", {r['syscalls_per_fwd_msg']:.3f} syscalls/fwd msg"
    if r.get("steal_share") is not None:
        s += f"  machine: {r['steal_share']:.0%} steal, {r['idle_share']:.0%} idle"
    if r.get("failures"):
        s += f"  failures: {r['failures']}"
    return s


METRICS = {
    # key: (higher is better?)
    "msgs_per_s": True, "rtt_p50_us": False, "rtt_p99_us": False, "rtt_p999_us": False,
    "cpu_us_per_fwd_msg": False, "rss_kib_per_conn": False, "pss_kib_per_conn": False,
    "conns_per_s": True, "cpu_us_per_conn": False, "connect_p50_ms": False,
}


def medians(rounds: list[dict]) -> dict:
    out: dict = {}
    keys = {k for r in rounds for k in r
            if k in METRICS or k in ("errors", "failed", "opened", "echoed", "cpu_kernel_share",
                                     "syscalls_per_fwd_msg", "tools_cpu_us_per_echo")}
    for k in keys:
        vals = [r[k] for r in rounds if r.get(k) is not None]
        if not vals:
            continue
        out[k] = sum(vals) if k in ("errors", "failed") else statistics.median(vals)
    return out


def with_ratios(med: dict[str, dict]) -> dict[str, dict]:
    """Adds `<metric>_vs_best_peer` (value / best of nginx and HAProxy)."""
    for m, higher in METRICS.items():
        peer_vals = [med[p][m] for p in PEERS if p in med and med[p].get(m) not in (None, 0)]
        if not peer_vals:
            continue
        best = max(peer_vals) if higher else min(peer_vals)
        for name, v in med.items():
            if v.get(m) is not None and best:
                v[f"{m}_vs_best_peer"] = v[m] / best
    return med


def cell(v: dict, m: str, f) -> str:
    if v.get(m) is None:
        return "–"
    r = v.get(f"{m}_vs_best_peer")
    return f"{f(v[m])} ({r:.2f}×)" if r is not None else f(v[m])


def issue_targets(res: dict) -> list[dict]:
    """The ratios issue 4 asks for, read off the medians."""
    out = []

    def get(s, t, m):
        return res.get(s, {}).get("median", {}).get(t, {}).get(m)

    def add(goal, s, m, op, limit, vs="best peer"):
        gw = get(s, "gateway", m)
        if vs == "best peer":
            r = get(s, "gateway", f"{m}_vs_best_peer")
        else:
            h = get(s, vs, m)
            r = gw / h if gw is not None and h else None
        ok = None if r is None else (r >= limit if op == ">=" else r <= limit)
        out.append({"goal": goal, "ratio": r, "pass": ok})

    add("(b) msgs/s ≥ 1.2 × best peer", "b", "msgs_per_s", ">=", 1.2)
    add("(a) msgs/s ≥ 1.0 × best peer", "a", "msgs_per_s", ">=", 1.0)
    add("(c) msgs/s ≥ 1.0 × best peer", "c", "msgs_per_s", ">=", 1.0)
    add("(b) CPU µs/fwd msg ≤ 0.7 × best peer", "b", "cpu_us_per_fwd_msg", "<=", 0.7)
    add("(d) RSS/conn ≤ 0.5 × best peer", "d", "rss_kib_per_conn", "<=", 0.5)
    add("(e) conns/s ≥ 1.2 × HAProxy", "e", "conns_per_s", ">=", 1.2, vs="haproxy")
    add("(f) p99 ≤ best peer", "f", "rtt_p99_us", "<=", 1.0)
    for s in ("a", "b", "c"):
        gw, d = get(s, "gateway", "msgs_per_s"), get(s, "direct", "msgs_per_s")
        if gw is not None and d:
            out.append({"goal": f"({s}) gateway msgs/s as a fraction of direct (report)",
                        "ratio": gw / d, "pass": None})
    out.extend(cpu_floor(res))
    out.extend(msgs_dilution(res))
    return out


def msgs_dilution(res: dict) -> list[dict]:
    """What the (b) msgs/s ratio can be on a machine the proxy shares with loadgen and the
    backends. The cores are saturated in (b), so a target's msgs/s goes as 1 / (CPU per
    echo of the tools + of the proxy): the tools' CPU, the same for every target, dilutes
    the proxies' difference. Reported: the ratio the proxies' CPU alone would give (a
    machine of their own), and the one this machine's shares predict."""
    med = res.get("b", {}).get("median", {})
    gw = med.get("gateway", {})
    peers = [med[p] for p in PEERS if med.get(p, {}).get("cpu_us_per_fwd_msg")]
    if not gw.get("cpu_us_per_fwd_msg") or not peers:
        return []
    best = min(peers, key=lambda v: v["cpu_us_per_fwd_msg"])
    g, h = 2 * gw["cpu_us_per_fwd_msg"], 2 * best["cpu_us_per_fwd_msg"]
    out = [{"goal": "(b) msgs/s ratio the proxies' CPU alone would give, best peer's CPU per echo / the gateway's (report)",
            "ratio": h / g, "pass": None}]
    tools = [v["tools_cpu_us_per_echo"] for v in (gw, best) if v.get("tools_cpu_us_per_echo")]
    if tools:
        t = statistics.median(tools)
        out.append({"goal": f"(b) msgs/s ratio predicted on the shared cores, (tools + best peer) / "
                            f"(tools + gateway) CPU per echo, loadgen and backends at {t:.2f} µs (report)",
                    "ratio": (t + h) / (t + g), "pass": None})
    return out


def cpu_floor(res: dict) -> list[dict]:
    """How low the (b) CPU ratio can go: the kernel's part of CPU per forwarded message.

    Every proxy doing this job makes the same TCP sends and receives for the same bytes, and
    the kernel's work for them (loopback TCP, the peer's receive path, wake-ups) is charged
    to the proxy whatever its user space does. The best peer's kernel share is the score a
    proxy with no user-space work at all (not even TLS crypto) would get; the gateway's
    kernel time alone, as a ratio to the best peer's total, is where its own floor lies.
    The relay, measured in the same rounds, is that floor taken directly: a real proxy
    process moving the same messages with nothing else to do."""
    med = res.get("b", {}).get("median", {})
    peers = [(p, med[p]) for p in PEERS
             if med.get(p, {}).get("cpu_us_per_fwd_msg") and med[p].get("cpu_kernel_share")]
    if not peers:
        return []
    name, best = min(peers, key=lambda pv: pv[1]["cpu_us_per_fwd_msg"])
    out = [{"goal": f"(b) CPU floor: {name}'s kernel time alone vs its total (report)",
            "ratio": best["cpu_kernel_share"], "pass": None}]
    gw = med.get("gateway", {})
    if gw.get("cpu_us_per_fwd_msg") and gw.get("cpu_kernel_share") is not None:
        out.append({"goal": f"(b) CPU floor: the gateway's kernel time alone vs {name}'s total (report)",
                    "ratio": gw["cpu_us_per_fwd_msg"] * gw["cpu_kernel_share"]
                    / best["cpu_us_per_fwd_msg"], "pass": None})
    relay = med.get("relay", {}).get("cpu_us_per_fwd_msg")
    if relay:
        out.append({"goal": f"(b) CPU floor: a plain TCP relay (no TLS, no WebSocket) vs {name}'s total (report)",
                    "ratio": relay / best["cpu_us_per_fwd_msg"], "pass": None})
    return out


def per_proxy_medians(res: dict, key: str, spec: str) -> str:
    """`(a) gateway 0.78, nginx …; (b) …`: each proxy's median `key` per scenario, where
    measured ("" when nowhere)."""
    parts = []
    for s in "abcf":
        med = res.get(s, {}).get("median", {})
        vals = [f"{t} {med[t][key]:{spec}}" for t in CHARGED
                if med.get(t, {}).get(key) is not None]
        if vals:
            parts.append(f"({s}) " + ", ".join(vals))
    return "; ".join(parts)


def per_proxy_rounds(res: dict, key: str, spec: str) -> str:
    """`(a) gateway 1%/28%/3%, nginx …; (b) …`: each proxy's `key` in each round, in round
    order ("" when nowhere)."""
    parts = []
    for s in "abcf":
        rounds = res.get(s, {}).get("rounds", {})
        vals = []
        for t in CHARGED:
            got = [f"{r[key]:{spec}}" for r in rounds.get(t, []) if r.get(key) is not None]
            if got:
                vals.append(f"{t} {'/'.join(got)}")
        if vals:
            parts.append(f"({s}) " + ", ".join(vals))
    return "; ".join(parts)


def negotiated_suites(res: dict) -> str:
    """`gateway TLS13_…, nginx …`: the TLS cipher suites each target's connections got in
    the closed- and open-loop runs, as loadgen reported them ("" when none)."""
    seen: dict[str, set[str]] = {}
    for s in "abcf":
        for t, rounds in res.get(s, {}).get("rounds", {}).items():
            for r in rounds:
                seen.setdefault(t, set()).update(r.get("tls_suites", {}))
    return ", ".join(f"{t} {' + '.join(sorted(v))}" for t, v in seen.items() if v)


def render(meta: dict, res: dict, auth: list[dict], goals: list[dict]) -> str:
    L = []
    L.append(f"## wsgate vs nginx vs HAProxy — {meta['date']}")
    L.append("")
    L.append(f"Machine: {meta['machine']}. Versions: {meta['versions']}. Mode: {meta['mode']} "
             f"({meta['rounds']} round(s) interleaved, medians; {meta['duration_s']} s per closed/open-loop run)."
             + (f" Gateway `[server]` extra: `{meta['gateway_server']}`." if meta.get("gateway_server") else "")
             + (f" Gateway `[tls]` extra: `{meta['gateway_tls']}`." if meta.get("gateway_tls") else "")
             + (f" loadgen extra: `{meta['loadgen_args']}`." if meta.get("loadgen_args") else "")
             + (" **Mutual TLS** (`--client-certs`): every proxy requires a client certificate"
                " from the dev CA and loadgen presents one." if meta.get("client_certs") else ""))
    L.append("")
    L.append("| Scen. | Target | JWT checked | msgs/s | RTT p50 | RTT p99 | RTT p99.9 | proxy CPU µs/fwd msg | proxy RSS KiB/conn | new conns/s | proxy CPU µs/conn | errors |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in "dabcfe":
        if s not in res:
            continue
        med = res[s]["median"]
        for t in TARGETS:
            if t not in med:
                continue
            v = med[t]
            L.append("| " + " | ".join([
                f"({s})", t, JWT_NOTE[t],
                cell(v, "msgs_per_s", lambda x: fmt(x)),
                cell(v, "rtt_p50_us", fmt_us), cell(v, "rtt_p99_us", fmt_us),
                cell(v, "rtt_p999_us", fmt_us),
                cell(v, "cpu_us_per_fwd_msg", lambda x: fmt(x, 2)),
                cell(v, "rss_kib_per_conn", lambda x: fmt(x, 1)),
                cell(v, "conns_per_s", lambda x: fmt(x)),
                cell(v, "cpu_us_per_conn", lambda x: fmt(x)),
                str(v.get("errors", 0) + v.get("failed", 0)) if v else "–",
            ]) + " |")
    L.append("")
    L.append("Scenarios: " + "; ".join(f"({k}) {SCENARIOS[k]}" + (f" = {res[k]['rate']:,.0f} msgs/s" if k == "f" and "rate" in res.get(k, {}) else "")
                                      + (" (the rate given with --open-rate instead)" if res.get(k, {}).get("rate_given") else "")
                                      for k in "abcdef" if k in res) + ".")
    L.append("")
    L.append("(×) is the ratio to the best peer (the better of nginx and HAProxy) in the same run: "
             "above 1 is better for msgs/s and conns/s, below 1 is better for latency, CPU and RSS. "
             "*direct* is loadgen straight to the demo backend (ws://, no TLS, no auth): the limit. "
             "*relay* is HAProxy as a bare TCP relay in front of that backend (ws:// through it: no "
             "TLS, no HTTP, no routing, no token): not a peer, but the floor, what it costs a "
             "proxy process on this machine only to move the same bytes. "
             "Proxy CPU is utime+stime from /proc of all the proxy's processes (nginx master + "
             "workers), read over the sending phase; one echoed round trip counts as **2 forwarded "
             "messages** (client→backend and backend→client), so µs/fwd msg = CPU s × 10⁶ / (2 × echoes). "
             "RSS/conn = (VmRSS summed over the proxy's processes while holding the idle sessions − "
             "VmRSS of the freshly started processes) / sessions held. In (e), new conns/s = "
             "connections opened / wall time, each with a full TLS handshake (no resumption), the "
             "token check, the backend connect, one echo and the close; proxy CPU µs/conn covers that "
             "whole cycle. errors = integrity errors + connections that failed to open, summed over rounds. "
             "Demo backends and loadgen are not charged to the proxy; their CPU per echoed message in "
             "the same windows is reported below, as it shares the cores and so caps every msgs/s ratio. "
             "The machine may be shared: figures are noisy.")
    L.append("")
    for title, key, spec in (
        ("Share of each proxy's CPU spent in the kernel (system time: TCP on loopback, "
         "syscalls, wake-ups)", "cpu_kernel_share", ".0%"),
        ("System calls per forwarded message (all kinds, counted by `perf stat` on the "
         "raw_syscalls tracepoint in the second of sending after the CPU window)", "syscalls_per_fwd_msg", ".3f"),
        ("CPU µs per echoed message of loadgen and the demo backends together, in each "
         "proxy's CPU window (they share the two cores with the proxy)", "tools_cpu_us_per_echo", ".2f"),
    ):
        line = per_proxy_medians(res, key, spec)
        if line:
            L.append(f"{title}, medians: {line}.")
            L.append("")
    steal = per_proxy_rounds(res, "steal_share", ".0%")
    if steal:
        L.append("Machine CPU taken by the hypervisor (steal, from /proc/stat) over each proxy's CPU "
                 "window, per round: a run with much of it measured the host's other guests as much "
                 f"as the proxy, and a ratio between runs with different steal is not a clean one: {steal}.")
        L.append("")
    suites = negotiated_suites(res)
    if suites:
        L.append("TLS cipher suite the connections got (loadgen offers a browser's order, "
                 f"AES-128-GCM first): {suites}.")
        L.append("")
    L.append("¹ nginx (open source) cannot verify a JWT without njs or NGINX Plus: it only terminates "
             "TLS, routes and tunnels, so it does less work than the gateway and HAProxy.")
    if goals:
        L.append("")
        L.append("Issue 4 targets (gateway):")
        L.append("")
        for g in goals:
            r = "–" if g["ratio"] is None else f"{g['ratio']:.2f}×"
            mark = "" if g["pass"] is None else (" ✅" if g["pass"] else " ❌")
            L.append(f"- {g['goal']}: {r}{mark}")
    if auth:
        L.append("")
        L.append("Auth check (1 connection each; expected: gateway and HAProxy accept only the valid token):")
        L.append("")
        names = [n for n in PROXIES if n in auth[0]]
        L.append("| Token | " + " | ".join(names) + " |")
        L.append("|---|" + "---|" * len(names))
        for row in auth:
            L.append(f"| {row['case']} | " + " | ".join(row[n] for n in names) + " |")
    return "\n".join(L) + "\n"


def versions(bin_dir: Path) -> str:
    def first(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    gw = first([str(bin_dir / "gateway"), "--version"])
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        rev = ""
    ng = first([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]).replace("nginx version: ", "")
    hp = first([shutil.which("haproxy") or "/usr/sbin/haproxy", "-v"]).split(" - ")[0]
    return f"{gw}{' (' + rev + ')' if rev else ''}; {ng}; {hp}"


def machine() -> str:
    model = "?"
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = status = _read("/proc/meminfo") or ""
    m = re.search(r"MemTotal:\s+(\d+)", mem)
    gib = f"{int(m.group(1)) / 1048576:.1f} GiB" if m else "?"
    return f"{os.cpu_count()} × {model}, {gib} RAM, Linux {platform.release()}"


# ---------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="a few seconds per target, 1 round, scenarios a+b, plus the auth check")
    ap.add_argument("--scenarios", help="subset of abcdef (default: all; smoke: ab)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3; smoke 1)")
    ap.add_argument("--duration", type=float, help="seconds per run in a, b, c, f (default 6; smoke 2)")
    ap.add_argument("--storm-seconds", type=float, default=20.0,
                    help="(e) total storm time per target, split over the rounds (default 20)")
    ap.add_argument("--storm-batch", type=int, default=500,
                    help="(e) connections per loadgen invocation (default 500)")
    ap.add_argument("--storm-workers", type=int, default=2,
                    help="(e) loadgen invocations running at once (default 2)")
    ap.add_argument("--idle-sessions", type=int, default=5000, help="(d) sessions held (default 5000)")
    ap.add_argument("--open-rate", type=float, metavar="MSGS_PER_S",
                    help="(f) at this rate instead of half of the gateway's (b) msgs/s, e.g. to compare "
                         "two gateway settings at the same load")
    ap.add_argument("--idle-rounds", type=int, default=1,
                    help="(d) rounds, each on freshly started processes (default 1: memory is not "
                         "timing-noisy, and each round costs ~20 s per proxy)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of " + ",".join(TARGETS))
    ap.add_argument("--no-auth-check", action="store_true", help="skip the token accept/refuse check")
    ap.add_argument("--bin-dir", default=str(REPO / "target" / "release"))
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for the .md and .json")
    ap.add_argument("--name", help="file stem in --out (default: latest; smoke: smoke)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp folder (configs, logs, raw JSON)")
    ap.add_argument("--gateway-server", default="", metavar="TOML",
                    help='extra lines for the gateway\'s [server] table, e.g. \'threading = "shared"\'')
    ap.add_argument("--gateway-tls", default="", metavar="TOML",
                    help="extra lines for the gateway's [tls] table, e.g. 'session_tickets = 0'")
    ap.add_argument("--loadgen-args", default="", metavar="ARGS",
                    help="extra arguments for every loadgen run (shell words), e.g. "
                         "'--client-cert certs/client.crt --client-key certs/client.key' with "
                         "--gateway-tls 'client_ca = \"…/certs/ca.crt\"'")
    ap.add_argument("--client-certs", action="store_true",
                    help="mutual TLS: every proxy requires a client certificate from the dev CA "
                         "(gateway client_ca, nginx ssl_verify_client, HAProxy verify required) "
                         "and loadgen presents certs/client.crt")
    a = ap.parse_args()
    global GATEWAY_SERVER_EXTRA, GATEWAY_TLS_EXTRA, LOADGEN_EXTRA, CLIENT_CERTS
    CLIENT_CERTS = a.client_certs
    GATEWAY_SERVER_EXTRA = a.gateway_server
    GATEWAY_TLS_EXTRA = a.gateway_tls
    LOADGEN_EXTRA = shlex.split(a.loadgen_args)
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    unknown = set(a.targets) - set(TARGETS)
    if unknown:
        ap.error(f"unknown targets {sorted(unknown)}")
    scen = a.scenarios or ("ab" if a.smoke else "abcdef")
    rounds = a.rounds or (1 if a.smoke else 3)
    duration = a.duration or (2.0 if a.smoke else 6.0)
    name = a.name or ("smoke" if a.smoke else "latest")

    h = Harness(a)
    # SIGTERM/SIGHUP (e.g. run.sh's trap) unwind through `finally` like Ctrl-C does.
    # The first one only: a second signal must not interrupt the clean-up.
    def on_signal(signum, _frame):
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    res: dict = {}
    auth: list[dict] = []
    t_start = time.monotonic()
    try:
        h.setup()
        if "d" in scen:
            log(f"(d) {a.idle_sessions} idle sessions on fresh processes, {a.idle_rounds} round(s)")
            res["d"] = {"rounds": h.idle_scenario(a.idle_rounds, a.idle_sessions)}
        if not a.no_auth_check:
            auth = h.auth_check()
        for s in "abc":
            if s in scen:
                log(f"({s}) {SCENARIOS[s]}: {rounds} round(s) × {duration} s")
                res[s] = {"rounds": h.closed_scenario(s, rounds, duration)}
        if "f" in scen:
            base = 2 * a.open_rate if a.open_rate else None
            if not base and "b" in res:
                base = medians(res["b"]["rounds"].get("gateway", [])).get("msgs_per_s")
            if not base:
                log("(f) needs the gateway's (b) throughput: running (b) for the gateway once")
                r = h.measured(h.targets["gateway"], conns=100, duration=duration, size=128, inflight=32)
                base = r.get("msgs_per_s")
            rate = max(100.0, base / 2)
            log(f"(f) open loop at {rate:,.0f} msgs/s: {rounds} round(s) × {duration} s")
            res["f"] = {"rate": rate, "rounds": h.open_scenario(rate, rounds, duration)}
            if a.open_rate:
                res["f"]["rate_given"] = True
        if "e" in scen:
            per_round = a.storm_seconds / rounds
            log(f"(e) handshake storm: {rounds} round(s) × {per_round:.1f} s per target")
            res["e"] = {"rounds": h.storm_scenario(rounds, per_round, a.storm_batch, a.storm_workers)}
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}): stopping everything")
        h.teardown()
        return 130
    except Exception:
        h.teardown()
        raise
    h.teardown()

    for s, v in res.items():
        v["median"] = with_ratios({t: medians(rs) for t, rs in v["rounds"].items() if rs})
    goals = [] if a.smoke else issue_targets(res)
    meta = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(), "versions": h.versions,
        "mode": "smoke" if a.smoke else "full", "rounds": rounds, "duration_s": duration,
        "wall_s": round(time.monotonic() - t_start, 1),
        "gateway_server": GATEWAY_SERVER_EXTRA,
        "gateway_tls": GATEWAY_TLS_EXTRA,
        "loadgen_args": " ".join(LOADGEN_EXTRA),
        "client_certs": CLIENT_CERTS,
    }
    md = render(meta, res, auth, goals)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(md)
    doc = {"version": 1, "meta": meta, "settings": {
        "scenarios": scen, "rounds": rounds, "duration_s": duration, "storm_seconds": a.storm_seconds,
        "storm_batch": a.storm_batch, "storm_workers": a.storm_workers, "idle_sessions": a.idle_sessions,
        "idle_rounds": a.idle_rounds,
        "cpu_definition": "proxy utime+stime (all processes) / (2 × echoed round trips)",
    }, "scenarios": {s: dict(v, title=SCENARIOS[s]) for s, v in res.items()},
        "auth_check": auth, "issue_targets": goals}
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(md)
    log(f"wrote {out / (name + '.md')} and {name}.json in {meta['wall_s']} s")
    bad = [(s, t) for s, v in res.items() for t, m in v["median"].items()
           if m.get("errors", 0) or m.get("failed", 0)]
    bad_auth = [r["case"] for r in auth for n in ("gateway", "haproxy")
                if n in r and r["expect_accept"] is not None
                and (r[n] == "accepted") != r["expect_accept"]]
    if bad:
        log(f"WARNING: errors or failed connections in {bad}")
    if bad_auth:
        log(f"WARNING: unexpected auth results: {bad_auth}")
    return 1 if bad_auth else 0


if __name__ == "__main__":
    sys.exit(main())
