"""A real WebSocket echo server (PyPI websockets) for the gateway's tests.

Every handshake that reaches it is appended to LOG as one JSON line (path
and headers), so a test can show what never arrived. Paths: `.../refuse`
answers 403 instead of switching; `.../silent` switches and never sends;
`.../flood/N` sends N KiB at once after the switch, then echoes; anything
else echoes every message back as it came (text or binary).

usage: echo.py PORT LOG
"""
import asyncio
import json
import sys

from websockets.asyncio.server import serve

port, log_path = int(sys.argv[1]), sys.argv[2]


def record(request):
    with open(log_path, "a") as f:
        f.write(json.dumps({"path": request.path, "headers": dict(request.headers)}) + "\n")


async def process_request(connection, request):
    record(request)
    if request.path.endswith("/refuse"):
        return connection.respond(403, "not here\n")
    return None


async def handler(ws):
    path = ws.request.path
    if path.endswith("/silent"):
        await asyncio.sleep(3600)
        return
    if "/flood/" in path:
        kib = int(path.rsplit("/", 1)[1])
        for _ in range(kib // 64):
            await ws.send(b"x" * 65536)
    async for message in ws:
        await ws.send(message)


async def main():
    async with serve(
        handler,
        "127.0.0.1",
        port,
        process_request=process_request,
        max_size=None,
        ping_interval=None,
        compression=None,
    ):
        print("serving", flush=True)
        await asyncio.sleep(300)


asyncio.run(main())
