"""A webhook sink for Alertmanager: the `webhook-sink` service of docker-compose.yml.

The receivers of configs/alertmanager.yml (pager, ticket, deadman) POST to /pager, /ticket and
/deadman here. Each notification is printed as one JSON line on stdout (receiver, status,
groupKey, alert names and count): `docker compose logs -f webhook-sink`. GET / returns, per
receiver, the number of notifications and the distinct group keys seen; GET /healthz answers ok.
A stand-in so that notifications succeed in the stack: it pages nobody. Standard library only,
no state on disk; the tests run it as it is (tests/test_compose.py, tests/test_alerting_e2e.py).

    python webhook-sink.py --listen '[::]:9099'
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 4 * 1024 * 1024  # Alertmanager sends at most max_alerts alerts per notification


class Notifications:
    """What arrived, per receiver (the path without its slash)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: dict[str, int] = {}
        self._groups: dict[str, list[str]] = {}

    def add(self, receiver: str, group_key: str) -> None:
        with self._lock:
            self._count[receiver] = self._count.get(receiver, 0) + 1
            keys = self._groups.setdefault(receiver, [])
            if group_key not in keys:
                keys.append(group_key)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                r: {"notifications": n, "group_keys": list(self._groups.get(r, []))}
                for r, n in sorted(self._count.items())
            }


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"--listen {text!r}: use HOST:PORT, e.g. [::]:9099 or 127.0.0.1:0")
    return host.strip("[]") or "::", int(port)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, notes: Notifications) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.notes = notes
        super().__init__((host, port), Handler, bind_and_activate=False)
        if self.address_family == socket.AF_INET6:
            # [::] takes IPv4 clients too, whatever the host's bindv6only default.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.server_bind()
        self.server_activate()


class Handler(BaseHTTPRequestHandler):
    server: Server

    def _reply(self, status: int, body: dict[str, Any] | str) -> None:
        data = (json.dumps(body) if isinstance(body, dict) else body).encode() + b"\n"
        self.send_response(status)
        kind = "application/json" if isinstance(body, dict) else "text/plain"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, "ok")
        elif self.path == "/":
            self._reply(200, self.server.notes.summary())
        else:
            self._reply(404, "not found")

    def do_POST(self) -> None:
        receiver = self.path.strip("/") or "default"
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._reply(413, "body missing or too large")
            return
        try:
            doc = json.loads(self.rfile.read(length))
            group_key = str(doc["groupKey"])
            alerts = list(doc.get("alerts") or [])
        except (ValueError, KeyError, TypeError):
            self._reply(400, "not an Alertmanager webhook message")
            return
        self.server.notes.add(receiver, group_key)
        line = {
            "receiver": receiver,
            "status": doc.get("status"),
            "groupKey": group_key,
            "groupLabels": doc.get("groupLabels"),
            "alerts": len(alerts),
            "alertnames": sorted({str(a.get("labels", {}).get("alertname")) for a in alerts}),
        }
        print(json.dumps(line, sort_keys=True), flush=True)
        self._reply(200, "ok")

    def log_message(self, format: str, *args: Any) -> None:
        return  # one JSON line per notification is the log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--listen", default="[::]:9099", help="HOST:PORT (port 0: any free one)")
    args = parser.parse_args(argv)
    host, port = parse_listen(args.listen)
    server = Server(host, port, Notifications())
    bound = server.socket.getsockname()[1]
    print(json.dumps({"event": "listening", "port": bound}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
