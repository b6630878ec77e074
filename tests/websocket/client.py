"""A real WebSocket client (PyPI websockets, over TLS) for the gateway's tests.

usage: client.py PORT CA_PEM PATH HEADERS_JSON SCENARIO
SCENARIO:
  echo   text, binary, a fragmented message, a 512 KiB message and a ping,
         each echoed, then a close with code 4000
  big    one message of 2,000 bytes (over a 1 KiB limit), then waits
  wait   sends nothing and waits for the gateway to close
Prints one JSON line: what came back, and the close code received.
"""
import json
import ssl
import sys
import time

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

port, ca, path, headers, scenario = (
    int(sys.argv[1]),
    sys.argv[2],
    sys.argv[3],
    json.loads(sys.argv[4]),
    sys.argv[5],
)
ctx = ssl.create_default_context(cafile=ca)
out = {"echoed": [], "close_code": None, "status": 101}
started = time.monotonic()
try:
    with connect(
        f"wss://localhost:{port}{path}",
        ssl=ctx,
        additional_headers=headers,
        max_size=None,
        compression=None,
        open_timeout=10,
        ping_interval=None,
        close_timeout=5,
    ) as ws:
        try:
            if scenario == "echo":
                ws.send("hello")
                out["echoed"].append(ws.recv(timeout=5))
                ws.send(b"\x00\x01\xff")
                out["echoed"].append(ws.recv(timeout=5).hex())
                ws.send(["frag", "men", "ted"])
                out["echoed"].append(ws.recv(timeout=5))
                big = bytes(range(256)) * 2048
                ws.send(big)
                out["echoed"].append("big ok" if ws.recv(timeout=10) == big else "big differs")
                out["echoed"].append("pong" if ws.ping().wait(5) else "no pong")
                ws.close(4000, "bye")
            elif scenario == "big":
                ws.send(b"y" * 2000)
                ws.recv(timeout=10)
            elif scenario == "wait":
                ws.recv(timeout=20)
        except ConnectionClosed:
            pass
        except TimeoutError:
            out["timeout"] = True
        rcvd = ws.protocol.close_rcvd
        out["close_code"] = rcvd.code if rcvd else None
except InvalidStatus as e:
    out["status"] = e.response.status_code
except Exception as e:
    out["error"] = repr(e)
out["seconds"] = round(time.monotonic() - started, 2)
print(json.dumps(out))
