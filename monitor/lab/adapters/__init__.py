"""The lab's uses of a library's internals, one module per library (hypercorn), each listing
what it relies on (PRIVATE) for tests/unit/test_adapters.py."""
