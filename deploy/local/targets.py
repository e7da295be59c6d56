"""Loopback DNS and HTTP targets for the local demo (`make run`).

The local config (config/agent.local.yaml) measures only loopback, so the demo
needs something to answer there: a DNS server on 127.0.0.1:5353 that answers A
queries for *.sinyal.test with 127.0.0.1 (NXDOMAIN for any other name), and an
HTTP server on 127.0.0.1:8079 that serves a small page. Real protocol servers
(dnspython parses and builds the DNS messages), not mocks of the agent.

    python deploy/local/targets.py [--dns-port 5353] [--http-port 8079]
"""

from __future__ import annotations

import argparse
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

ZONE = "sinyal.test."
PAGE = (
    b"<!doctype html><title>Sinyal local target</title>"
    b"<p>This page is served on loopback for the Sinyal agent's HTTP probe.</p>\n"
) * 20


def dns_answer(wire: bytes) -> bytes | None:
    try:
        query = dns.message.from_wire(wire)
    except Exception:
        return None
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    if not query.question:
        response.set_rcode(dns.rcode.FORMERR)
        return response.to_wire()
    q = query.question[0]
    name = q.name.to_text().lower()
    if not (name == ZONE or name.endswith("." + ZONE)):
        response.set_rcode(dns.rcode.NXDOMAIN)
    elif q.rdtype == dns.rdatatype.A:
        response.answer.append(dns.rrset.from_text(q.name, 60, "IN", "A", "127.0.0.1"))
    return response.to_wire()


def serve_dns(host: str, port: int, stop: threading.Event) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, port))
        s.settimeout(0.5)
        while not stop.is_set():
            try:
                wire, peer = s.recvfrom(4096)
            except TimeoutError:
                continue
            answer = dns_answer(wire)
            if answer is not None:
                s.sendto(answer, peer)


class Handler(BaseHTTPRequestHandler):
    server_version = "sinyal-local-target/1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--dns-port", type=int, default=5353)
    ap.add_argument("--http-port", type=int, default=8079)
    args = ap.parse_args()
    if not args.host.startswith("127."):
        ap.error("the demo targets listen on loopback only")
    stop = threading.Event()
    httpd = ThreadingHTTPServer((args.host, args.http_port), Handler)
    threading.Thread(target=serve_dns, args=(args.host, args.dns_port, stop), daemon=True).start()
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def shutdown(*_: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    print(
        f"local targets: DNS {args.host}:{args.dns_port} (*.sinyal.test), "
        f"HTTP http://{args.host}:{args.http_port}/",
        flush=True,
    )
    stop.wait()
    httpd.shutdown()


if __name__ == "__main__":
    main()
