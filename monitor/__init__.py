"""dualstack-monitor: is an endpoint as good over IPv6 as over IPv4, from here?"""

from probes.base import VERSION

__version__ = VERSION
