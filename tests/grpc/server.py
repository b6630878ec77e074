"""A real gRPC server (grpcio, cleartext h2) for the gateway's gRPC tests.

Service `test.Echo`, raw bytes in and out (no generated code):
Unary (echoes), Count (server streaming: the request is a number n, n
replies), Join (client streaming: the requests joined), Chat (bidi: each
request echoed), Slow (sleeps 3 s), Die (two replies, then the process
exits: an upstream that dies mid-stream). Every call's method and metadata
is appended to LOG as one JSON line, so a test can show what reached it.

usage: server.py PORT LOG
"""
import json
import os
import sys
import time
from concurrent import futures

import grpc

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
server.add_insecure_port(f"127.0.0.1:{port}")
server.start()
print("serving", flush=True)
server.wait_for_termination(timeout=120)
