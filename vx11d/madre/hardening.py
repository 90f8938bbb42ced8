"""The sandboxing levels of hija units: the systemd properties each level sets.

Both levels run a hija as an unprivileged user with no capabilities and a seccomp
system-call allow list; ``strict`` adds what needs mount, user and network namespaces.
What each setting costs at start and the ``systemd-analyze security`` figure of each
level are in docs/madre.md ("Sandboxing levels"); a system test checks the figures on
live hijas.

``RemoveIPC`` is not set: with the shared static user it could remove the IPC objects
of other hijas (``DynamicUser=yes`` implies it, per hija UID). Nor is
``MemoryDenyWriteExecute``: a template may run a JIT (Java, Node.js, LuaJIT, PyPy).

Values are by D-Bus property name (``signature_of`` in madre/systemd.py knows each).
"""

from __future__ import annotations

from typing import Any

# RestrictNamespaces over D-Bus is the mask of namespace types still allowed: none.
NO_NAMESPACES = 0
# Address families a hija may open: local sockets always (syslog, its own helpers);
# the Internet ones only when the template asks for a port.
UNIX_ONLY = (True, [b"AF_UNIX"])
WITH_INET = (True, [b"AF_UNIX", b"AF_INET", b"AF_INET6"])


def basic(needs_port: bool) -> dict[str, Any]:
    """No mount namespace (the cheap level): identity, privileges, seccomp, devices."""
    return {
        "NoNewPrivileges": True,
        "CapabilityBoundingSet": 0,
        "RestrictSUIDSGID": True,
        "RestrictRealtime": True,
        "LockPersonality": True,
        "UMask": 0o077,
        # seccomp: the system calls an ordinary service makes, native ABI only
        "SystemCallFilter": (True, [b"@system-service"]),
        "SystemCallArchitectures": [b"native"],
        "SystemCallErrorNumber": 1,  # EPERM instead of SIGSYS: a refused call is an error
        "RestrictNamespaces": NO_NAMESPACES,
        "RestrictAddressFamilies": WITH_INET if needs_port else UNIX_ONLY,
        "ProtectClock": True,
        "DevicePolicy": b"closed",
    }


def strict(needs_port: bool) -> dict[str, Any]:
    """Basic, plus a read-only system, private /tmp and /dev, hidden /proc, protected
    kernel, its own hostname and user namespace, and no network without a port."""
    props = basic(needs_port)
    props.update({
        "PrivateTmp": True,
        "PrivateDevices": True,
        "ProtectSystem": b"strict",
        "ProtectHome": b"yes",
        "ProtectKernelTunables": True,
        "ProtectKernelModules": True,
        "ProtectKernelLogs": True,
        "ProtectHostname": True,
        "ProtectControlGroups": True,
        "ProtectProc": b"invisible",
        "ProcSubset": b"pid",
        "PrivateUsers": True,
    })
    if not needs_port:
        props["PrivateNetwork"] = True
    return props


def properties(level: str, needs_port: bool) -> dict[str, Any]:
    """The properties of sandboxing ``level`` (``strict`` or ``basic``)."""
    return strict(needs_port) if level == "strict" else basic(needs_port)
