#!/usr/bin/env python3
"""Writes the hand-made seed corpus: fuzz/corpus/<target>/seed-*.

Run from anywhere: `python3 fuzz/seeds.py`. Needs Python 3 and `cryptography` (only to
sign the seed JWTs with the repo's test keys in certs/; tokens expire in 2100).
"""
import base64
import json
import os
import struct

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
EXP = 4102444800  # 2100-01-01


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key(name):
    with open(os.path.join(REPO, "certs", name), "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def jwt(alg: str, claims: dict) -> str:
    head = {"alg": alg, "typ": "JWT"}
    msg = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(claims).encode())}".encode()
    if alg == "RS256":
        sig = key("jwt-private.pem").sign(msg, padding.PKCS1v15(), hashes.SHA256())
    else:
        der = key("jwt-es256-private.pem").sign(msg, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{msg.decode()}.{b64(sig)}"


CLAIMS = {
    "sub": "ballerina",
    "iss": "wso2",
    "aud": ["ballerina", "ballerina.org", "ballerina.io"],
    "jti": "5ffa5f54-0b68-4d47-a5a4-bd0d5c6ddc2e",
    "scp": "admin",
    "iat": 1700000000,
    "exp": EXP,
}


def write(target: str, name: str, data: bytes):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"seed-{name}"), "wb") as f:
        f.write(data)


def frame(opcode: int, payload: bytes, fin=True, mask=None, rsv1=False) -> bytes:
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += bytes(mask)
    return head + payload


def close(code: int, reason: bytes = b"", mask=None) -> bytes:
    return frame(8, struct.pack(">H", code) + reason, mask=mask)


def session(client: bytes, backend: bytes, flags=0x03, chunk=0, cl=0, bl=0, lim=(0, 0), budget=0) -> bytes:
    """session_proxy input: the 10-byte header (see fuzz_targets/session_proxy.rs)."""
    return (
        bytes([flags, chunk, cl, bl, lim[0], lim[1]])
        + struct.pack("<H", len(client))
        + struct.pack("<H", budget)
        + client
        + backend
    )


def upgrade(target="/gateway", extra=b"") -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: localhost:9090\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    ).encode() + extra + b"\r\n"


def main():
    rs = jwt("RS256", CLAIMS)
    es = jwt("ES256", CLAIMS)

    # upgrade_request: what a client sends.
    write("upgrade_request", "valid-upgrade",
          upgrade(extra=f"ID: Backend_ABC\r\nAuthorization: Bearer {rs}\r\n".encode()))
    write("upgrade_request", "es256-token",
          upgrade(extra=f"ID: Backend_XYZ\r\nAuthorization: bearer {es}\r\n".encode()))
    write("upgrade_request", "browser-query",
          upgrade(target=f"/gateway?id=Backend_ABC&access_token={rs}"))
    write("upgrade_request", "browser-subprotocol",
          upgrade(target="/gateway?id=Backend_PQR",
                  extra=f"Sec-WebSocket-Protocol: chat, bearer.{rs}\r\n".encode()))
    write("upgrade_request", "not-upgrade", b"POST /gateway?x=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")

    # auth_claims: a claims segment (the harness signs it).
    write("auth_claims", "sample", json.dumps(CLAIMS).encode())
    write("auth_claims", "string-aud-scope-array",
          json.dumps({**CLAIMS, "aud": "ballerina", "scp": ["read", "admin"], "nbf": 1600000000}).encode())
    write("auth_claims", "expired", json.dumps({**CLAIMS, "exp": 1600000000}).encode())

    # config_toml: the repo's config, and one with every section.
    with open(os.path.join(REPO, "Config.toml"), "rb") as f:
        write("config_toml", "repo-config", f.read())
    write("config_toml", "all-sections", b"""[server]
listen = "127.0.0.1:9443"
path = "/ws"

[tls]
cert = "/etc/wsgate/server.crt"
key = "server.key"

[auth]
issuer = "wso2"
audience = "ballerina"
algorithms = ["ES256", "ES384"]
public_key = "certs/jwt-es256-public.pem"
scope_claim = "scope"
required_scopes = ["admin", "write"]
leeway_secs = 30

[auth.forward_claims]
x-user = "sub"
x-scopes = "scope"

[limits]
max_connections = 1000
max_connections_per_ip = 10
max_message_size = 1048576
max_frame_size = 65536
max_header_bytes = 16384

[timeouts]
tls_handshake = "5s"
header_read = "5s"
backend_connect = "2s 500ms"
close = "3s"
idle = "0s"
drain = "1m"

[admin]
enabled = true
listen = "[::1]:9100"

[browser]
id_query = "id"
token_query = "access_token"
token_protocol_prefix = "bearer."

[backends]
Backend_ABC = "ws://localhost:8081/backend/abc?x=1"
"Backend.v6" = "ws://[::1]:8082/"
""")

    # session_proxy: client frames are masked, backend frames are not.
    m = [0x37, 0xFA, 0x21, 0x3D]
    write("session_proxy", "masked-text",
          session(frame(1, b"Hello", mask=m) + close(1000, b"bye", mask=m),
                  frame(1, b"Hello") + close(1000)))
    write("session_proxy", "fragments-ping",
          session(frame(1, b"Hel", fin=False, mask=m) + frame(9, b"ping", mask=m)
                  + frame(0, b"lo", mask=m) + frame(2, bytes(300), mask=m),
                  frame(10, b"pong") + frame(2, b"\x00\x01\x02"), flags=0x00, chunk=7))
    write("session_proxy", "leftover-small-limits",
          session(frame(2, bytes(200), mask=m) + frame(1, b"x" * 20, mask=m),
                  frame(1, b"ok"), flags=0x0B, cl=5, bl=2, lim=(16, 4)))
    write("session_proxy", "invalid-utf8-text",
          session(frame(1, b"\xff\xfe", mask=m), frame(1, b"ok\xc3"), flags=0x03))
    # permessage-deflate in force (0x40 in byte 1): compressed frames, deflate's bytes for
    # "hello" (not UTF-8), whole and fragmented, both ways.
    deflated = bytes([0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00])
    write("session_proxy", "deflate",
          session(frame(1, deflated, mask=m, rsv1=True)
                  + frame(2, deflated[:3], fin=False, mask=m, rsv1=True)
                  + frame(0, deflated[3:], mask=m) + close(1000, mask=m),
                  frame(1, deflated, rsv1=True) + close(1000), chunk=0x40 | 5))
    write("session_proxy", "keepalive-stall",
          session(frame(1, b"a" * 60000, mask=m), frame(1, b"b" * 130),
                  flags=0x74, chunk=0x80 | 33, budget=100))

    # ws_handshake: byte 0 = delivery mode, then the server's response.
    write("ws_handshake", "101",
          b"\x00HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: @ACCEPT@\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
          + frame(1, b"first frame"))
    write("ws_handshake", "101-chunked",
          b"\x85HTTP/1.1 101 OK\r\nupgrade: WebSocket\r\nconnection: keep-alive, upgrade\r\n"
          b"sec-websocket-accept: @ACCEPT@\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
    write("ws_handshake", "404",
          b"\x00HTTP/1.1 404 Not Found\r\nContent-Length: 20\r\n\r\nunknown backend ID\r\n")


if __name__ == "__main__":
    main()
