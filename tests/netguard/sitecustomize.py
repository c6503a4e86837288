"""A network guard for tests/test_offline.py, loaded by Python at start-up (`sitecustomize`)
when this folder leads PYTHONPATH: every connection or name lookup outside the loopback
is refused and written to the file NETGUARD_LOG names, so the test sees what tried."""

from __future__ import annotations

import atexit
import os
import socket
import threading

_LOG = os.environ.get("NETGUARD_LOG", "")
_LOCK = threading.Lock()
_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""}


def _record(line: str) -> None:
    if _LOG:
        with _LOCK, open(_LOG, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {line}\n")


def _local(host: object) -> bool:
    if host is None:
        return True
    name = host.decode() if isinstance(host, bytes) else str(host)
    return name in _LOCAL_NAMES or name.startswith("127.")


_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _guarded_getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    if not _local(host):
        _record(f"blocked lookup {host}")
        raise socket.gaierror(socket.EAI_NONAME, f"netguard: no lookups of {host}")
    return _getaddrinfo(host, *args, **kwargs)


def _outside(sock: socket.socket, address: object) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False  # unix sockets stay on this machine
    return isinstance(address, tuple) and not _local(address[0])


def _guarded_connect(self, address):  # type: ignore[no-untyped-def]
    if _outside(self, address):
        _record(f"blocked connect {address}")
        raise OSError(101, f"netguard: no connections to {address}")
    return _connect(self, address)


def _guarded_connect_ex(self, address):  # type: ignore[no-untyped-def]
    if _outside(self, address):
        _record(f"blocked connect {address}")
        return 101
    return _connect_ex(self, address)


socket.getaddrinfo = _guarded_getaddrinfo
socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
_record("guard loaded")
# What the process ran with, as it ends: the offline switches tuneloop set.
atexit.register(
    lambda: _record("env at exit " + ",".join(f"{k}={os.environ.get(k, '')}" for k in _KEYS))
)
_KEYS = ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "TRANSFORMERS_OFFLINE",
         "HF_DATASETS_OFFLINE", "DO_NOT_TRACK", "GRADIO_ANALYTICS_ENABLED")  # fmt: skip
