"""TLS ClientHello parsing shared by the sniffer (host-level heat from SNI) and the cache
node's TLS passthrough (where to splice a steered HTTPS connection): pure slicing of RFC 8446 /
RFC 6066 structures, never a TLS library (nothing is decrypted or terminated)."""

from __future__ import annotations

HANDSHAKE = 0x16
MAX_HELLO = 16384 + 5  # one TLS record (2^14 bytes of plaintext) and its header


def parse_sni(payload: bytes) -> str | None:
    """The server name of a TLS ClientHello in one segment, or None (not a ClientHello, no SNI,
    or cut short). Pure slicing of RFC 8446 / RFC 6066 structures."""
    try:
        if len(payload) < 43 or payload[0] != 0x16 or payload[1] != 0x03 or payload[5] != 0x01:
            return None
        end = min(len(payload), 5 + ((payload[3] << 8) | payload[4]))
        pos = 5 + 4 + 2 + 32  # record header, handshake header, client_version, random
        pos += 1 + payload[pos]  # session id
        pos += 2 + ((payload[pos] << 8) | payload[pos + 1])  # cipher suites
        pos += 1 + payload[pos]  # compression methods
        ext_end = min(end, pos + 2 + ((payload[pos] << 8) | payload[pos + 1]))
        pos += 2
        while pos + 4 <= ext_end:
            etype = (payload[pos] << 8) | payload[pos + 1]
            elen = (payload[pos + 2] << 8) | payload[pos + 3]
            pos += 4
            if etype == 0:  # server_name: list length, then (type, length, name)*
                p = pos + 2
                stop = min(pos + elen, ext_end)
                while p + 3 <= stop:
                    ntype, nlen = payload[p], (payload[p + 1] << 8) | payload[p + 2]
                    name = payload[p + 3 : p + 3 + nlen]
                    if ntype == 0 and len(name) == nlen and nlen:
                        return name.decode("ascii")
                    p += 3 + nlen
                return None
            pos += elen
    except (IndexError, UnicodeDecodeError):
        return None
    return None


def hello_record_length(buf: bytes) -> int | None:
    """How many bytes the first TLS record of ``buf`` spans (header included) if it starts like
    a handshake record; None if it cannot be a ClientHello at all (the caller refuses it)."""
    if len(buf) < 5:
        return 5 if not buf or buf[0] == HANDSHAKE else None
    if buf[0] != HANDSHAKE or buf[1] != 0x03:
        return None
    return 5 + ((buf[3] << 8) | buf[4])


def valid_sni(name: str) -> str | None:
    """The SNI as a lower-case host name, or None if it is not one (RFC 6066 forbids IP
    literals and a trailing dot; labels are LDH of at most 63 bytes)."""
    name = name.lower()
    if not 0 < len(name) <= 253 or name.endswith("."):
        return None
    for label in name.split("."):
        if not 0 < len(label) <= 63 or label[0] == "-" or label[-1] == "-":
            return None
        if not all(c.isascii() and (c.isalnum() or c in "-_") for c in label):
            return None
    return name
