"""Diagnostics to stderr, and to the config's logFile when it names one.

The stdlib logging package costs ~20 ms to import on every container operation; a plugin that
writes a handful of lines needs none of it.
"""

from __future__ import annotations

import os
import sys
import time

LEVELS = {"error": 0, "warning": 1, "info": 2, "debug": 3}


class Log:
    def __init__(self, level: str = "warning", file: str = "", prefix: str = "") -> None:
        self.threshold = LEVELS.get(level, 1)
        self.file = file
        self.prefix = prefix

    def _emit(self, level: str, message: str) -> None:
        if LEVELS[level] > self.threshold:
            return
        line = f"cni-bridge {level}: {self.prefix}{message}\n"
        sys.stderr.write(line)
        if self.file:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            try:
                fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
                try:
                    os.write(fd, f"{stamp} pid={os.getpid()} {line}".encode())
                finally:
                    os.close(fd)
            except OSError as exc:
                sys.stderr.write(f"cni-bridge warning: cannot write log file {self.file}: {exc.strerror}\n")

    def error(self, message: str) -> None:
        self._emit("error", message)

    def warning(self, message: str) -> None:
        self._emit("warning", message)

    def info(self, message: str) -> None:
        self._emit("info", message)

    def debug(self, message: str) -> None:
        self._emit("debug", message)
