"""moto's server over real HTTP on loopback, for the AWS tests."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server


class SerialMotoServer(ThreadedMotoServer):
    """moto's server answering one request at a time.

    Real DynamoDB applies conditional writes to an item atomically; moto's threaded server
    does not lock its in-memory tables, so two racing ``update_item`` calls can both pass the
    same condition there. Serving requests one at a time restores DynamoDB's semantics, which
    is what the race tests must check our code against.
    """

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            self._ip_address, self._port, app, False, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


def reset_moto(endpoint: str) -> None:
    """Empty every moto backend. moto keeps its state per process, not per server, so a test
    module must not see what an earlier module's server left behind."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


class CheckIpServer:
    """AWS's checkip service on loopback: answers each caller's own address, so a client
    learns the address its security-group rule must admit without leaving this machine."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f"{self.client_address[0]}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self._server.server_address[1]}/"
        import threading

        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def point_at_fresh_moto_account(
    endpoint: str, monkeypatch: pytest.MonkeyPatch, home: Path, region: str = "us-east-1"
) -> None:
    """Empty moto's account and point every meadowrun client of this test at it (test
    credentials, the region, a private ``MEADOWRUN_HOME``, no profile)."""
    reset_moto(endpoint)
    monkeypatch.setenv("MEADOWRUN_AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    monkeypatch.setenv("MEADOWRUN_HOME", str(home))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
