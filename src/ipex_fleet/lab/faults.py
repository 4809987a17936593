"""Network faults with nftables, one table per lab: `nft delete table` tears it all down."""

from __future__ import annotations

import json

from ..runner import run
from .layout import LabSpec


def _table_exists(spec: LabSpec) -> bool:
    return run(["nft", "list", "table", "inet", spec.nft_table], timeout=10, check=False).ok


def ensure_table(spec: LabSpec) -> None:
    if _table_exists(spec):
        return
    t = spec.nft_table
    script = (
        f"table inet {t} {{\n"
        "  set cut_drop { type ipv4_addr; }\n"
        "  set cut_reject { type ipv4_addr; }\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        "    ip daddr @cut_drop tcp dport 22 drop\n"
        "    ip daddr @cut_reject tcp dport 22 reject with tcp reset\n"
        "  }\n"
        "}\n"
    )
    run(["nft", "-f", "-"], timeout=10, input=script)


def delete_table(spec: LabSpec) -> None:
    """Delete the lab's table, and any SSH lock a lab generation left (lab knob lock_ssh)."""
    if _table_exists(spec):
        run(["nft", "delete", "table", "inet", spec.nft_table], timeout=10)
    listing = run(["nft", "list", "tables"], timeout=10, check=False).stdout.split()
    prefix = "ipexfleet_lock_" + spec.net.replace(".", "_") + "_"
    for name in listing:
        if name.startswith(prefix):
            run(["nft", "delete", "table", "inet", name], timeout=10, check=False)


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
    ensure_table(spec)
    heal(spec, address)
    run(["nft", "add", "element", "inet", spec.nft_table, f"cut_{how}", f"{{ {address} }}"], timeout=10)


def heal(spec: LabSpec, address: str) -> None:
    how = cut_addresses(spec).get(address)
    if how:
        run(["nft", "delete", "element", "inet", spec.nft_table, f"cut_{how}", f"{{ {address} }}"], timeout=10)
