"""A Kubernetes API server for tests, as far as `GET /api/v1/nodes/NAME` goes: real TLS with a
self-signed certificate made by `openssl`, real HTTP, bearer tokens checked, inside a netns.

``serve(netns, directory, nodes)`` writes the certificate, a service-account directory
(`token`, `ca.crt`) and the Node objects into ``directory``, starts this file as a script in
the netns on 127.0.0.1, and yields a ``KubeApi``. Tests change a Node by ``set_node``; every
request is logged (method, path, Authorization header) and read back with ``requests()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "cbt-service-account-token"
FORBIDDEN_TOKEN = "cbt-token-without-rbac"


def make_certificate(directory: str, name: str) -> tuple[str, str]:
    """A self-signed certificate for IP 127.0.0.1; returns (cert, key) paths."""
    cert, key = os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", f"/CN={name}",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


class KubeApi:
    def __init__(self, directory: str, port: int) -> None:
        self.directory = directory
        self.port = port
        self.url = f"https://127.0.0.1:{port}"
        self.service_account_dir = os.path.join(directory, "serviceaccount")

    def set_node(self, name: str, spec: dict[str, Any]) -> None:
        nodes = _read_json(os.path.join(self.directory, "nodes.json"))
        nodes[name] = {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name}, "spec": spec}
        _write_json(os.path.join(self.directory, "nodes.json"), nodes)

    def use_token(self, token: str) -> None:
        with open(os.path.join(self.service_account_dir, "token"), "w", encoding="utf-8") as handle:
            handle.write(token + "\n")

    def use_ca(self, ca_file: str) -> None:
        with open(ca_file, encoding="utf-8") as src, \
                open(os.path.join(self.service_account_dir, "ca.crt"), "w", encoding="utf-8") as dst:
            dst.write(src.read())

    def requests(self) -> list[dict[str, str]]:
        path = os.path.join(self.directory, "requests.log")
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _write_json(path: str, value: Any) -> None:
    with open(path + ".new", "w", encoding="utf-8") as handle:
        json.dump(value, handle)
    os.rename(path + ".new", path)


@contextmanager
def serve(netns: str, directory: str, nodes: dict[str, dict[str, Any]]) -> Iterator[KubeApi]:
    cert, key = make_certificate(directory, "kube-apiserver")
    os.makedirs(os.path.join(directory, "serviceaccount"))
    _write_json(os.path.join(directory, "nodes.json"), {})
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, os.path.abspath(__file__),
                             directory, cert, key], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the port, once listening
        if not line.strip().isdigit():
            raise RuntimeError(f"the test API server did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
        api = KubeApi(directory, int(line))
        api.use_ca(cert)
        api.use_token(TOKEN)
        for name, spec in nodes.items():
            api.set_node(name, spec)
        yield api
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    directory = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        auth = self.headers.get("Authorization", "")
        with open(os.path.join(self.directory, "requests.log"), "a", encoding="utf-8") as log:
            log.write(json.dumps({"method": "GET", "path": self.path, "authorization": auth}) + "\n")
        prefix = "/api/v1/nodes/"
        if auth == f"Bearer {FORBIDDEN_TOKEN}":
            self._status(403, 'nodes is forbidden: User "system:serviceaccount:kube-system:x" cannot get resource')
        elif auth != f"Bearer {TOKEN}":
            self._status(401, "Unauthorized")
        elif not self.path.startswith(prefix):
            self._status(404, "the server could not find the requested resource")
        else:
            name = self.path[len(prefix):]
            node = _read_json(os.path.join(self.directory, "nodes.json")).get(name)
            if node is None:
                self._status(404, f'nodes "{name}" not found')
            else:
                self._send(200, node)

    def _status(self, code: int, message: str) -> None:
        self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code})

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass


def _main(directory: str, cert: str, key: str) -> None:
    import ssl
    _Handler.directory = directory
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    sys.stdout.write(f"{server.server_address[1]}\n")
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    _main(*sys.argv[1:4])

