"""DNS resolution time and response code, per resolver and name, with dnspython.

One query per (uplink, resolver, name) with recursion desired, over UDP with
a TCP retry when the answer is truncated. resolve_ms runs from sending the
query to the answer (including a TCP retry). A timeout is a record with
error=timeout and no rcode; a resolver host that answers with ICMP port
unreachable (nothing listening) is connection_refused at once; an answer with
a bad rcode is a record with that rcode and ok=0.
"""

from __future__ import annotations

import asyncio
import socket
import time

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.inet
import dns.message
import dns.rcode
import dns.rdatatype

# dnspython imports the rdata classes when it parses the first answer; importing them here
# keeps that out of the first measurement's resolve_ms.
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA

from agent.config import DnsProbeConfig, Resolver, Uplink
from agent.contract.record import ErrorCode, FieldValue, Record
from agent.netutil import SourceUnavailable, error_code_for, uplink_source
from agent.probes.base import ProbeEnv, Stamp, make_record

_BACKEND = dns.asyncbackend.get_backend("asyncio")

_RCODE_ERRORS = {
    dns.rcode.NXDOMAIN: ErrorCode.DNS_NXDOMAIN,
    dns.rcode.SERVFAIL: ErrorCode.DNS_SERVFAIL,
    dns.rcode.REFUSED: ErrorCode.DNS_REFUSED,
}


class DnsProbe:
    kind = "dns"
    exclusive = False

    def __init__(self, cfg: DnsProbeConfig, env: ProbeEnv) -> None:
        self.cfg = cfg
        self.env = env
        self.interval_s = cfg.interval_s
        self.station = env.config.station.id

    @classmethod
    def from_env(cls, env: ProbeEnv) -> DnsProbe | None:
        cfg = env.config.probes.dns
        return cls(cfg, env) if cfg is not None and cfg.enabled else None

    async def run(self) -> list[Record]:
        jobs = [
            self.measure(u, r, n)
            for u in self.env.config.uplinks
            for r in self.cfg.resolvers
            for n in self.cfg.names
        ]
        return list(await asyncio.gather(*jobs))

    async def measure(self, uplink: Uplink, resolver: Resolver, name: str) -> Record:
        stamp = Stamp()
        tags = {"resolver": resolver.name, "qname": name, "qtype": self.cfg.qtype}
        fields: dict[str, FieldValue | None] = {"ok": 0}
        error: ErrorCode | None
        try:
            source = uplink_source(uplink)
            query = dns.message.make_query(name, dns.rdatatype.from_text(self.cfg.qtype))
            # A connected UDP socket (dnspython's own is not): an ICMP port unreachable from
            # a resolver whose server is down then ends the query at once as ECONNREFUSED,
            # as with the system resolver, instead of waiting out the timeout.
            udp_sock = await _BACKEND.make_socket(  # type: ignore[no-untyped-call]
                dns.inet.af_for_address(resolver.address),
                socket.SOCK_DGRAM,
                0,
                (source, 0) if source is not None else None,
                (resolver.address, resolver.port),
            )
            async with udp_sock:
                t0 = time.monotonic()
                response, _tcp = await dns.asyncquery.udp_with_fallback(
                    query,
                    resolver.address,
                    timeout=self.cfg.timeout_s,
                    port=resolver.port,
                    source=source,
                    udp_sock=udp_sock,
                )
                elapsed_ms = (time.monotonic() - t0) * 1000
        except SourceUnavailable:
            error = ErrorCode.SOURCE_UNAVAILABLE
        except dns.exception.Timeout:
            error = ErrorCode.TIMEOUT
        except (dns.exception.FormError, dns.message.BadTSIG, dns.exception.SyntaxError):
            error = ErrorCode.PROTOCOL_ERROR
        except OSError as exc:
            error = error_code_for(exc) or ErrorCode.NETWORK_UNREACHABLE
        except dns.exception.DNSException:
            error = ErrorCode.PROTOCOL_ERROR
        else:
            rcode = response.rcode()
            rdtype = dns.rdatatype.from_text(self.cfg.qtype)
            answers = sum(len(rrset) for rrset in response.answer if rrset.rdtype == rdtype)
            fields.update(resolve_ms=round(elapsed_ms, 3), rcode=int(rcode), answers=answers)
            if rcode != dns.rcode.NOERROR:
                error = _RCODE_ERRORS.get(rcode, ErrorCode.DNS_ERROR)
            elif answers == 0:
                error = ErrorCode.DNS_NO_ANSWER
            else:
                error = None
                fields["ok"] = 1
        return make_record(self.kind, stamp, self.station, uplink, tags, fields, error)
