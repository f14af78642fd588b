"""The lab's DNS server, counting the questions it answers: for tests of what is asked, and
how often (resolutions reused, NAT64 prefix discovery)."""

from __future__ import annotations

import time
from collections.abc import Callable

import dns.message
import dns.rdatatype

from monitor.lab.dnsserver import DnsServer
from probes.resolve import Resolver


class CountingServer:
    """Wraps a running DnsServer; `asked` lists (name, rdtype) in the order answered."""

    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.asked: list[tuple[str, str]] = []
        respond: Callable[[dns.message.Message], dns.message.Message] = server.zone_data.respond

        def counting(query: dns.message.Message) -> dns.message.Message:
            q = query.question[0]
            self.asked.append((q.name.to_text().rstrip("."), dns.rdatatype.to_text(q.rdtype)))
            return respond(query)

        server.zone_data.respond = counting  # type: ignore[method-assign]

    def resolver(self) -> Resolver:
        """A resolver asking only this server (IPv4 loopback), 2 s per attempt."""
        return Resolver(["127.0.0.1"], self.server.port, timeout=2.0, clock=time.perf_counter)
