"""The lab: real servers with known faults to probe, on loopback (`loopback`) or behind routers
in network namespaces (`routed`); never the internet."""
