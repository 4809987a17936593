"""A host folder (default.nix, hardware-configuration.nix) and an inventory entry from what enroll
found, through jinja2 templates. Pure: writing is the caller's (write.py)."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import jinja2

from ipex_fleet.enroll.connect import SshOptions
from ipex_fleet.enroll.facts import HardwareFacts
from ipex_fleet.enroll.pciids import Identified

TEMPLATES = Path(__file__).resolve().parent / "templates"
PROFILES = {"xpu": "intel-arc", "cuda": "nvidia", "cpu": "cpu"}


@dataclass(frozen=True)
class HostPlan:
    """What enroll decided for a host, before anything is written."""

    name: str
    address: str
    accelerator: str
    profile: str
    device_selector: str | None
    min_devices: int
    optimisation: dict[str, str]
    summary: str
    warnings: tuple[str, ...]


def plan(name: str, address: str, facts: HardwareFacts, found: Identified) -> HostPlan:
    model = found.model
    selector = None
    optimisation: dict[str, str] = {}
    warnings = list(found.warnings)
    if found.accelerator == "xpu" and model is not None:
        # One single-stack card: pin it, as the example hosts do; several devices: all of them (services.ipex.devices).
        selector = "level_zero:0" if found.devices == 1 else None
        if model.family == "max":
            optimisation = {"level": "O2", "precision": "bf16"}  # the matrix engines run bf16
    elif found.accelerator == "cuda" and model is not None and not model.bf16:
        optimisation = {"precision": "fp16"}  # no bf16 before Ampere
    if found.accelerator == "xpu" and len(facts.render_nodes) < len(found.models):
        warnings.append(f"{len(found.models)} Intel GPU(s) but {len(facts.render_nodes)} render node(s) under /dev/dri: "
                        f"is the i915/xe driver loaded?")
    if not facts.mounts_root:
        warnings.append("its hardware configuration mounts no root filesystem (was it read from the installed "
                        "system?): the flake refuses the host until it does")
    return HostPlan(name, address, found.accelerator, PROFILES[found.accelerator], selector,
                    max(found.devices, 1), optimisation, found.summary(), tuple(warnings))


def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, autoescape=False)


def _gib(n: int) -> str:
    return f"{n / 2**30:.0f}"


def render_host(p: HostPlan, facts: HardwareFacts, metrics_from: tuple[str, ...] = (),
                today: datetime.date | None = None) -> dict[str, str]:
    """{file name: text} of the host's folder."""
    date = (today or datetime.date.today()).isoformat()
    disks = ", ".join(f"{d.name} {_gib(d.size_bytes)} GiB" + (f" ({d.model})" if d.model else "")
                      for d in facts.disks) or "none found"
    env = _env()
    default = env.get_template("default.nix.j2").render(
        name=p.name, summary=p.summary, address=p.address, date=date, cpus=facts.cpus,
        memory_gib=_gib(facts.memory_bytes), disks=disks, render_nodes=", ".join(facts.render_nodes) or "none",
        warnings=p.warnings, profile=p.profile, efi=facts.efi,
        grub_device=f"/dev/{facts.disks[0].name}" if facts.disks else "/dev/sda",
        device_selector=p.device_selector, min_devices=p.min_devices if p.accelerator != "cpu" else 1,
        optimisation=p.optimisation, metrics_from=metrics_from)
    hardware = env.get_template("hardware-configuration.nix.j2").render(
        address=p.address, date=date, text=facts.hardware_configuration.rstrip("\n"))
    return {"default.nix": default, "hardware-configuration.nix": hardware}


def render_inventory_entry(p: HostPlan, ssh: SshOptions) -> str:
    """The inventory line: the SSH settings enroll connected with (so the deploy connects the same way,
    files by absolute path), the accelerator found, and the host's nixosConfiguration."""
    data: list[tuple[str, object]] = [("ssh_hostname", p.address)]
    data += [(k, v) for k, v in (("ssh_user", ssh.user), ("ssh_port", ssh.port)) if v is not None]
    data += [(k, str(Path(v).resolve())) for k, v in (("ssh_key", ssh.key), ("ssh_known_hosts_file", ssh.known_hosts_file),
                                                      ("ssh_config_file", ssh.config_file)) if v is not None]
    data += [("_sudo", True)] if ssh.sudo else []
    data += [("accelerator", p.accelerator), ("nixos_config", p.name)]
    literal = [(k, json.dumps(v) if isinstance(v, str) else repr(v)) for k, v in data]
    return _env().get_template("inventory-entry.py.j2").render(name=p.name, data=literal)
