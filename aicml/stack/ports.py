"""Loopback ports: the one ``free_port`` of the stack, the tests, the fault drills and the benchmarks."""

from __future__ import annotations

import contextlib
import socket


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel picks it; nothing holds it once this returns)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts a TCP connection on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False
