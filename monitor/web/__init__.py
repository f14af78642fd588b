"""The HTTP side of `probe serve`: server, status page, web config (TLS and basic auth)."""
