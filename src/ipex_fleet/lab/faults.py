"""Network faults with nftables, one table per lab: `nft delete table` tears it all down."""

from __future__ import annotations

import json

from ipex_fleet.common.errors import UserError
from ipex_fleet.runner import run
from ipex_fleet.lab.layout import LabSpec

# A loopback address and port no lab service uses: hosts send here to prove the guard sees them.
GUARD_PROBE = ("127.255.255.254", 9)


def _table_exists(spec: LabSpec) -> bool:
    return run(["nft", "list", "table", "inet", spec.nft_table], timeout=10, check=False).ok


def ensure_table(spec: LabSpec, lab_cgroup: str) -> None:
    """The lab's table: SSH cuts on input, and the guard on output.

    The guard drops and counts every packet that a process of the lab's hosts (its cgroup, which
    nftables names relative to /sys/fs/cgroup) sends to an address off loopback: nothing a host does
    can leave the machine, and `leaks` proves it. `guard_probe` counts what hosts send to a reserved
    loopback port, so a test can show the cgroup match sees the hosts' packets without any leaving.
    """
    if _table_exists(spec):
        return
    t = spec.nft_table
    match = f'socket cgroupv2 level 2 "{lab_cgroup}"'
    script = (
        f"table inet {t} {{\n"
        "  set cut_drop { type ipv4_addr; }\n"
        "  set cut_reject { type ipv4_addr; }\n"
        "  counter leaks { }\n"
        "  counter guard_probe { }\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        "    ip daddr @cut_drop tcp dport 22 drop\n"
        "    ip daddr @cut_reject tcp dport 22 reject with tcp reset\n"
        "  }\n"
        "  chain output {\n"
        "    type filter hook output priority 0; policy accept;\n"
        f"    {match} ip daddr {GUARD_PROBE[0]} udp dport {GUARD_PROBE[1]} counter name guard_probe drop\n"
        f"    {match} ip daddr != 127.0.0.0/8 counter name leaks drop\n"
        f"    {match} ip6 daddr != ::1 counter name leaks drop\n"
        "  }\n"
        "}\n"
    )
    run(["nft", "-f", "-"], timeout=10, input=script)


def leak_counter(spec: LabSpec) -> dict[str, int]:
    """{"leaks": packets, "guard_probe": packets}; both 0 when the table is gone."""
    if not _table_exists(spec):
        return {"leaks": 0, "guard_probe": 0}
    out = run(["nft", "-j", "list", "counters", "table", "inet", spec.nft_table], timeout=10).stdout
    counts = {"leaks": 0, "guard_probe": 0}
    for item in json.loads(out).get("nftables", []):
        c = item.get("counter")
        if c and c.get("name") in counts:
            counts[c["name"]] = int(c.get("packets", 0))
    return counts


def delete_table(spec: LabSpec) -> None:
    if _table_exists(spec):
        run(["nft", "delete", "table", "inet", spec.nft_table], timeout=10)


def cut_addresses(spec: LabSpec) -> dict[str, str]:
    """address -> "drop" | "reject" for every host that is cut."""
    if not _table_exists(spec):
        return {}
    out = run(["nft", "-j", "list", "table", "inet", spec.nft_table], timeout=10).stdout
    cut: dict[str, str] = {}
    for item in json.loads(out).get("nftables", []):
        s = item.get("set")
        if s and s.get("name") in ("cut_drop", "cut_reject"):
            for elem in s.get("elem", []):
                cut[str(elem)] = s["name"].removeprefix("cut_")
    return cut


def cut(spec: LabSpec, address: str, how: str = "drop") -> None:
    if not _table_exists(spec):
        raise UserError(f"the lab's nftables table {spec.nft_table} is missing; run `ipex-fleet lab up` first")
    heal(spec, address)
    run(["nft", "add", "element", "inet", spec.nft_table, f"cut_{how}", f"{{ {address} }}"], timeout=10)


def heal(spec: LabSpec, address: str) -> None:
    how = cut_addresses(spec).get(address)
    if how:
        run(["nft", "delete", "element", "inet", spec.nft_table, f"cut_{how}", f"{{ {address} }}"], timeout=10)


def _isolation_comment(host_cgroup: str) -> str:
    return f"isolate {host_cgroup}"


def isolate(spec: LabSpec, host_cgroup: str, level: int, address: str) -> None:
    """Give a host no route anywhere but its own address: every new connection or datagram a process
    of the host (its cgroup) sends elsewhere, loopback included, is dropped and counted in
    `isolated`. Replies on connections made to the host (SSH from the controller) still flow."""
    if not _table_exists(spec):
        raise UserError(f"the lab's nftables table {spec.nft_table} is missing; run `ipex-fleet lab up` first")
    if host_cgroup in isolated_cgroups(spec):
        return
    t = spec.nft_table
    match = f'socket cgroupv2 level {level} "{host_cgroup}"'
    comment = _isolation_comment(host_cgroup)
    script = (
        f"add counter inet {t} isolated\n"
        f'insert rule inet {t} output {match} ct state new ip daddr != {address} counter name isolated drop comment "{comment}"\n'
        f'insert rule inet {t} output {match} ct state new meta nfproto ipv6 counter name isolated drop comment "{comment}"\n'
    )
    run(["nft", "-f", "-"], timeout=10, input=script)


def _isolation_rules(spec: LabSpec) -> list[tuple[int, str]]:
    if not _table_exists(spec):
        return []
    out = run(["nft", "-j", "-a", "list", "chain", "inet", spec.nft_table, "output"], timeout=10).stdout
    rules = []
    for item in json.loads(out).get("nftables", []):
        rule = item.get("rule")
        if rule and str(rule.get("comment", "")).startswith("isolate "):
            rules.append((int(rule["handle"]), rule["comment"].removeprefix("isolate ")))
    return rules


def isolated_cgroups(spec: LabSpec) -> set[str]:
    return {cgroup for _, cgroup in _isolation_rules(spec)}


def unisolate(spec: LabSpec, host_cgroup: str) -> None:
    for handle, cgroup in _isolation_rules(spec):
        if cgroup == host_cgroup:
            run(["nft", "delete", "rule", "inet", spec.nft_table, "output", "handle", str(handle)], timeout=10)


def isolated_counter(spec: LabSpec) -> int:
    """Packets dropped from isolated hosts so far (0 when none was isolated)."""
    if not _table_exists(spec):
        return 0
    got = run(["nft", "-j", "list", "counter", "inet", spec.nft_table, "isolated"], timeout=10, check=False)
    if not got.ok:
        return 0
    for item in json.loads(got.stdout).get("nftables", []):
        if item.get("counter"):
            return int(item["counter"].get("packets", 0))
    return 0
