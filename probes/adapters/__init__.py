"""One module per library whose private attributes the probes touch, and nothing else does:
each says what it relies on (PRIVATE) so that tests/unit/test_adapters.py fails naming the
attribute when an upgrade removes it; pyproject.toml caps that library below its next major."""
