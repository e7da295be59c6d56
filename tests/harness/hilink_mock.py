"""A local HTTP server that speaks the Huawei HiLink web API as E3372-class devices do.

GET /api/webserver/SesTokInfo hands out a session cookie and a token; every other API path
wants both (Cookie: SessionID=..., header __RequestVerificationToken) and answers
<error><code>125002</code></error> for an unknown session and 125003 for a wrong token.
Answers are XML with the values' units in the text ("-97dBm"). `reboot()` forgets every
session, and the next `down_requests` requests get their connection closed without an
answer (the device is still booting). `login_required` answers 100003 (no rights).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _xml(root: str, values: dict[str, str]) -> bytes:
    inner = "".join(f"<{k}>{v}</{k}>" for k, v in values.items())
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>{inner}</{root}>'.encode()


class HiLinkDevice:
    def __init__(self) -> None:
        self.sessions: dict[str, str] = {}  # session id -> token
        self.lock = threading.Lock()
        self.down_requests = 0
        self.login_required = False
        self.handshakes = 0
        self.requests: list[str] = []
        self.signal = {
            "pci": "262",
            "sc": "",
            "cell_id": "27440068",
            "rssi": "-69dBm",
            "rsrp": "-97dBm",
            "rsrq": "-10.0dB",
            "sinr": "9dB",
            "rscp": "",
            "ecio": "",
            "mode": "7",
            "band": "3",
            "earfcn": "DL:1850 UL:19850",
        }
        self.status = {
            "ConnectionStatus": "901",
            "SignalIcon": "4",
            "maxsignal": "5",
            "CurrentNetworkType": "19",
            "CurrentNetworkTypeEx": "101",
            "ServiceStatus": "2",
            "SimStatus": "1",
            "RoamingStatus": "0",
        }
        self.plmn = {
            "State": "0",
            "FullName": "TELKOMSEL",
            "ShortName": "TSEL",
            "Numeric": "51010",
            "Rat": "7",
        }

    def reboot(self, down_requests: int = 1) -> None:
        with self.lock:
            self.sessions.clear()
            self.down_requests = down_requests

    def answer(self, path: str, cookie: str | None, token: str | None) -> bytes | None:
        """The body to send, or None to drop the connection."""
        with self.lock:
            self.requests.append(path)
            if self.down_requests > 0:
                self.down_requests -= 1
                return None
            if path == "/api/webserver/SesTokInfo":
                self.handshakes += 1
                sid, tok = secrets.token_hex(16), secrets.token_hex(16)
                self.sessions[sid] = tok
                return _xml("response", {"SesInfo": f"SessionID={sid}", "TokInfo": tok})
            sid = (cookie or "").removeprefix("SessionID=").split(";")[0]
            if sid not in self.sessions:
                return _xml("error", {"code": "125002", "message": ""})
            if token != self.sessions[sid]:
                return _xml("error", {"code": "125003", "message": ""})
            if self.login_required:
                return _xml("error", {"code": "100003", "message": ""})
            pages = {
                "/api/device/signal": self.signal,
                "/api/monitoring/status": self.status,
                "/api/net/current-plmn": self.plmn,
            }
            page = pages.get(path)
            if page is None:
                return _xml("error", {"code": "100002", "message": ""})
            return _xml("response", page)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        body = self.server.device.answer(
            self.path, self.headers.get("Cookie"), self.headers.get("__RequestVerificationToken")
        )
        if body is None:
            self.close_connection = True
            self.connection.close()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/xml; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    device: HiLinkDevice


@contextmanager
def hilink_device() -> Iterator[tuple[HiLinkDevice, str]]:
    """A HiLink device on 127.0.0.1: (its state, its base URL)."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.device = HiLinkDevice()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.device, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
