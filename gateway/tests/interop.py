"""Third-party peers for the interop test: Python's `websockets` as client and server.

server [CERT KEY]: an echo server on 127.0.0.1:0 at any path (over TLS with CERT and KEY,
OpenSSL's, when given); prints its port, then serves.
client URL CA ID TOKEN [CIPHER]: connects through the gateway over TLS (OpenSSL, through
Python's ssl; with CIPHER, TLS 1.2 only and that OpenSSL cipher), prints the extensions
negotiated (permessage-deflate, both ends' default), checks text and binary round trips
(one larger than a TLS record), closes with 1000, prints what it saw.
"""
import asyncio
import ssl
import sys

import websockets


async def serve(cert=None, key=None):
    async def echo(ws, *args):
        async for message in ws:
            await ws.send(message)

    tls = None
    if cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
    async with websockets.serve(echo, "127.0.0.1", 0, ssl=tls) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


async def client(url, ca, backend, token, cipher=None):
    ctx = ssl.create_default_context(cafile=ca)
    if cipher:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(cipher)
    headers = {"ID": backend, "Authorization": f"Bearer {token}"}
    try:
        connect = websockets.connect(url, ssl=ctx, additional_headers=headers)
    except TypeError:
        connect = websockets.connect(url, ssl=ctx, extra_headers=headers)
    async with connect as ws:
        tls = ws.transport.get_extra_info("ssl_object")
        print(f"tls {tls.version()} {tls.cipher()[0]}")
        # Both ends offer and accept permessage-deflate by default, so the messages
        # below cross the gateway compressed, each in the context of those before it.
        response = getattr(ws, "response", None)
        headers = response.headers if response else ws.response_headers
        print(f"extensions {headers.get('Sec-WebSocket-Extensions')}")
        await ws.send("hello from python")
        assert await ws.recv() == "hello from python"
        for i in range(20):
            text = f"message {i}: " + "grüße, " * 50
            await ws.send(text)
            assert await ws.recv() == text
        print("text ok")
        await ws.send(bytes(range(256)) * 4)
        assert await ws.recv() == bytes(range(256)) * 4
        big = bytes(range(251)) * 400  # 100 KB: several records each way
        await ws.send(big)
        assert await ws.recv() == big
        print("binary ok")
        await ws.close(1000, "done")
        print(f"close {ws.close_code}")


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(serve(*sys.argv[2:4]))
    else:
        asyncio.run(client(*sys.argv[2:7]))
