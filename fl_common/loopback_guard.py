"""Keep other local users off a service's loopback ports (nftables).

Why: Flower 1.41 serves the SuperLink's Control API (`flwr run`, `flwr stop`)
and ServerAppIo API, and the SuperNode's Runtime API, on 127.0.0.1 without
authentication, so any OS account on the machine could submit a run or stop
the federation. Flower has no Unix-socket listener nor per-API auth for them
(its Control API OIDC is an enterprise plugin), so this restricts them in the
kernel instead.

How: one nftables table per service, installed by the systemd unit
(ExecStartPre, as root) for the unit's own cgroup and removed on stop:

* output: a NEW loopback connection from any uid but root and the service
  user gets a conntrack mark bit;
* input: a marked connection whose destination socket belongs to a process in
  the service's cgroup (``socket cgroupv2``) is reset.

So it needs no port numbers: every socket the service or its children
(SuperLink, SuperNode, ServerApp, ClientApp runner) listen on is covered,
whatever port they picked; everything else on the machine is untouched.

    python -m fl_common.loopback_guard install --user fedvox [--cgroup PATH] [--table NAME]
    python -m fl_common.loopback_guard remove [--cgroup PATH] [--table NAME]
"""
from __future__ import annotations

import argparse
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

MARK = 0x00800000  # one ct mark bit ("from an untrusted local uid"); OR-ed in, other bits kept
_NFT_CGROUP_ROOT = Path("/sys/fs/cgroup")  # where nft resolves `socket cgroupv2` paths


class GuardError(RuntimeError):
    pass


def own_cgroup(proc: str = "self") -> str:
    """This process's cgroup v2 path, e.g. 'system.slice/fedvox-server.service'."""
    for line in Path(f"/proc/{proc}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:].strip("/")
    raise GuardError(f"/proc/{proc}/cgroup has no cgroup v2 entry (0::): no unified cgroup hierarchy")


def cgroup2_mount() -> Path:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrid hosts)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        if post.split()[:1] == ["cgroup2"]:
            return Path(pre.split()[4])
    raise GuardError("no cgroup2 file system is mounted (see /proc/self/mountinfo)")


def table_name(cgroup: str) -> str:
    """nftables table for a cgroup: 'fedvox_guard_' + its last component, sanitised."""
    leaf = re.sub(r"[^A-Za-z0-9_]", "_", cgroup.rstrip("/").rpartition("/")[2])
    return f"fedvox_guard_{leaf}"[:64]


def resolve_uid(user: str) -> int:
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise GuardError(f"no such user {user!r} (the service's User=)") from None


def nft_cgroup_path(cgroup: str, mount: Path) -> str:
    """The path nft wants: nft resolves `socket cgroupv2` paths under /sys/fs/cgroup only, so
    on a hybrid host (cgroup2 at /sys/fs/cgroup/unified) it is 'unified/<cgroup>'; the rule
    keeps the cgroup's id, and ``level`` counts from the cgroup2 root either way."""
    try:
        prefix = mount.relative_to(_NFT_CGROUP_ROOT)
    except ValueError:
        raise GuardError(f"cgroup2 is mounted at {mount}, outside {_NFT_CGROUP_ROOT} where nft "
                         "looks up cgroups") from None
    return str(prefix / cgroup.strip("/")).removeprefix("./")


def ruleset(table: str, uid: int, cgroup: str, nft_path: str | None = None) -> str:
    """The nft script that (re)creates ``table`` atomically."""
    cg = cgroup.strip("/")
    if not cg:
        raise GuardError("refusing to guard the root cgroup: that would cover every process "
                         "on the machine; run this from the service's own cgroup (ExecStartPre)")
    path = nft_path or cg
    if '"' in path or "\n" in path:
        raise GuardError(f"cgroup path {cgroup!r} has a quote or newline")
    level = cg.count("/") + 1
    exempt = "0" if uid == 0 else f"0, {uid}"
    match = f'iifname "lo" ct mark and {MARK:#x} == {MARK:#x} socket cgroupv2 level {level} "{path}"'
    return (f"add table inet {table}\ndelete table inet {table}\n"
            f"table inet {table} {{\n"
            "  chain mark_untrusted {\n"
            "    type filter hook output priority filter; policy accept;\n"
            f"    oifname \"lo\" ct state new meta skuid != {{ {exempt} }} ct mark set ct mark or {MARK:#x}\n"
            "  }\n"
            "  chain refuse_untrusted {\n"
            "    type filter hook input priority filter; policy accept;\n"
            f"    meta l4proto tcp {match} reject with tcp reset\n"
            f"    {match} reject\n"
            "  }\n"
            "}\n")


def _nft_bin() -> str:
    nft = shutil.which("nft")
    if nft is None:
        raise GuardError("`nft` is not installed (apt-get install nftables / dnf install nftables)")
    return nft


def _nft(script: str, timeout: float = 30.0) -> None:
    r = subprocess.run([_nft_bin(), "-f", "-"], input=script, capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise GuardError(f"nft refused the loopback guard: {r.stderr.strip() or r.returncode}")


def other_guards(table: str) -> dict[str, int]:
    """{table: exempt uid} of the other fedvox guards in this network namespace."""
    out = {}
    listed = subprocess.run([_nft_bin(), "list", "tables", "inet"], capture_output=True, text=True, timeout=30)
    for name in re.findall(r"^table inet (fedvox_guard_\w+)$", listed.stdout, re.M):
        if name == table:
            continue
        body = subprocess.run([_nft_bin(), "list", "table", "inet", name], capture_output=True, text=True,
                              timeout=30).stdout
        m = re.search(r"meta skuid != \{ 0(?:, (\d+))? \}", body)
        if m:
            out[name] = int(m.group(1) or 0)
    return out


def install(uid: int, cgroup: str, table: str | None = None) -> str:
    """Install (or replace) the guard for ``cgroup``; returns the table name.

    Every guard ORs the same mark bit ("not root nor MY user"), so two guards
    for different users would refuse each other's user: that is refused here."""
    table = table or table_name(cgroup)
    root = cgroup2_mount()  # the operator's input first, then what the host lacks (nft)
    if not (root / cgroup.strip("/")).is_dir():
        raise GuardError(f"cgroup {cgroup!r} does not exist under {root}")
    clash = {t: u for t, u in other_guards(table).items() if u != uid}
    if clash:
        raise GuardError(f"another loopback guard on this host lets a different user in "
                         f"({', '.join(f'{t}: uid {u}' for t, u in clash.items())}); guarded fedvox units "
                         f"on one host must share one User= (this one: uid {uid})")
    _nft(ruleset(table, uid, cgroup, nft_cgroup_path(cgroup, root)))
    return table


def remove(table: str) -> None:
    """Delete the guard's table (no error when it is already gone)."""
    _nft(f"add table inet {table}\ndelete table inet {table}\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fl_common.loopback_guard",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["install", "remove"])
    p.add_argument("--user", help="the service user (name or uid) allowed besides root (install)")
    p.add_argument("--cgroup", help="cgroup v2 path to guard (default: this process's own, "
                                    "i.e. the unit's when run as its ExecStartPre)")
    p.add_argument("--table", help="nftables table name (default: from the cgroup's name)")
    return p


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    try:
        cgroup = a.cgroup if a.cgroup is not None else own_cgroup()
        if a.action == "install":
            if not a.user:
                p.error("install needs --user")
            table = install(resolve_uid(a.user), cgroup, a.table)
            print(f"loopback guard {table}: loopback connections into cgroup {cgroup!r} only "
                  f"from uid 0 and {a.user}", flush=True)
        else:
            remove(a.table or table_name(cgroup))
    except (GuardError, OSError, subprocess.TimeoutExpired) as e:
        print(f"loopback guard: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
