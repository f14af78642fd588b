"""The HTTP server's uses of private library attributes, one module per library (aiohttp,
asyncio), each listing what it relies on (PRIVATE) for tests/unit/test_adapters.py."""
