#!/usr/bin/env python3
"""Minimal sotalign client (stdlib only): start `sotalign serve --stdio`, initialize, status.

Usage: client.py [SOTALIGN_BINARY] [DATA_DIR]
"""
import json, subprocess, sys

binary = sys.argv[1] if len(sys.argv) > 1 else "sotalign"
data_dir = sys.argv[2] if len(sys.argv) > 2 else "./sotalign-data"
proc = subprocess.Popen([binary, "serve", "--stdio", "--data-dir", data_dir],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)

def send(msg):
    body = json.dumps(msg).encode("utf-8")
    proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    proc.stdin.flush()

def receive():
    """Read one frame: headers up to a blank line, then Content-Length bytes of JSON."""
    length = None
    while (line := proc.stdout.readline().strip()):
        name, _, value = line.decode("ascii").partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return json.loads(proc.stdout.read(length))

def call(id, method, params=None):
    send({"jsonrpc": "2.0", "id": id, "method": method, "params": params or {}})
    while "id" not in (msg := receive()) or msg["id"] != id:
        pass  # skip notifications such as $/progress
    if "error" in msg:
        raise RuntimeError(msg["error"])
    return msg["result"]

init = call(1, "initialize", {"processId": None, "capabilities": {}, "clientInfo": {"name": "client.py"}})
send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
print("server:", init["serverInfo"]["name"], init["serverInfo"]["version"])
status = call(2, "sotalign/status")
print("protocol", status["protocolVersion"], "counts", json.dumps(status["counts"], sort_keys=True))
send({"jsonrpc": "2.0", "id": 3, "method": "shutdown"})
receive()
send({"jsonrpc": "2.0", "method": "exit"})
sys.exit(proc.wait())
