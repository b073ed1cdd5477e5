"""Small socket helpers shared by launchers, fixtures and the local stack."""

from __future__ import annotations

import random
import socket
import subprocess
import time

# Listening ports are drawn below Linux's ephemeral range (32768-60999): a port the kernel hands
# out for bind(0) can be taken a moment later by any outgoing connection, which breaks a server
# that (re)binds it later, e.g. a stack restarted on the same ports.
_LISTEN_RANGE = (20000, 32000)


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port free now on ``host`` for listening, outside the ephemeral range."""
    for _ in range(200):
        port = random.randint(*_LISTEN_RANGE)
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {_LISTEN_RANGE} on {host}")


def free_port_udp_tcp(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` (DNS servers bind both)."""
    for _ in range(100):
        port = free_port(host, socket.SOCK_DGRAM)
        if port_is_free(port, host):
            return port
    raise OSError("no port free for both UDP and TCP")


def free_port_run(count: int, host: str = "0.0.0.0") -> int:
    """The first of ``count`` consecutive ports free now on ``host`` (per-stage /metrics ports)."""
    for _ in range(100):
        base = free_port(host)
        if base + count <= _LISTEN_RANGE[1] and all(port_is_free(base + i, host) for i in range(1, count)):
            return base
    raise OSError(f"no run of {count} free ports")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(host: str, port: int, timeout: float, alive: subprocess.Popen[bytes] | None = None) -> bool:
    """Wait until a TCP port accepts connections; give up early if ``alive`` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def terminate(proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None, timeout: float = 10.0) -> None:
    """SIGTERM (services flush and save on it), SIGKILL if it hangs past ``timeout``; the
    process's pipes are closed either way."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
