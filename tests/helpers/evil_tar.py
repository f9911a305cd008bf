"""Hand-made tar archives for the malicious-archive corpus: raw ustar/GNU headers, pax extended
headers, GNU long-name/long-link records — the constructions where two tar parsers may read one
member differently — plus the plain tricks (``..``, absolute names, link escapes, devices, setuid).

``Ar`` builds an archive record by record, exactly as written (no normalisation), so a test can
produce what an attacker with write access to the backup store would.
"""

from __future__ import annotations

import io

BLOCK = 512


def _octal(value: int, width: int) -> bytes:
    return (f"{value:0{width - 1}o}".encode() + b"\0")[:width]


def header(name: bytes, typ: bytes = b"0", size: int = 0, mode: int = 0o644, link: bytes = b"",
           uid: int = 0, gid: int = 0, devmajor: int = 0, devminor: int = 0, gnu: bool = False,
           prefix: bytes = b"") -> bytes:
    """Return one 512-byte header block (ustar, or GNU magic with ``gnu``), checksum filled in."""
    h = bytearray(BLOCK)
    h[0:100] = name[:100].ljust(100, b"\0")
    h[100:108] = _octal(mode, 8)
    h[108:116] = _octal(uid, 8)
    h[116:124] = _octal(gid, 8)
    h[124:136] = _octal(size, 12)
    h[136:148] = _octal(1700000000, 12)
    h[148:156] = b" " * 8
    h[156:157] = typ
    h[157:257] = link[:100].ljust(100, b"\0")
    h[257:265] = b"ustar  \0" if gnu else b"ustar\x0000"
    h[265:297] = b"root".ljust(32, b"\0")
    h[297:329] = b"root".ljust(32, b"\0")
    h[329:337] = _octal(devmajor, 8)
    h[337:345] = _octal(devminor, 8)
    h[345:500] = prefix[:155].ljust(155, b"\0")
    h[148:156] = f"{sum(h):06o}".encode() + b"\0 "
    return bytes(h)


def _data(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def pax_records(fields: dict[str, bytes]) -> bytes:
    """Return pax extended-header data: ``<len> <key>=<value>\\n`` records."""
    out = b""
    for key, value in fields.items():
        body = f" {key}=".encode() + value + b"\n"
        n = len(body) + 1
        while len(str(n).encode()) + len(body) != n:
            n += 1
        out += str(n).encode() + body
    return out


class Ar:
    """An archive under construction; ``bytes()`` ends it with two zero blocks."""

    def __init__(self) -> None:
        self.out = io.BytesIO()

    def raw(self, data: bytes) -> "Ar":
        self.out.write(data)
        return self

    def member(self, name: bytes, typ: bytes = b"0", data: bytes = b"", **kw) -> "Ar":
        self.out.write(header(name, typ, len(data) if typ in (b"0", b"7") else 0, **kw))
        self.out.write(_data(data) if typ in (b"0", b"7") else b"")
        return self

    def file(self, name: bytes, data: bytes = b"x", **kw) -> "Ar":
        return self.member(name, b"0", data, **kw)

    def dir(self, name: bytes, **kw) -> "Ar":
        return self.member(name, b"5", mode=0o755, **kw)

    def symlink(self, name: bytes, target: bytes) -> "Ar":
        return self.member(name, b"2", link=target, mode=0o777)

    def hardlink(self, name: bytes, target: bytes) -> "Ar":
        return self.member(name, b"1", link=target)

    def pax(self, fields: dict[str, bytes], global_: bool = False) -> "Ar":
        data = pax_records(fields)
        self.out.write(header(b"./PaxHeaders/x", b"g" if global_ else b"x", len(data)))
        self.out.write(_data(data))
        return self

    def gnu_long(self, typ: bytes, value: bytes) -> "Ar":
        """A GNU ``L`` (long name) or ``K`` (long link) record carrying ``value``."""
        data = value + b"\0"
        self.out.write(header(b"././@LongLink", typ, len(data), gnu=True))
        self.out.write(_data(data))
        return self

    def bytes(self) -> bytes:
        return self.out.getvalue() + b"\0" * (2 * BLOCK)
