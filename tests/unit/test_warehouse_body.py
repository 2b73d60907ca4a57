import gzip
import zlib

import pytest

from streams.warehouse import server


def test_gzip_members_are_all_read() -> None:
    body = gzip.compress(b"SELECT ") + gzip.compress(b"1")
    assert server.decode_content(body, "gzip") == b"SELECT 1"
    assert server.decode_content(zlib.compress(b"SELECT 2"), "deflate") == b"SELECT 2"


def test_a_compression_bomb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "MAX_INFLATED_BYTES", 1000)
    with pytest.raises(Exception, match="inflates past 1000 bytes"):
        server.decode_content(gzip.compress(b" " * 100_000), "gzip")
