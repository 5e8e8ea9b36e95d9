"""A fresh interpreter whose output lines arrive with deadlines: the battery's handshakes.

Never a fork (a SQLite connection must not cross fork(), F12) and never a sleep: every wait is for
a line, with a deadline, and a process that stays silent past it is killed and reported.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any

CRASH_LINE = "EVENTQUEUE_CRASH_POINT"  # eventqueue prints it on stderr at a named crash point


class ProcessError(AssertionError):
    """A process stayed silent past its deadline."""


class Process:
    """A fresh interpreter whose stdout and stderr lines arrive in one queue, each with a deadline."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self.seen: dict[str, list[str]] = {"out": [], "err": []}
        self._pumps = [
            threading.Thread(target=self._pump, args=(name, stream), daemon=True)
            for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr))
        ]
        for pump in self._pumps:
            pump.start()

    def _pump(self, name: str, stream: Any) -> None:
        with stream:
            for line in stream:
                self.seen[name].append(line)
                self.lines.put((name, line.rstrip("\n")))
        self.lines.put((name, None))

    def next_line(self, deadline: float) -> tuple[str, str | None]:
        try:
            return self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            self.kill()
            raise ProcessError(
                f"pid {self.proc.pid} silent past its deadline:\n{self.err()}"
            ) from None

    def await_crash(self, deadline: float) -> bool:
        """True when the process reported its crash point (it is killed at once); False when it
        closed both streams by itself."""
        closed = 0
        while closed < 2:
            stream, line = self.next_line(deadline)
            if line is None:
                closed += 1
            elif stream == "err" and line.startswith(CRASH_LINE):
                self.kill()  # at once: nothing after the point runs
                return True
        return False

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)

    def reap(self, timeout_s: float = 60.0) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        code = self.proc.wait(timeout=timeout_s)
        for pump in self._pumps:
            pump.join(timeout=timeout_s)
        return code

    def out(self) -> str:
        return "".join(self.seen["out"])

    def err(self) -> str:
        return "".join(self.seen["err"])[-6000:]
