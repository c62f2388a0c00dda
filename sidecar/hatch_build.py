"""Wheel build hook (hatchling): put the native relay in the wheel when it can be built.

The relay is optional (``sidecar.proxy.session`` runs the pure-Python relay without
it), so a machine without a C compiler still gets a working wheel, pure Python and
tagged ``py3-none-any``; with one, the wheel carries ``sidecar/proxy/_relay*.so`` and
is tagged for this interpreter and platform. The compiler line is
``sidecar/proxy/build_relay.py``'s, loaded by path: the package is not importable
while its own wheel is being built. Not shipped in the wheel.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

# WARDEN_SIDECAR_PURE_WHEEL=1 skips the relay (a wheel for several platforms).
PURE = "WARDEN_SIDECAR_PURE_WHEEL"


class RelayBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        if os.environ.get(PURE, "") not in ("", "0"):
            return
        root = Path(self.root)
        spec = importlib.util.spec_from_file_location(
            "_warden_build_relay", root / "proxy" / "build_relay.py"
        )
        assert spec is not None and spec.loader is not None
        build_relay = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(build_relay)
        self._directory = tempfile.TemporaryDirectory(prefix="warden-relay-")
        try:
            built: Path = build_relay.build(Path(self._directory.name))
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"native relay not built ({exc}): a pure-Python wheel", file=sys.stderr)
            return
        # The sources mapping puts it under sidecar/ like the rest.
        build_data["force_include"][str(built)] = f"proxy/{built.name}"
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        directory = getattr(self, "_directory", None)
        if directory is not None:
            directory.cleanup()
