"""The `race` probe: connect to a target as an RFC 8305 (Happy Eyeballs v2) client does, and say
which family won and what IPv6 cost that client.

AAAA and A are asked together, AAAA first; an AAAA answer starts the race at once, an A answer
first waits `resolution_delay` for the AAAA one, and a late answer joins the race (section 3).
Addresses alternate by family, IPv6 first (section 4). Attempts start `connection_attempt_delay`
apart, or as soon as the latest one failed; the first completed TCP connect wins and the others
are cancelled (section 5). When the target also has a tls or http2 probe, the winner's TLS
handshake follows, as a browser's would (section 6 leaves it after the race). One race is one
client over both families: a kind run once per target (`per_family` False), whose one result
is filed under the winner's family, with `RaceDetails`, and has no verdict.
Limits: TCP only (no QUIC in the race), and NAT64-synthesized AAAA are not raced (the question
is native IPv6 against IPv4).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Literal

from probes import kinds
from probes.base import (
    FAMILIES,
    ErrorKind,
    Family,
    Outcome,
    ProbeEnv,
    ProbeError,
    ProbeRequest,
    ProbeResult,
    Resolution,
    Resolves,
    Target,
    passed,
)
from probes.details import Details, TlsHandshake
from probes.errors import classify, error, in_phase
from probes.kinds import NOT, Compared, Cost, Kind, KindMetric, register
from probes.netutil import connect_seconds, connect_socket
from probes.tls import close, start_tls
from probes.trust import client_context

log = logging.getLogger(__name__)

RaceOutcome = Literal["connected", "failed", "cancelled", "not_started"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RaceAttempt:
    """One address of a Happy Eyeballs race, in the order the client would try them."""

    family: Family
    address: str
    started_seconds: float | None
    """When its connect began, after the race's first attempt; None when never started."""
    outcome: RaceOutcome
    """connected (the winner), failed (before a winner), cancelled (still connecting, or
    connected too late, when the race ended), not_started."""
    error: ProbeError | None = None
    """Why it failed (outcome failed only)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RaceDetails(Details):
    """The race: what an RFC 8305 client saw connecting to the target, who won and what IPv6
    cost it. Times are from the race's first connection attempt."""

    winner_family: Family | None
    """The family of the first completed TCP connect; None when nothing connected."""
    winner_address: str | None
    connect_seconds: float | None
    """From the first connection attempt to the winner's completed TCP handshake."""
    ipv6_penalty_seconds: float | None
    """0 when IPv6 won; when IPv4 won, `connect_seconds` less a direct IPv4 connect to the
    winning address right after (what broken or slow IPv6 cost); None when nothing won, the
    direct connect failed, or IPv6 was not raced (`--family ipv4`)."""
    resolution_seconds: float = 0.0
    """From the DNS queries to the first connection attempt (the resolution delay included)."""
    direct_ipv4_seconds: float | None = None
    """The direct IPv4 connect the penalty is measured against (IPv4 winners only)."""
    tls_seconds: float | None = None
    """The winner's TLS handshake, when the target also has a tls or http2 probe."""
    attempts: tuple[RaceAttempt, ...] = ()


def speaks_tls(target: Target) -> bool:
    """The target has a probe that shakes hands in TLS over TCP (its details say so): the
    race's winner then does too, as a browser's would."""
    return any(TlsHandshake in kinds.get(p).details for p in target.probes if p != KIND.name)


@dataclass(slots=True)
class _Try:
    """One address's attempt while the race runs (mutable; frozen into a RaceAttempt)."""

    family: Family
    address: str
    started: float | None = None
    outcome: RaceOutcome = "not_started"
    error: ProbeError | None = None
    connected_after: float | None = None
    """Its TCP handshake as the kernel timed it, when it connected."""
    sock: socket.socket | None = None

    def frozen(self) -> RaceAttempt:
        return RaceAttempt(
            family=self.family,
            address=self.address,
            started_seconds=self.started,
            outcome=self.outcome,
            error=self.error,
        )


class _Queue:
    """Addresses not tried yet, per family; `next` interleaves them, IPv6 first (section 4,
    First Address Family Count 1). Late answers join at the back of their family."""

    def __init__(self) -> None:
        self.by_family: dict[Family, list[_Try]] = {"ipv6": [], "ipv4": []}
        self._last: Family | None = None

    def __bool__(self) -> bool:
        return any(self.by_family.values())

    def add(self, tries: Sequence[_Try]) -> None:
        for t in tries:
            self.by_family[t.family].append(t)

    def next(self) -> _Try:
        order: tuple[Family, ...] = ("ipv4", "ipv6") if self._last == "ipv6" else FAMILIES[::-1]
        for family in order:
            if self.by_family[family]:
                self._last = family
                return self.by_family[family].pop(0)
        raise IndexError("no address left")

    def drain(self) -> list[_Try]:
        out = []
        while self:
            out.append(self.next())
        return out


def raced_addresses(res: Resolution, limit: int) -> tuple[str, ...]:
    """What a client would dial of one answer: its addresses (not-native AAAA are already
    gone), none when DNS64 made them up, at most `limit`."""
    if res.nat64_synthesized:
        return ()
    return res.addresses[:limit]


async def probe(req: ProbeRequest) -> Outcome:
    """One race against the target's name over `req.families` (those the target allows),
    resolved with `req.env.resolver`; never raises for the network (the handler is the crash
    boundary and the backstop deadline)."""
    if req.env.resolver is None:
        return Outcome(
            success=False, error=error(ErrorKind.CLIENT_CONFIG, "no resolver to race with")
        )
    return await _Race(req.target, req.env.resolver, req.env, req.families).run()


class _Race:
    def __init__(
        self,
        target: Target,
        resolver: Resolves,
        env: ProbeEnv,
        families: Sequence[Family],
    ) -> None:
        self.target = target
        self.resolver = resolver
        self.env = env
        self.clock = env.clock
        self.families = [f for f in ("ipv6", "ipv4") if f in families and f in target.families]
        self.queue = _Queue()
        self.order: list[_Try] = []
        """Attempts in the order they started."""
        self.dns_errors: list[ProbeError] = []
        self.lookups: dict[asyncio.Future[Any], Family] = {}
        """Lookups still running (futures of Resolution)."""
        self.t0 = 0.0

    def _take(self, task: asyncio.Future[Any]) -> None:
        family = self.lookups.pop(task)
        try:
            res: Resolution = task.result()
        except Exception as exc:  # the resolver returns errors as data; this is a bug
            log.exception("resolution crashed in the race for %s", self.target.name)
            self.dns_errors.append(
                error(ErrorKind.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", "resolve")
            )
            return
        addresses = raced_addresses(res, self.target.max_addresses)
        if not addresses:
            rtype = "AAAA" if family == "ipv6" else "A"
            self.dns_errors.append(
                in_phase(
                    res.error
                    or error(ErrorKind.DNS_NO_ADDRESS, f"{self.target.host}: no {rtype} record"),
                    "resolve",
                )
            )
        self.queue.add([_Try(family=family, address=a) for a in addresses])

    async def _resolve(self) -> None:
        """Section 3: wait for the first answer with addresses; an A answer waits up to the
        resolution delay for the AAAA one. The slower lookup keeps running (`self.lookups`)."""
        for family in self.families:  # AAAA first
            lookup = asyncio.ensure_future(self.resolver.resolve(self.target.host, family))
            self.lookups[lookup] = family
        while self.lookups and not self.queue:
            done, _ = await asyncio.wait(set(self.lookups), return_when=asyncio.FIRST_COMPLETED)
            for answered in done:
                self._take(answered)
            aaaa_pending = "ipv6" in self.lookups.values()
            if self.queue.by_family["ipv4"] and not self.queue.by_family["ipv6"] and aaaa_pending:
                done, _ = await asyncio.wait(
                    set(self.lookups), timeout=self.target.race.resolution_delay
                )
                for answered in done:
                    self._take(answered)

    async def _connect(self, t: _Try) -> None:
        req = ProbeRequest(
            target=self.target,
            family=t.family,
            address=t.address,
            timeout=self.target.timeout,
            env=self.env,
        )
        begun = self.clock()
        sock = await connect_socket(req, nodelay=True)
        t.sock = sock
        t.connected_after = connect_seconds(sock, self.clock() - begun)

    async def run(self) -> Outcome:
        q_start = self.clock()
        try:
            await self._resolve()
            self.t0 = self.clock()
            deadline = self.t0 + self.target.timeout
            winner, timed_out = await self._attempts(deadline)
            if winner is not None:
                passed("connect")
            direct = tls = None
            err: ProbeError | None = None
            # IPv6 left out (--family ipv4): IPv4 wins by default, and IPv6 cost nothing to
            # measure, so no direct connect and no penalty (None, not a misleading 0)
            if winner is not None and winner.family == "ipv4" and "ipv6" in self.families:
                direct = await self._direct(winner.address, deadline)
            if winner is not None and speaks_tls(self.target):
                tls, err = await self._tls(winner, deadline)
        finally:
            await self._cleanup()
        attempts = [*self.order, *self.queue.drain()]
        connect = None
        penalty = None
        if winner is not None:
            assert winner.started is not None and winner.connected_after is not None
            connect = winner.started + winner.connected_after
            if winner.family == "ipv6":
                penalty = 0.0
            elif direct is not None:
                penalty = max(0.0, connect - direct)
        elif err is None:
            err = self._no_winner(timed_out)
        resolution = self.t0 - q_start if self.t0 else self.clock() - q_start
        timed = {"resolve": resolution, "connect": connect, "handshake": tls}
        return Outcome(
            success=err is None,
            phases={name: s for name, s in timed.items() if s is not None},
            error=err,
            details=RaceDetails(
                winner_family=winner.family if winner else None,
                winner_address=winner.address if winner else None,
                connect_seconds=connect,
                ipv6_penalty_seconds=penalty,
                attempts=tuple(t.frozen() for t in attempts),
                resolution_seconds=resolution,
                direct_ipv4_seconds=direct,
                tls_seconds=tls,
            ),
            # the latency of a usable connection, from the first attempt (resolution apart)
            duration=None if connect is None else connect + (tls or 0.0),
            # filed under the winner's family (none: the request's, the first selected)
            family=winner.family if winner else None,
            address=winner.address if winner else None,
        )

    async def _attempts(self, deadline: float) -> tuple[_Try | None, bool]:
        """Section 5. Returns (the winner or None, whether the deadline ended the race)."""
        running: dict[asyncio.Future[Any], _Try] = {}
        next_start = self.t0
        try:
            while True:
                now = self.clock()
                if now >= deadline:
                    return None, True
                if self.queue and (not running or now >= next_start):
                    t = self.queue.next()
                    t.started = now - self.t0
                    running[asyncio.ensure_future(self._connect(t))] = t
                    self.order.append(t)
                    next_start = now + self.target.race.connection_attempt_delay
                    continue
                if not running and not self.lookups:
                    return None, False  # every address failed
                wait = deadline - now
                if self.queue:
                    wait = min(wait, next_start - now)
                waiting: set[asyncio.Future[Any]] = {*running, *self.lookups}
                done, _ = await asyncio.wait(
                    waiting, timeout=max(0.0, wait), return_when=asyncio.FIRST_COMPLETED
                )
                connected: list[_Try] = []
                for finished in done:
                    if finished in self.lookups:
                        self._take(finished)
                        continue
                    t = running.pop(finished)
                    exc = finished.exception()
                    if exc is None:
                        connected.append(t)
                    else:
                        t.outcome = "failed"
                        t.error = in_phase(classify(exc), "connect")
                        next_start = self.clock()  # the next address need not wait
                if connected:
                    winner = min(connected, key=_connected_at)
                    winner.outcome = "connected"
                    return winner, False
        finally:
            for attempt, t in running.items():
                t.outcome = "cancelled"
                attempt.cancel()
            if running:
                await asyncio.wait(set(running))
                for attempt in running:  # a connect that failed as it was cancelled: retrieved
                    if not attempt.cancelled():
                        attempt.exception()

    async def _direct(self, address: str, deadline: float) -> float | None:
        """A plain IPv4 connect to the winning address: what the connect costs without the
        race, to subtract. None when it fails or the deadline leaves no time."""
        t = _Try(family="ipv4", address=address)
        try:
            async with asyncio.timeout(max(0.0, deadline - self.clock())):
                await self._connect(t)
        except OSError:  # TimeoutError included
            return None
        finally:
            if t.sock is not None:
                t.sock.close()
        return t.connected_after

    async def _tls(self, winner: _Try, deadline: float) -> tuple[float | None, ProbeError | None]:
        """The winner's TLS handshake, as the tls probe makes it: (seconds, or the error)."""
        assert winner.sock is not None
        spec = self.target.tls
        try:
            ctx = client_context(self.env.ssl_cafile, spec.alpn, spec)
        except (OSError, ssl.SSLError) as exc:
            return None, error(ErrorKind.CLIENT_CONFIG, f"TLS client setup: {exc}", "handshake")
        t1 = self.clock()
        budget = max(0.0, deadline - t1)
        try:
            async with asyncio.timeout(budget):
                conn = await start_tls(winner.sock, ctx, self.target.sni)
        except OSError as exc:  # ssl.SSLError and TimeoutError included
            winner.sock = None  # start_tls closed it
            found = classify(exc)
            if isinstance(exc, TimeoutError):
                return None, error(
                    ErrorKind.TIMEOUT,
                    f"winner's TLS handshake: no answer within {budget:.3g} s",
                    "handshake",
                )
            return None, ProbeError(
                kind=found.kind, message=f"winner's TLS: {found.message}", phase="handshake"
            )
        seconds = self.clock() - t1
        passed("handshake")
        winner.sock = None
        await close(conn)
        return seconds, None

    def _no_winner(self, timed_out: bool) -> ProbeError:
        if not self.order:
            return (
                self.dns_errors[0]
                if self.dns_errors
                else error(
                    ErrorKind.DNS_NO_ADDRESS, f"{self.target.host}: no address to race", "resolve"
                )
            )
        failed = [t for t in self.order if t.outcome == "failed"]
        which = ", ".join(f"{t.address} {t.error.kind if t.error else 'failed'}" for t in failed)
        if timed_out:
            return error(
                ErrorKind.TIMEOUT,
                f"no connection within {self.target.timeout:g} s"
                + (f" ({len(failed)} failed: {which})" if failed else ""),
                "connect",
            )
        first = failed[0].error if failed and failed[0].error else None
        return ProbeError(
            kind=first.kind if first else ErrorKind.SOCKET_ERROR,
            message=f"every address failed: {which}",
            phase="connect",
        )

    async def _cleanup(self) -> None:
        """Close what the race opened and stop lookups still running (a late AAAA)."""
        for lookup in self.lookups:
            lookup.cancel()
        if self.lookups:
            await asyncio.wait(set(self.lookups))
        self.lookups.clear()
        for t in self.order:
            if t.sock is not None:
                sock, t.sock = t.sock, None
                if t.outcome != "connected":
                    t.outcome = "cancelled"  # connected, but after the winner
                sock.close()


def _connected_at(t: _Try) -> float:
    return (t.started or 0.0) + (t.connected_after or 0.0)


def _race(r: ProbeResult) -> RaceDetails | None:
    return r.details if isinstance(r.details, RaceDetails) else None


def _per_target(name: str, help: str, field: str) -> KindMetric:
    """A gauge of the latest race's `field`, one series per target (none while it is None)."""
    value = lambda r: getattr(_race(r), field, None)  # noqa: E731
    return KindMetric(name=name, help=help, value=value, probe_label=False, family_label=False)


def _won(r: ProbeResult) -> float | None:
    """A race won counts once, under the winner's family (the result's)."""
    d = _race(r)
    return 1.0 if d is not None and d.winner_family is not None else None


KIND = register(
    Kind(
        name="race",
        probe=probe,
        summary="Happy Eyeballs (RFC 8305): one client races both families; who won, what "
        "IPv6 cost",
        details=(RaceDetails,),
        # One client over both families: no verdict, nothing compared between them.
        compared={
            RaceDetails: (
                *(
                    Compared[RaceDetails](f.name, attrgetter(f.name), NOT)
                    for f in dataclasses.fields(RaceDetails)
                    if f.name != "attempts"
                ),
                Compared[RaceDetails](
                    "attempts",
                    attrgetter("attempts"),
                    NOT,
                    covers=tuple(
                        f"attempts.{name}"
                        for name in (
                            "family",
                            "address",
                            "started_seconds",
                            "outcome",
                            "error.kind",
                            "error.message",
                            "error.phase",
                        )
                    ),
                ),
            )
        },
        phases=("connect", "handshake"),
        cost=Cost.APART,
        per_family=False,
        default=False,
        metrics=(
            KindMetric(
                name="dualstack_race_wins",
                help="Happy Eyeballs (RFC 8305) races won, by the family of the first "
                "completed connect.",
                value=_won,
                probe_label=False,
                type="counter",
            ),
            _per_target(
                "dualstack_race_connect_seconds",
                "The last race's time from its first connection attempt to the winner's connect.",
                "connect_seconds",
            ),
            _per_target(
                "dualstack_race_ipv6_penalty_seconds",
                "What IPv6 cost the last race: 0 when IPv6 won, else its connect time less a "
                "direct IPv4 connect.",
                "ipv6_penalty_seconds",
            ),
        ),
    )
)
