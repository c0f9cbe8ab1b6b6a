#!/usr/bin/env python3
"""Writes the seed inputs of each fuzz target into seeds/<target>/: a few
valid batches and request frames, so that the fuzzer starts past the
framing checks. Run from fuzz/: python3 seeds/make_seeds.py"""

import os
import struct

HEADER_BYTES = 61


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def zigzag(v):
    v = (v << 1) ^ (v >> 63)
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def record(i, value):
    body = b"\x00" + zigzag(0) + zigzag(i) + zigzag(-1) + zigzag(len(value)) + value + zigzag(0)
    return zigzag(len(body)) + body


def batch(count, value=b"hello", attributes=0):
    records = b"".join(record(i, value) for i in range(count))
    after_crc = struct.pack(">hiqqqhii", attributes, count - 1, 1000, 1000, -1, -1, -1, count) + records
    crc = crc32c(after_crc)
    length = 4 + 1 + 4 + len(after_crc)
    return struct.pack(">qiibI", 0, length, 0, 2, crc) + after_crc


def string(s):
    return struct.pack(">h", len(s)) + s


def frame(api_key, version, body):
    return struct.pack(">hhi", api_key, version, 7) + string(b"fuzz") + body


def write(target, name, data):
    os.makedirs(f"seeds/{target}", exist_ok=True)
    with open(f"seeds/{target}/{name}", "wb") as f:
        f.write(data)


def main():
    b3 = batch(3)
    write("batch_validate", "three-records", b"\x04" + b3)
    write("batch_validate", "gzip-flagged", b"\x04" + batch(1, attributes=1))
    write("batch_validate", "raw-crc", b"\x84" + b3)

    topic = string(b"t")
    produce = struct.pack(">hhi", -1, 1, 30000) + struct.pack(">i", 1) + topic
    produce += struct.pack(">i", 1) + struct.pack(">ii", 0, len(b3)) + b3
    write("request_decode", "produce-v3", frame(0, 3, produce))
    fetch = struct.pack(">iiiib", -1, 100, 1, 1 << 20, 0) + struct.pack(">i", 1) + topic
    fetch += struct.pack(">i", 2) + struct.pack(">iqi", 0, 0, 1 << 20) * 2
    write("request_decode", "fetch-v4", frame(1, 4, fetch))
    list_offsets = struct.pack(">ii", -1, 1) + topic + struct.pack(">iiq", 1, 0, -1)
    write("request_decode", "list-offsets-v1", frame(2, 1, list_offsets))
    write("request_decode", "metadata-v1", frame(3, 1, struct.pack(">i", 1) + topic))
    write("request_decode", "api-versions-v0", frame(18, 0, b""))


if __name__ == "__main__":
    main()
