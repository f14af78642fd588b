"""Probes: one module per protocol, each `async def probe(req) -> Outcome`.

`probes.base` holds the shared types, `probes.handler` the table of kinds and the handler that
runs one (target, kind, family); importing this package loads no protocol library.
"""
