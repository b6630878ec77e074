"""A real gRPC client (grpcio over TLS) for the gateway's gRPC tests.

usage: client.py PORT CA_PEM CALL [METADATA_JSON] [TIMEOUT_S]
CALL: unary, count, join, chat, slow, die. Prints one JSON line: the
status code's name, its details, and the replies.
"""
import json
import sys

import grpc

port, ca_path, call = int(sys.argv[1]), sys.argv[2], sys.argv[3]
metadata = list(json.loads(sys.argv[4]).items()) if len(sys.argv) > 4 else []
timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0

with open(ca_path, "rb") as f:
    creds = grpc.ssl_channel_credentials(root_certificates=f.read())
channel = grpc.secure_channel(
    f"localhost:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")]
)
m = lambda name: f"/test.Echo/{name}"
replies = []
code, details = "OK", ""
try:
    if call == "unary":
        replies = [channel.unary_unary(m("Unary"))(b"hi", metadata=metadata, timeout=timeout)]
    elif call == "count":
        replies = list(channel.unary_stream(m("Count"))(b"5", metadata=metadata, timeout=timeout))
    elif call == "join":
        replies = [channel.stream_unary(m("Join"))(iter([b"a", b"b", b"c"]), metadata=metadata, timeout=timeout)]
    elif call == "chat":
        replies = list(channel.stream_stream(m("Chat"))(iter([b"x", b"y"]), metadata=metadata, timeout=timeout))
    elif call == "slow":
        replies = [channel.unary_unary(m("Slow"))(b"", metadata=metadata, timeout=timeout)]
    elif call == "die":
        for r in channel.unary_stream(m("Die"))(b"", metadata=metadata, timeout=timeout):
            replies.append(r)
except grpc.RpcError as e:
    code, details = e.code().name, e.details() or ""
print(json.dumps({"code": code, "details": details, "replies": [r.decode() for r in replies]}))
