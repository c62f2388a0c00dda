"""A sidecar killed outright leaves no process behind.

The classification scanner runs in a worker process of its own. A sidecar that
is stopped cleanly terminates it; one killed with SIGKILL (or by the OOM killer)
cannot, and its scan worker used to wait for work forever, 56 MB each.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from urllib.parse import urlsplit

from tests.sidecar.proxy.conftest import build_bundle, one_relay, start_sidecar, wait_for


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_the_scan_worker_of_a_killed_sidecar_exits(upstream: str, tmp_path: Path) -> None:
    name = urlsplit(upstream).path.lstrip("/")
    sidecar = start_sidecar(tmp_path, upstream, build_bundle(name), scan_enabled=True)
    try:
        workers = wait_for(lambda: children(sidecar.proc.pid), timeout=20)
        assert workers, "the sidecar started no scan worker"
    finally:
        sidecar.proc.send_signal(signal.SIGKILL)
        sidecar.proc.wait()
    assert wait_for(lambda: not any(alive(p) for p in workers), timeout=10), (
        f"scan workers {sorted(p for p in workers if alive(p))} outlived their sidecar"
    )


# Not about how messages are relayed: one relay is enough (``one_relay``).
relay = one_relay()
