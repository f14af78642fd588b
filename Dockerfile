# syntax=docker/dockerfile:1
# The vantage point: `probe serve` exporting Prometheus metrics on :9851 (docs/stack.md).
#
#   docker build -t dualstack-monitor:0.2.0 .
#   docker run -d --network host -v "$PWD/dualstack.yml:/etc/dualstack/vantage.yml:ro" \
#       dualstack-monitor:0.2.0 serve --config /etc/dualstack/vantage.yml --listen 127.0.0.1:9851
#
# The host's network, because Docker's default bridge has no IPv6: there every IPv6 probe is
# `skipped` (no route). Then listen on loopback, not on every address of the host. The
# README's "One container" says more; docker-compose.yml builds dual-stack networks instead.
#
# ICMP: as a non-root user (this image's), the icmp probe opens unprivileged ICMP "ping"
# sockets, which the kernel allows to the groups in net.ipv4.ping_group_range. Docker sets it to
# "0 2147483647" in every container with a network namespace of its own, and docker-compose.yml
# sets it explicitly. CAP_NET_RAW (compose's cap_add) is the one capability a vantage can use,
# and only when it runs as root (`user: "0"`): then the probe falls back to raw ICMP sockets if
# the sysctl is narrower. No other probe needs any privilege (plain TCP and UDP sockets).
#
# The base image is pinned by tag. For reproducible builds pin it by digest too
# (--build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:...); no digest is written here
# because this file was written where no registry could be asked for one.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/dualstack
ENV PATH=/opt/dualstack/bin:$PATH
WORKDIR /src
# What `pip install .` builds from (pyproject.toml: packages monitor, probes and monitor.configs
# from configs/; the readme is part of the metadata). .dockerignore keeps the rest out.
COPY pyproject.toml README.md ./
COPY monitor/ monitor/
COPY probes/ probes/
COPY configs/ configs/
# The README's install step, into the virtual environment that the runtime stage copies.
# EXTRAS is empty for a vantage (no lab servers in it); compose's `lab` service builds its own
# image with EXTRAS=[lab], for `probe lab up` (hypercorn, trustme).
ARG EXTRAS=
RUN pip install ".${EXTRAS}"

# The runtime image's CA store (Debian's ca-certificates, part of the python slim images) is
# what tls, http2 and http3 trust, plus tls.ca_file (docs/probes.md#trust-stores).
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="dualstack-monitor" \
      org.opencontainers.image.description="IPv6-versus-IPv4 parity vantage point (probe serve)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/dualstack/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 dualstack \
    && useradd --system --uid 10001 --gid dualstack --no-create-home \
       --home-dir /var/lib/dualstack --shell /usr/sbin/nologin dualstack \
    && install -d -o dualstack -g dualstack -m 0755 /var/lib/dualstack /var/lib/dualstack/lab \
    && install -d -m 0755 /etc/dualstack
COPY --from=build /opt/dualstack /opt/dualstack
# A config that works without any mount: the shipped AWS catalog. Compose mounts its own.
COPY --from=build /src/configs/default.yml /etc/dualstack/vantage.yml
USER 10001:10001
WORKDIR /var/lib/dualstack
EXPOSE 9851
# Liveness, no curl needed: /healthz over HTTPS, then over plain HTTP (whichever the web
# config serves; the certificate is not checked, it is this container's own server), on both
# loopbacks: `[::]:9851` may accept IPv6 only, `0.0.0.0:9851` IPv4 only. HEALTHCHECK_PORT
# follows a --listen on another port (vantage-host uses 9853). /healthz is never behind basic
# auth; a web config that requires client certificates fails this check.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, ssl, sys, urllib.request as u\nport = os.environ.get('HEALTHCHECK_PORT', '9851')\ntls = ssl.create_default_context()\ntls.check_hostname = False\ntls.verify_mode = ssl.CERT_NONE\nfor scheme, ctx in (('https', tls), ('http', None)):\n    for host in ('127.0.0.1', '[::1]'):\n        try:\n            u.urlopen(f'{scheme}://{host}:{port}/healthz', timeout=2, context=ctx)\n            sys.exit(0)\n        except OSError:\n            pass\nsys.exit(1)"]
ENTRYPOINT ["probe"]
CMD ["serve", "--config", "/etc/dualstack/vantage.yml", "--listen", "[::]:9851"]
