"""Fuzz the native relay: malformed and fragmented messages, in an AddressSanitizer build.

    python tests/fuzz/relay.py [--seconds 120] [--seed N]      (make fuzz)

Builds ``sidecar/proxy/_relay.c`` with AddressSanitizer and UndefinedBehavior-
Sanitizer into a temporary directory, re-runs itself with the sanitizer runtime
preloaded, and feeds random exchanges to two real Sessions, one on that build and
one on Python alone (``tests/sidecar/proxy/relay_check.py``): well-formed hot
messages mixed with wrong lengths, missing terminators, unknown and unexpected
types and random bytes, each side's bytes cut at random points. A memory error
aborts with the sanitizer's report; any difference in what the two Sessions
forward, keep pending or record fails the run. Exit status 0 means neither.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + (len(payload) + 4).to_bytes(4, "big") + payload


def _client_message(rng: random.Random) -> bytes:
    name = rng.choice(
        [b"", b"s1", b"s2", b"p1", b"unknown", bytes(rng.randrange(256) for _ in range(3))]
    )
    choice = rng.randrange(14)
    if choice == 12:  # Describe (of a portal or a statement), as libpq sends it per run
        return frame(b"D", rng.choice([b"P", b"S", b"X"]) + name + rng.choice([b"\x00", b""]))
    if choice == 13:
        return frame(b"H")
    if choice < 4:
        body = rng.choice([b"", b"p1"]) + b"\x00" + name + b"\x00" + bytes(4)
        return frame(b"B", body)
    if choice < 6:
        return frame(b"E", rng.choice([b"", b"p1", name]) + b"\x00" + bytes(4))
    if choice < 8:
        return frame(b"S")
    if choice == 8:
        return frame(b"P", name + b"\x00SELECT id FROM orders WHERE id = $1\x00\x00\x00")
    if choice == 9:
        return frame(b"Q", rng.choice([b"SELECT 1", _read_by_id(rng)]) + b"\x00")
    if choice == 10:  # a length that lies
        kind = rng.choice(b"BESQPXCHD")
        length = rng.choice([0, 1, 3, 4, 5, 2**31 - 1, -1 & 0xFFFFFFFF, rng.randrange(2**16)])
        return bytes([kind]) + length.to_bytes(4, "big") + os.urandom(rng.randrange(12))
    return os.urandom(rng.randrange(1, 24))  # noise, missing terminators and all


def _upstream_message(rng: random.Random) -> bytes:
    choice = rng.randrange(12)
    if choice < 3:
        return frame(b"2")
    if choice < 5:
        return frame(b"D", (1).to_bytes(2, "big") + (2).to_bytes(4, "big") + b"42")
    if choice < 7:
        tag = rng.choice([b"SELECT 1", b"SELECT 99999999999999999999", b"INSERT 0 3", b"X", b""])
        return frame(b"C", tag + rng.choice([b"\x00", b""]))
    if choice < 9:
        return frame(b"Z", rng.choice([b"I", b"T", b"E", b"", b"II"]))
    if choice == 9:
        return frame(rng.choice([b"1", b"n", b"t", b"T", b"N", b"S", b"E", b"3", b"s"]))
    if choice == 10:
        kind = rng.choice(b"CDZ2TE")
        length = rng.choice([0, 3, 4, 2**31 - 1, rng.randrange(2**12)])
        return bytes([kind]) + length.to_bytes(4, "big") + os.urandom(rng.randrange(8))
    return os.urandom(rng.randrange(1, 16))


def _exchange(rng: random.Random) -> list[tuple[str, bytes]]:
    out = [
        (
            "client",
            frame(b"P", b"s1\x00SELECT id FROM orders WHERE id = $1\x00\x00\x00") + frame(b"S"),
        ),
        ("upstream", frame(b"1") + frame(b"Z", b"I")),
    ]
    for _ in range(rng.randrange(1, 40)):
        if rng.random() < 0.25:  # one-integer reads: the shape the relay may serve
            out.append(("client", frame(b"Q", _read_by_id(rng) + b"\x00")))
            reply = frame(b"T", (0).to_bytes(2, "big")) + frame(b"C", b"SELECT 0\x00")
            out.append(("upstream", reply + frame(b"Z", b"I")))
            continue
        if rng.random() < 0.6:  # what a driver sends, and what the server answers
            runs = rng.randrange(1, 4)
            portal = rng.choice([b"", b"p1"])
            batch = (_bind(portal, rng) + frame(b"E", portal + b"\x00" + bytes(4))) * runs
            out.append(("client", batch + frame(b"S")))
            reply = frame(b"2") + frame(
                b"D", (1).to_bytes(2, "big") + (1).to_bytes(4, "big") + b"7"
            )
            reply = (reply + frame(b"C", b"SELECT 1\x00")) * runs + frame(b"Z", b"I")
            out.append(("upstream", reply))
            continue
        direction = rng.choice(["client", "upstream"])
        maker = _client_message if direction == "client" else _upstream_message
        out.append((direction, b"".join(maker(rng) for _ in range(rng.randrange(1, 6)))))
    return out


def _read_by_id(rng: random.Random) -> bytes:
    """A read by id, mostly of two shapes (with a string or without): numbers of 1 to
    12 digits, now and then something around or in place of them, or a string, that
    the shape does not fit."""
    number = str(rng.randrange(10 ** rng.randrange(1, 13))).encode()
    if rng.random() < 0.2:
        number = rng.choice([b"", b"-", b" ", b";", b"7.5", b"\xd9\xa1", b"0x1F", b"1 OR true"]) + (
            number if rng.random() < 0.5 else b""
        )
    read = b"SELECT id FROM orders WHERE id = " + number
    if rng.random() < 0.5:  # and a string: quotes doubled or not, a double quote, NUL,
        # bytes that are not UTF-8
        body = rng.choice([b"a@b.c", b"it''s", b"x'", b'a"b', b"\x00", b"\xc3\xa9", b"\xff", b""])
        read += b" AND status <> '" + body * rng.randrange(1, 3) + b"'"
    return read


def _bind(portal: bytes, rng: random.Random) -> bytes:
    value = str(rng.randrange(10**6)).encode()
    body = portal + b"\x00s1\x00" + (0).to_bytes(2, "big") + (1).to_bytes(2, "big")
    return frame(b"B", body + len(value).to_bytes(4, "big") + value + (0).to_bytes(2, "big"))


def _chunks(rng: random.Random) -> Any:
    def cut(data: bytes) -> list[bytes]:
        pieces, pos = [], 0
        while pos < len(data):
            step = rng.choice([1, 2, 5, 9, 64, len(data)])
            pieces.append(data[pos : pos + step])
            pos += step
        return pieces

    return cut


def fuzz(seconds: float, seed: int) -> int:
    sys.path.insert(0, str(ROOT))
    path = os.environ["WARDEN_RELAY_BUILD"]
    spec = importlib.util.spec_from_file_location("sidecar.proxy._relay", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["sidecar.proxy._relay"] = module  # what sidecar.proxy.session imports

    import logging

    logging.disable(logging.CRITICAL)  # protocol violations are expected by the thousand
    from sidecar.metrics import Metrics
    from sidecar.runner import EnginePolicy
    from tests.sidecar.proxy.conftest import build_bundle
    from tests.sidecar.proxy.relay_check import Source, differences

    document = build_bundle("fuzz")
    policy = EnginePolicy(Source(document), Metrics())  # shared, as a sidecar's sessions do
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < deadline:
        exchange = _exchange(rng)
        found = differences(document, "alice", exchange, _chunks(rng), policy)
        runs += 1
        if found:
            print(f"seed {seed}, run {runs}: the relays differ on {exchange!r}")
            print("\n".join(found))
            return 1
    stats = module.stats()
    print(f"fuzz_relay: {runs} exchanges, seed {seed}, relayed natively {stats}, no difference")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(2**32))
    args = parser.parse_args()
    if "WARDEN_RELAY_BUILD" in os.environ:
        return fuzz(args.seconds, args.seed)
    with tempfile.TemporaryDirectory(prefix="warden-asan-") as tmp:
        built = subprocess.run(
            [sys.executable, "-m", "sidecar.proxy.build_relay", "--asan", tmp],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        runtime = subprocess.run(
            ["gcc", "-print-file-name=libasan.so"], check=True, capture_output=True, text=True
        ).stdout.strip()
        ubsan = subprocess.run(
            ["gcc", "-print-file-name=libubsan.so"], check=True, capture_output=True, text=True
        ).stdout.strip()
        env = {
            **os.environ,
            "WARDEN_RELAY_BUILD": built,
            "LD_PRELOAD": f"{runtime} {ubsan}",
            # CPython's own allocations at exit are not the relay's: no leak report.
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
            "PYTHONMALLOC": "malloc",  # so ASan sees every object's memory
        }
        command = [
            sys.executable,
            __file__,
            "--seconds",
            str(args.seconds),
            "--seed",
            str(args.seed),
        ]
        return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
