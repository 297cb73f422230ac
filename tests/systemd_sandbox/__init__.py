"""Real systemd managers for tests, each in namespaces and a cgroup of its own.

Two kinds, as the units are meant to run:

- :class:`UserSandbox`: ``systemd --user`` run by an unprivileged account (as
  ``user@.service`` would), next to its own ``systemd-journald``;
- :class:`SystemSandbox`: ``systemd --system`` as PID 1 of its own pid
  namespace, with a unit path of its own (stub targets, a start target of ours,
  never the machine's ``sysinit.target``), tmpfs over ``/run``, private
  ``/var/lib``, ``/var/tmp``, ``/var/log/journal`` and ``/etc/systemd/system``,
  and the service accounts in bind-mounted *copies* of passwd and group.

Safety, because a manager started carelessly damages the machine it runs on:
the launcher first moves itself into a new sub-cgroup of its own cgroup2
directory, and only then unshares a cgroup namespace (with pid, mount with
private propagation, uts and ipc), so the manager sees that sub-cgroup as its
root. A manager that saw the real root would move every process of the machine
into a cgroup of its own. Teardown is SIGKILL to the namespace's init (the
kernel then kills every process in the pid namespace), a wait, and rmdir of the
sub-cgroup depth-first; the init also dies with its parent (PR_SET_PDEATHSIG),
so a test process killed outright leaves nothing running.

Commands run inside with ``nsenter``, as root or (``account=``) as one of the
sandbox's accounts via ``setpriv``.

- :mod:`.managers`: the sandboxes, seen from the test process;
- :mod:`.pid1`: the program that prepares the namespaces and starts a manager;
- :mod:`.units`: the system sandbox's stub units and journald settings;
- :mod:`.machine`: what the machine must offer, cgroup and id helpers, the venv;
- :mod:`.client`: a distillation process run inside, talking to the unit's daemon.
"""

from systemd_sandbox.machine import build_venv, unavailable_reason
from systemd_sandbox.managers import Account, Sandbox, SystemSandbox, UserSandbox

__all__ = [
    "Account",
    "Sandbox",
    "SystemSandbox",
    "UserSandbox",
    "build_venv",
    "unavailable_reason",
]
