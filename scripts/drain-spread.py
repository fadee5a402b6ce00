#!/usr/bin/env python3
"""What `[timeouts] drain_spread` does to a reconnect wave, measured.

Two gateway processes share one port (`SO_REUSEPORT`, release binaries), in front of the
demo backends; loadgen holds N connections through them in an open loop, with
--reconnect. Eight seconds in, gateway A gets SIGTERM; its clients reconnect, and the
kernel hands them to gateway B. This samples B's accepted connections every 100 ms and
prints, for each drain_spread given, the largest number B took in any 100 ms and in any
second after the signal, and loadgen's latency tail and messages lost at close.

    scripts/drain-spread.py [--conns N] [SPREAD ...]      (default: 0s 8s; N = 1000)

Build first: cargo build --release -p gateway -p loadgen -p demo-services. Loopback only,
bounded: each run takes ~30 s and every process is stopped at its end.
"""
import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "target", "release")
PORT, ADMIN_A, ADMIN_B = 9443, 9191, 9192
SIGNAL_AT, SENDING = 8.0, 28


def config(folder, admin, spread):
    text = open(os.path.join(REPO, "Config.toml")).read()
    text = text.replace('listen = "0.0.0.0:9090"', f'listen = "127.0.0.1:{PORT}"\nreuse_port = true', 1)
    text = text.replace(
        "[tls]",
        f'[admin]\nlisten = "127.0.0.1:{admin}"\n\n[timeouts]\ndrain = "20s"\n'
        f'drain_spread = "{spread}"\n\n[tls]',
        1,
    )
    text = text.replace('"certs/', f'"{REPO}/certs/')
    path = os.path.join(folder, f"gateway-{admin}.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def accepted(admin):
    page = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2).read().decode()
    m = re.search(r"^wsgate_connections_accepted_total (\S+)", page, re.M)
    return float(m.group(1)) if m else 0.0


def wait_until(what, check, within=20.0):
    end = time.time() + within
    while time.time() < end:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"drain-spread: {what} did not come within {within:.0f} s")


def largest_increase(samples, window):
    best = 0.0
    for i, (t, v) in enumerate(samples):
        for t2, v2 in samples[i:]:
            if t2 - t <= window + 0.02:
                best = max(best, v2 - v)
    return best


def run(spread, conns, folder):
    procs = []
    try:
        a = subprocess.Popen([os.path.join(BIN, "gateway"), "--config", config(folder, ADMIN_A, spread),
                              "--log-level", "warn"], stderr=subprocess.DEVNULL)
        procs.append(a)
        b = subprocess.Popen([os.path.join(BIN, "gateway"), "--config", config(folder, ADMIN_B, spread),
                              "--log-level", "warn"], stderr=subprocess.DEVNULL)
        procs.append(b)
        wait_until("gateway A", lambda: accepted(ADMIN_A) >= 0)
        wait_until("gateway B", lambda: accepted(ADMIN_B) >= 0)
        out = os.path.join(folder, f"loadgen-{spread}.txt")
        lg = subprocess.Popen([os.path.join(BIN, "loadgen"), "--url", f"wss://localhost:{PORT}/gateway",
                               "--backend", "Backend_ABC", "--conns", str(conns), "--duration", f"{SENDING}s",
                               "--rate", str(2 * conns), "--reconnect", "--no-progress"],
                              cwd=REPO, stdout=open(out, "w"), stderr=subprocess.STDOUT)
        procs.append(lg)
        start, samples, signalled = time.time(), [], None
        while time.time() - start < SENDING - 2:
            samples.append((time.time() - start, accepted(ADMIN_B)))
            if signalled is None and time.time() - start >= SIGNAL_AT:
                a.send_signal(signal.SIGTERM)
                signalled = time.time() - start
            time.sleep(0.1)
        lg.wait(timeout=90)
        a.wait(timeout=30)
        before = [v for t, v in samples if t < signalled][-1]
        after = [(t, v) for t, v in samples if t >= signalled - 0.2]
        report = open(out).read()
        tail = re.search(r"^total\s+.*$", report, re.M)
        lost = re.search(r"messages lost at close (\d+)", report)
        cols = tail.group(0).split() if tail else []
        return {
            "spread": spread,
            "moved": after[-1][1] - before,
            "peak_100ms": largest_increase(after, 0.1),
            "peak_1s": largest_increase(after, 1.0),
            "p99": cols[-4] if len(cols) >= 5 else "?",
            "p999": cols[-3] if len(cols) >= 5 else "?",
            "max": cols[-2] if len(cols) >= 5 else "?",
            "lost": lost.group(1) if lost else "0",
            "exit_a": a.returncode,
            "integrity": "PASS" if "PASS: no integrity errors" in report else "FAIL",
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("spreads", nargs="*", default=["0s", "8s"])
    args = ap.parse_args()
    for exe in ("gateway", "loadgen", "demo-services"):
        if not os.access(os.path.join(BIN, exe), os.X_OK):
            sys.exit(f"drain-spread: {BIN}/{exe} missing: cargo build --release -p gateway -p loadgen -p demo-services")
    with tempfile.TemporaryDirectory(prefix="wsgate-drain-spread-") as folder:
        demo = subprocess.Popen([os.path.join(BIN, "demo-services")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_until("the demo backends", lambda: socket.create_connection(("127.0.0.1", 8081), 1).close() or True)
            rows = [run(s, args.conns, folder) for s in args.spreads]
        finally:
            demo.kill()
            demo.wait()
    print(f"{args.conns} connections over two gateways, SIGTERM to one at {SIGNAL_AT:.0f} s; "
          "the other's new connections after it:")
    print("| drain_spread | moved | most in 100 ms | most in 1 s | RTT p99 | p99.9 | max | lost at close | A's exit | integrity |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['spread']} | {r['moved']:.0f} | {r['peak_100ms']:.0f} | {r['peak_1s']:.0f} | {r['p99']} | "
              f"{r['p999']} | {r['max']} | {r['lost']} | {r['exit_a']} | {r['integrity']} |")
    return 0 if all(r["exit_a"] == 0 and r["integrity"] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
