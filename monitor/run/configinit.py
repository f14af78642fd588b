"""`probe config init [FILE]`: a commented starting configuration, so that nobody has to dig
`default.yml` out of site-packages. It sends nothing; an existing FILE needs `--force`.

Every commented example is valid YAML once its leading `# ` is removed (a test checks it).
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import sys
from pathlib import Path
from typing import IO

from monitor.config import NAME_RE, ConfigError

TEMPLATE = """\
# dualstack-monitor configuration, written by `probe config init`.
# Every key is described in docs/configuration.md. Check this file (sends nothing):
#   probe targets --config {path}
# then probe once, or all the time:
#   probe run --config {path}
#   probe serve --config {path}

# This vantage point's name in reports and metrics (default: this host's short name).
vantage: {vantage}
interval: 30s   # between two probes of a target by `probe serve` (`probe run` probes once)
timeout: 5s     # each probe's deadline; a bare number is seconds

# AWS endpoints that AWS documents as dual-stack (docs/catalog.md quotes the evidence):
# s3.dualstack.<region>.amazonaws.com, ec2.<region>.api.aws, sts.<region>.api.aws and the
# global iam.global.api.aws. Also offered: cloudfront, route53, s3-control (their APIs).
catalog:
  services: [s3, ec2, sts, iam]
  regions: [us-east-1, ap-northeast-1]

# Your own endpoints. Remove `targets: []` and the `# ` before the lines you want.
targets: []
# targets:
#   # A load balancer (ALB or NLB) whose IP address type is dualstack. Use its `dualstack.`
#   # name, the one AWS says to point AAAA records at: probed by the name without the
#   # prefix, its IPv6 may well be ipv6_missing whatever the load balancer does.
#   - name: my-alb
#     service: alb
#     region: ap-northeast-1
#     host: dualstack.my-lb-123.ap-northeast-1.elb.amazonaws.com
#     probes: [dns, tcp, tls, http2]
#     http: {{path: /, expect_status: [200, 301, 403]}}
#   # A CloudFront distribution with IPv6 on and HTTP versions "HTTP/2 and HTTP/3": the
#   # only AWS endpoints documented to serve HTTP/3.
#   - name: my-distribution
#     service: cloudfront
#     region: global
#     host: d111111abcdef8.cloudfront.net
#     probes: [dns, tcp, tls, http2, http3]

# The name servers of Route 53 hosted zones: each becomes a target route53-ns-<zone>-<n>
# whose dns probe asks it for the zone's SOA over IPv4 and over IPv6.
# route53:
#   zones: [example.com]
"""


def vantage_name(hostname: str | None = None) -> str:
    """This host's short name as a vantage name (letters, digits, . _ : -), or my-vantage."""
    short = (hostname if hostname is not None else socket.gethostname()).split(".")[0]
    name = re.sub(r"[^A-Za-z0-9_:-]", "-", short)[:63]
    return name if re.fullmatch(NAME_RE, name) else "my-vantage"


def render(path: str = "FILE", hostname: str | None = None) -> str:
    # JSON strings are YAML strings: a host named 1234 stays a string, not a number.
    return TEMPLATE.format(vantage=json.dumps(vantage_name(hostname)), path=shlex.quote(path))


def init_config(file: str | None, *, force: bool, out: IO[str]) -> int:
    """Print the starting configuration, or write it to `file`. Raises ConfigError (exit 2)
    when `file` exists and `force` is not given, or cannot be written."""
    if file is None:
        out.write(render())
        return 0
    path = Path(file)
    try:
        with path.open("w" if force else "x", encoding="utf-8") as f:
            f.write(render(file))
    except FileExistsError:
        raise ConfigError(f"{file}: already exists; --force overwrites it") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot write: {exc.strerror}") from None
    print(
        f"wrote {file}; check it with: probe targets --config {shlex.quote(file)}", file=sys.stderr
    )
    return 0
