"""dualstack-monitor: is an endpoint as good over IPv6 as over IPv4, from here?"""

__version__ = "0.1.0"
