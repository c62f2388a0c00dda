"""Build the native relay (``_relay.c``) next to this file. It is optional: without
it, or with ``native_relay: false`` in the config, the sidecar relays in Python.

    python -m sidecar.proxy.build_relay            # in place, when the source is newer
    python -m sidecar.proxy.build_relay --asan DIR  # AddressSanitizer build into DIR

Needs a C compiler and CPython's headers (``sysconfig``); ``make run`` and
``make test`` call it and carry on without it when it fails.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

SOURCE = Path(__file__).with_name("_relay.c")


def target(directory: Path) -> Path:
    return directory / f"_relay{sysconfig.get_config_var('EXT_SUFFIX')}"


def build(directory: Path, *, asan: bool = False) -> Path:
    out = target(directory)
    # Built beside it and renamed over it: a running sidecar keeps the file it mapped.
    building = out.with_name(out.name + ".building")
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
    if asan:
        flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined"]
    else:
        flags = ["-O2"]
    command = [
        *compiler,
        *flags,
        "-fPIC",
        "-shared",
        "-Wall",
        "-Werror",
        f"-I{sysconfig.get_paths()['include']}",
        str(SOURCE),
        "-o",
        str(building),
    ]
    subprocess.run(command, check=True)  # noqa: S603 (argv from sysconfig, no shell)
    building.replace(out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--asan", metavar="DIR", help="an AddressSanitizer build into DIR")
    args = parser.parse_args()
    if args.asan:
        print(build(Path(args.asan), asan=True))
        return 0
    out = target(SOURCE.parent)
    if out.exists() and out.stat().st_mtime >= SOURCE.stat().st_mtime:
        return 0
    try:
        build(SOURCE.parent)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"native relay not built ({exc}): the sidecar relays in Python", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
