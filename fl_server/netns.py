"""A multi-host rehearsal on one Linux machine: the coordinator and every site
in its own network namespace (root needed), used by `fedvox demo --hosts` and
tests/fl_server/test_multihost.py.

Topology, a star into the coordinator's namespace: there a bridge holds the
coordinator's address; each site namespace gets one veth pair, created
directly between the two namespaces (``ip -n COORD link add ... peer ...
netns SITE``), so no interface ever appears in the host's own namespace. The
addresses (10.231.77.0/24) exist only inside these namespaces. Names resolve
through /etc/netns/<ns>/hosts, which `ip netns exec` bind-mounts over
/etc/hosts. ``close()`` deletes every namespace (their veths and the bridge
go with them) and every /etc/netns entry it made; the caller stops the
processes it started in them (by PID, through its ProcessGroup) first.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

SUBNET = "10.231.77"  # private; only ever assigned inside our namespaces
COORD_NAME = "coordinator.fedvox.test"
_ETC = Path("/etc/netns")


class NetnsError(RuntimeError):
    pass


def _ip(*args: str, timeout: float = 10.0) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise NetnsError(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")


def namespaces_available() -> str | None:
    """None if this process can create a network namespace, else why not."""
    if shutil.which("ip") is None:
        return "the `ip` tool (iproute2) is not installed"
    name = f"fvx-probe-{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except (NetnsError, OSError, subprocess.TimeoutExpired) as e:
        return f"cannot create a network namespace ({e}); run as root on Linux"
    try:
        _ip("netns", "del", name)
    except NetnsError:
        pass
    return None


class Rehearsal:
    """Namespaces for a coordinator and ``sites``; use as a context manager."""

    def __init__(self, sites: list[str], tag: str | None = None):
        self.tag = tag or secrets.token_hex(3)
        self.coord = f"fvx-{self.tag}-coord"
        self.sites = {s: f"fvx-{self.tag}-s{i}" for i, s in enumerate(sites)}
        self.coord_ip = f"{SUBNET}.1"
        self.site_ip = {s: f"{SUBNET}.{10 + i}" for i, s in enumerate(sites)}
        self.made: list[str] = []

    def veth(self, site: str) -> str:
        """The coordinator-side end of ``site``'s link (max 15 chars)."""
        return f"fvx{self.tag}v{list(self.sites).index(site)}"

    def __enter__(self) -> "Rehearsal":
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        hosts = f"127.0.0.1 localhost\n::1 localhost\n{self.coord_ip} {COORD_NAME}\n"
        for ns in (self.coord, *self.sites.values()):
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")  # the SuperLink and each worker use loopback
            d = _ETC / ns
            d.mkdir(parents=True, exist_ok=True)
            (d / "hosts").write_text(hosts)
        br = f"fvx{self.tag}br"
        _ip("-n", self.coord, "link", "add", br, "type", "bridge")
        _ip("-n", self.coord, "addr", "add", f"{self.coord_ip}/24", "dev", br)
        _ip("-n", self.coord, "link", "set", br, "up")
        for s, ns in self.sites.items():
            v = self.veth(s)
            _ip("-n", self.coord, "link", "add", v, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.coord, "link", "set", v, "master", br)
            _ip("-n", self.coord, "link", "set", v, "up")
            _ip("-n", ns, "addr", "add", f"{self.site_ip[s]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def exec_prefix(self, site: str | None = None) -> list[str]:
        """argv prefix that runs a command in the coordinator's (None) or a site's namespace."""
        return ["ip", "netns", "exec", self.coord if site is None else self.sites[site]]

    def link(self, site: str, up: bool) -> None:
        _ip("-n", self.coord, "link", "set", self.veth(site), "up" if up else "down")

    def run(self, site: str | None, argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run([*self.exec_prefix(site), *argv], capture_output=True, text=True,
                              timeout=timeout)

    def close(self) -> None:
        for ns in reversed(self.made):
            try:
                _ip("netns", "del", ns)
            except NetnsError:
                pass
            shutil.rmtree(_ETC / ns, ignore_errors=True)
        self.made.clear()

    def leftovers(self) -> list[str]:
        """Our namespaces that still exist (for the test's teardown check)."""
        r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
        return [ln.split()[0] for ln in r.stdout.splitlines() if ln.startswith(f"fvx-{self.tag}-")]


class Scratch:
    """One bare namespace (loopback up) for a test; ``close()`` deletes it.
    ``enter_prefix()`` uses nsenter, which switches only the network namespace
    (`ip netns exec` also remounts /sys, hiding the cgroup hierarchy)."""

    def __init__(self, tag: str | None = None):
        self.name = f"fvx-{tag or secrets.token_hex(3)}-scratch"
        self.made = False

    def __enter__(self) -> "Scratch":
        _ip("netns", "add", self.name)
        self.made = True
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def enter_prefix(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.name}"]

    def close(self) -> None:
        if self.made:
            try:
                _ip("netns", "del", self.name)
            except NetnsError:
                pass
            self.made = False
