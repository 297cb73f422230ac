"""The system sandbox's own unit path: a start target, journald, stubs for the rest.

The manager sees only these and the private ``/etc/systemd/system`` the unit
under test is installed in; never the machine's units (its ``sysinit.target``
would run tmpfiles and clean ``/tmp``). Debian ships no ``system.slice`` unit.
"""

from __future__ import annotations

from pathlib import Path

from systemd_sandbox.machine import JOURNALD

START_TARGET = "sessionstore-sandbox.target"

JOURNALD_CONF = """[Journal]
# The sandbox's journal holds the sandbox's lines, not the machine's kernel log, and
# tests read it to check what the daemon logged: nothing may be rate-limited away.
ReadKMsg=no
RateLimitBurst=0
"""

_STUB_TARGETS = (
    "sysinit.target",
    "basic.target",
    "sockets.target",
    "local-fs.target",
    "network.target",
    "multi-user.target",
    "default.target",
)

UNITS = {
    START_TARGET: """[Unit]
Description=sessionstore test sandbox
Requires=basic.target systemd-journald.service
After=basic.target systemd-journald.service
# What an enabled unit hangs off (WantedBy=multi-user.target); a unit something refers
# to stays loaded after it stops, so `systemctl show` still reports how it ended.
Wants=multi-user.target
""",
    "systemd-journald.socket": """[Unit]
Description=Journal Socket
DefaultDependencies=no
Before=sockets.target
[Socket]
ListenDatagram=/run/systemd/journal/socket
ListenStream=/run/systemd/journal/stdout
PassCredentials=yes
PassSecurity=yes
ReceiveBuffer=8M
Service=systemd-journald.service
SocketMode=0666
Timestamping=us
""",
    "systemd-journald.service": f"""[Unit]
Description=Journal Service
DefaultDependencies=no
Requires=systemd-journald.socket
After=systemd-journald.socket
Before=sysinit.target
[Service]
Type=notify
ExecStart={JOURNALD}
Sockets=systemd-journald.socket
StandardOutput=null
RuntimeDirectory=systemd/journal
RuntimeDirectoryPreserve=yes
Restart=always
RestartSec=0
""",
    "system.slice": "[Unit]\nDescription=System Slice\nDefaultDependencies=no\n",
    "shutdown.target": "[Unit]\nDescription=stub shutdown.target\nDefaultDependencies=no\n",
    **{name: f"[Unit]\nDescription=stub {name}\n" for name in _STUB_TARGETS},
}


def write_units(directory: Path) -> None:
    for name, text in UNITS.items():
        (directory / name).write_text(text)
