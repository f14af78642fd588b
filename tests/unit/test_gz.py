"""Gzip bodies from kept pieces (monitor/gz.py), with ISA-L's deflate and zlib's: pieces placed in
any order among fresh text decompress to that text, CRC-32 and length checked by the gzip
module and by zlib."""

from __future__ import annotations

import gzip
import random
import zlib
from types import ModuleType

import pytest
from isal import isal_zlib

from monitor import gz

MODULES = {"isal": isal_zlib, "zlib": zlib}


def series(i: int, lines: int) -> str:
    """Text that repeats itself a lot, as the exposition does: a piece that referred back into
    another would decompress wrong once the pieces are moved."""
    return "".join(
        f'dualstack_probe_success{{family="ipv4",probe="tcp",target="t-{i}",vantage="v"}} '
        f"{j % 2}.0\n"
        for j in range(lines)
    )


@pytest.mark.parametrize("name", MODULES)
def test_pieces_stand_anywhere_among_fresh_text(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gz, "deflate", MODULES[name])
    rnd = random.Random(7)
    texts = [series(i, rnd.randrange(1, 80)) for i in range(40)]
    deflater = gz.Deflater()
    pieces = [deflater.piece(t) for t in texts]
    order = list(range(len(texts)))
    rnd.shuffle(order)
    writer = gz.GzipWriter()
    expected: list[str] = []
    for k, i in enumerate(order):
        if k % 3 == 0:  # fresh text between some pieces: the compressor flushes around them
            fresh = series(1000 + k, 5)
            writer.write(fresh.encode())
            expected.append(fresh)
        writer.insert(pieces[i])
        expected.append(texts[i])
    writer.write(b"# EOF\n")
    expected.append("# EOF\n")
    body = writer.finish()
    plain = "".join(expected).encode()
    assert writer.size == len(plain)
    assert gzip.decompress(body) == plain  # checks the trailer's CRC-32 and length
    assert zlib.decompressobj(31).decompress(body) == plain
    assert len(body) < len(plain) // 5


@pytest.mark.parametrize("name", MODULES)
def test_a_body_of_text_alone_or_of_pieces_alone(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gz, "deflate", MODULES[name])
    only_text = gz.GzipWriter()
    only_text.write(b"abc")
    assert gzip.decompress(only_text.finish()) == b"abc"
    only_pieces = gz.GzipWriter()
    only_pieces.insert(gz.Deflater().piece("x\n"))
    only_pieces.insert(gz.Deflater().piece("y\n"))
    assert gzip.decompress(only_pieces.finish()) == b"x\ny\n"
    assert gzip.decompress(gz.GzipWriter().finish()) == b""


@pytest.mark.parametrize("module", [isal_zlib, zlib], ids=["isal", "zlib"])
def test_crc32_combine_is_the_crc_of_the_concatenation(
    module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zlib's module has no crc32_combine: the Python one must agree with ISA-L's and with
    the CRC of the bytes themselves."""
    monkeypatch.setattr(gz, "deflate", module)
    rnd = random.Random(3)
    for length_a, length_b in [
        (0, 0),
        (0, 5),
        (5, 0),
        (1, 1),
        *((rnd.randrange(0, 5000), rnd.randrange(0, 70000)) for _ in range(50)),
    ]:
        a, b = rnd.randbytes(length_a), rnd.randbytes(length_b)
        combined = gz.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b))
        assert combined == zlib.crc32(a + b)
