"""Start, steer and stop the power-loss filesystem (lazyfs.py) from a test.

The filesystem runs in its own fresh interpreter; the test talks to it over a Unix socket. Every
wait has a deadline; nothing here sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
SERVER = HERE / "lazyfs.py"
READY = "POWERLOSS_READY"


def unavailable() -> str | None:
    """What is missing to mount the power-loss filesystem here (and how to get it), or None."""
    if not sys.platform.startswith("linux"):
        return "FUSE is Linux-only here"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (load the fuse module; in a container pass --device /dev/fuse)"
    if os.geteuid() != 0:
        return "not root (the FUSE mount needs root; CI runs as root)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse cannot be opened ({exc.strerror}; in a container add CAP_SYS_ADMIN)"
    if ctypes.util.find_library("fuse3") is None or shutil.which("fusermount3") is None:
        return "libfuse 3 is missing (apt-get install fuse3)"
    if importlib.util.find_spec("mfusepy") is None:
        return "mfusepy is missing (pip install -e '.[dev]')"
    return None


def skip_unless_available() -> None:
    """Skip the calling test module where the filesystem cannot mount. Every module skips from
    this one line, so pytest's summary folds the whole tier into one SKIPPED line."""
    missing = unavailable()
    if missing is not None:
        pytest.skip(f"power-loss tier skipped: {missing}", allow_module_level=True)


class FuseError(AssertionError):
    """The filesystem did not start, answer or stop in time."""


class PowerLossMount:
    """A mounted power-loss filesystem: `mountpoint` over `backing`, steered by `control`."""

    def __init__(self, root: Path, timeout_s: float = 20.0) -> None:
        self.backing = root / "backing"
        self.mountpoint = root / "mnt"
        self.socket = root / "control.sock"
        self.log = root / "lazyfs.log"
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "FUSE_LIBRARY_NAME": "fuse3", "PYTHONPATH": str(HERE)}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(SERVER),
                    str(self.backing),
                    str(self.mountpoint),
                    str(self.socket),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                text=True,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.close()
                raise FuseError(
                    f"the filesystem did not mount in {timeout_s}s: {self.stderr()}"
                ) from None
            if line is None:
                self.close()
                raise FuseError(f"the filesystem exited before mounting: {self.stderr()}")
            if line == READY:
                break
        # INIT is answered before the kernel marks the mount usable: a first stat settles it.
        os.stat(self.mountpoint / ".")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def command(self, cmd: str, timeout_s: float = 30.0, **args: Any) -> dict[str, Any]:
        """Send one control command; its JSON answer (raises if the filesystem refused it)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout_s)
            conn.connect(str(self.socket))
            with conn.makefile("rw") as stream:
                stream.write(json.dumps({"cmd": cmd, **args}) + "\n")
                stream.flush()
                line = stream.readline()
        if not line:
            raise FuseError(f"no answer to {cmd}: {self.stderr()}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.pop("ok"):
            raise FuseError(f"{cmd} refused: {answer['error']}")
        return answer

    def cut(self, mode: str = "drop", seed: int = 0) -> dict[str, Any]:
        """The power cut, now: every writer must already be killed and reaped."""
        return self.command("cut", mode=mode, seed=seed)

    def arm(self, *, op: str, match: str, n: int, pid: int, mode: str, seed: int) -> None:
        """Cut by itself at the n-th `op` on a path matching `match`, killing `pid` first."""
        self.command("arm", op=op, match=match, n=n, pid=pid, mode=mode, seed=seed)

    def disarm(self) -> dict[str, Any]:
        return self.command("disarm")

    def revive(self) -> None:
        self.command("revive")

    def status(self) -> dict[str, Any]:
        return self.command("status")

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)

    def close(self, timeout_s: float = 20.0) -> None:
        """Unmount and wait for the filesystem process; kill it if it hangs."""
        if self.proc.poll() is None:
            subprocess.run(
                ["umount", str(self.mountpoint)],
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(timeout=timeout_s)
        with contextlib.suppress(OSError):
            if os.path.ismount(self.mountpoint):
                subprocess.run(["umount", "-l", str(self.mountpoint)], check=False, timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> PowerLossMount:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
