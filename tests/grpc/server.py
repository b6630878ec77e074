"""A real gRPC server (grpcio, cleartext h2) for the gateway's gRPC tests.

Service `test.Echo`, raw bytes in and out (no generated code):
Unary (echoes), Count (server streaming: the request is a number n, n
replies), Join (client streaming: the requests joined), Chat (bidi: each
request echoed), Slow (sleeps 3 s), Die (two replies, then the process
exits: an upstream that dies mid-stream). Every call's method and metadata
is appended to LOG as one JSON line, so a test can show what reached it.
It also serves the standard gRPC health service (PyPI
grpcio-health-checking): `test.Echo` and the whole server are SERVING,
or NOT_SERVING while a file LOG.down exists.

usage: server.py PORT LOG [CERT KEY]   (with CERT and KEY: over TLS)
"""
import json
import os
import sys
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

port, log_path = int(sys.argv[1]), sys.argv[2]


def record(method, context):
    meta = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
    with open(log_path, "a") as f:
        f.write(json.dumps({"method": method, "metadata": meta}) + "\n")


def unary(req, context):
    record("Unary", context)
    return b"echo:" + req


def count(req, context):
    record("Count", context)
    for i in range(int(req.decode())):
        yield str(i).encode()


def join(reqs, context):
    record("Join", context)
    return b"+".join(reqs)


def chat(reqs, context):
    record("Chat", context)
    for r in reqs:
        yield b"re:" + r


def slow(req, context):
    record("Slow", context)
    time.sleep(3)
    return b"late"


def die(req, context):
    record("Die", context)
    yield b"one"
    yield b"two"
    time.sleep(0.2)
    os._exit(1)


handlers = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "Count": grpc.unary_stream_rpc_method_handler(count),
    "Join": grpc.stream_unary_rpc_method_handler(join),
    "Chat": grpc.stream_stream_rpc_method_handler(chat),
    "Slow": grpc.unary_unary_rpc_method_handler(slow),
    "Die": grpc.unary_stream_rpc_method_handler(die),
}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
checks = health.HealthServicer()
health_pb2_grpc.add_HealthServicer_to_server(checks, server)


def follow_down_file():
    while True:
        status = (
            health_pb2.HealthCheckResponse.NOT_SERVING
            if os.path.exists(log_path + ".down")
            else health_pb2.HealthCheckResponse.SERVING
        )
        for service in ("", "test.Echo"):
            checks.set(service, status)
        time.sleep(0.05)


threading.Thread(target=follow_down_file, daemon=True).start()
if len(sys.argv) > 4:
    with open(sys.argv[3], "rb") as c, open(sys.argv[4], "rb") as k:
        creds = grpc.ssl_server_credentials([(k.read(), c.read())])
    server.add_secure_port(f"127.0.0.1:{port}", creds)
else:
    server.add_insecure_port(f"127.0.0.1:{port}")
server.start()
print("serving", flush=True)
server.wait_for_termination(timeout=120)
