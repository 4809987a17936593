"""`ipex-fleet enroll`: PCI identification (pure), the host folder and inventory entry it writes, its
refusals of bad input, and the generated files evaluated in the flake harness. Over real SSH to lab
hosts that show an A770, a Max 1550, an H100 and a CPU box: tests/test_enroll_lab.py."""

from __future__ import annotations

import datetime
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ipex_fleet.enroll import pciids
from ipex_fleet.enroll.connect import SshOptions
from ipex_fleet.enroll.facts import Disk, HardwareFacts, check_hardware_configuration, parse_disks, parse_system
from ipex_fleet.enroll.pciids import PciDevice, identify, parse_sysfs_line
from ipex_fleet.enroll.render import plan, render_host, render_inventory_entry
from ipex_fleet.enroll.write import inventory_edit
from ipex_fleet.common.errors import UserError
from ipex_fleet.lab import hardware as lab_hardware

from .conftest import REPO
from .nixeval import run as nixeval

BRIDGE = PciDevice("0000:00:00.0", 0x8086, 0x1237, 0x060000)
NVME = PciDevice("0000:01:00.0", 0x144D, 0xA808, 0x010802)
ASPEED = PciDevice("0000:05:00.0", 0x1A03, 0x2000, 0x030000)
A770 = PciDevice("0000:03:00.0", 0x8086, 0x56A0, 0x030000)
A770_AUDIO = PciDevice("0000:04:00.0", 0x8086, 0x4F90, 0x040300)
MAX1550 = PciDevice("0000:29:00.0", 0x8086, 0x0BD5, 0x038000)
H100 = PciDevice("0000:18:00.0", 0x10DE, 0x2330, 0x030200)
NVSWITCH = PciDevice("0000:07:00.0", 0x10DE, 0x22A3, 0x068000)


def test_an_arc_a770_is_xpu_with_one_device():
    found = identify([BRIDGE, NVME, A770, A770_AUDIO])
    assert (found.accelerator, found.summary(), found.devices, found.warnings) == ("xpu", "Intel Arc A770", 1, ())
    assert found.model is not None and found.model.fp64 is False and found.model.family == "arc-a"


def test_a_max_1550_is_xpu_with_its_two_stacks():
    found = identify([BRIDGE, ASPEED, MAX1550])
    assert (found.accelerator, found.summary(), found.devices, found.warnings) == \
        ("xpu", "Intel Data Center GPU Max 1550", 2, ())
    assert identify([MAX1550, PciDevice("0000:2a:00.0", 0x8086, 0x0BD5, 0x038000)]).summary() == \
        "2x Intel Data Center GPU Max 1550"


def test_an_h100_is_cuda_by_vendor_with_its_model_and_nvswitch_is_not_a_gpu():
    found = identify([BRIDGE, ASPEED, H100, NVSWITCH])
    assert (found.accelerator, found.summary(), found.devices, found.warnings) == \
        ("cuda", "NVIDIA H100 SXM5 80GB", 1, ())


def test_an_nvidia_gpu_of_unknown_model_is_still_cuda():
    found = identify([PciDevice("0000:18:00.0", 0x10DE, 0x9999, 0x030200)])
    assert (found.accelerator, found.summary(), found.warnings) == ("cuda", "NVIDIA GPU (device 0x9999)", ())


def test_a_cpu_box_with_a_bmc_console_is_cpu_without_warning():
    assert identify([BRIDGE, NVME, ASPEED]) == pciids.Identified("cpu", (), (), ())


@pytest.mark.parametrize("device,ids", [
    (PciDevice("0000:11:00.0", 0x1002, 0x74A1, 0x038000), "1002:74a1 (class 0x038000) at 0000:11:00.0"),  # AMD MI300X
    (PciDevice("0000:00:02.0", 0x8086, 0x4680, 0x030000), "8086:4680 (class 0x030000) at 0000:00:02.0"),  # Intel iGPU
    (PciDevice("0000:0c:00.0", 0x1DA3, 0x1020, 0x120000), "1da3:1020 (class 0x120000) at 0000:0c:00.0"),  # Gaudi 2
])
def test_an_unknown_accelerator_is_cpu_with_a_warning_naming_its_ids(device, ids):
    found = identify([BRIDGE, ASPEED, device])
    assert found.accelerator == "cpu" and found.unknown == (device,)
    assert found.warnings == (f"unknown accelerator or display device {ids}: enrolled as cpu",)


def test_intel_and_nvidia_together_enroll_the_intel_gpus_and_say_so():
    found = identify([A770, H100])
    assert found.accelerator == "xpu" and found.summary() == "Intel Arc A770"
    assert "the NVIDIA ones are not used" in found.warnings[0]


@pytest.mark.parametrize("device,name", [(0x56A0, "Intel Arc A770"), (0xE20B, "Intel Arc B580"),
                                         (0x56C0, "Intel Data Center GPU Flex 170"), (0x0BDA, "Intel Data Center GPU Max 1100")])
def test_intel_families_by_device_id(device, name):
    found = identify([PciDevice("0000:03:00.0", 0x8086, device, 0x030000)])
    assert found.accelerator == "xpu" and found.summary() == name


def test_sysfs_lines_and_system_facts_parse():
    assert parse_sysfs_line("0000:03:00.0 0x8086 0x56a0 0x030000") == A770
    with pytest.raises(ValueError):
        parse_sysfs_line("0000:03:00.0 0x8086")
    assert parse_system(["box1", "64", "263921664", "efi", "nixos"]) == ("box1", 64, 263921664 * 1024, True, "nixos")
    with pytest.raises(ValueError):
        parse_system(["box1", "many"])
    assert parse_disks(["nvme0n1 3907029168 Samsung_SSD_990", "sda 0 ", "vda 209715200"]) == \
        (Disk("nvme0n1", 3907029168 * 512, "Samsung_SSD_990"), Disk("vda", 209715200 * 512, ""))


def test_a_hardware_configuration_must_be_a_module():
    with pytest.raises(UserError, match="did not print a NixOS module"):
        check_hardware_configuration("error: permission denied\n", "box1")


def _lab_hardware_config(efi: bool = True) -> str:
    """What the lab's nixos-generate-config stand-in prints (it has the real tool's shape)."""
    script = REPO / "src/ipex_fleet/lab/guest/nixos-generate-config"
    proc = subprocess.run([sys.executable, str(script), "--show-hardware-config"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    if efi and 'fileSystems."/boot"' not in text:  # this machine boots by BIOS: add the ESP an EFI box mounts
        text = text.replace("  swapDevices", '  fileSystems."/boot" =\n    { device = "/dev/disk/by-uuid/1234-ABCD";\n'
                                             '      fsType = "vfat";\n    };\n\n  swapDevices')
    return text


def _facts(pci: list[PciDevice], render: tuple[str, ...], efi: bool = True) -> HardwareFacts:
    return HardwareFacts("box1", "nixos", 64, 256 * 2**30, efi, (Disk("nvme0n1", 2 * 10**12, "Samsung_SSD_990"),),
                         tuple(pci), render, _lab_hardware_config(efi))


BOXES = {
    "arc-a770": ([BRIDGE, NVME, A770, A770_AUDIO], ("/dev/dri/renderD128",)),
    "max-1550": ([BRIDGE, NVME, ASPEED, MAX1550], ("/dev/dri/renderD128",)),
    "h100": ([BRIDGE, NVME, ASPEED, H100], ()),
    "cpu": ([BRIDGE, NVME, ASPEED], ()),
}


def test_the_lab_boxes_are_the_unit_tests_boxes():
    """The lab's `gpu` knob shows the devices these tests identify."""
    for gpu, (pci, _render) in BOXES.items():
        devices, _ = lab_hardware.GPUS[gpu]
        ids = {(d.vendor, d.device, d.klass) for d in devices}
        assert {(d.vendor, d.device, d.klass) for d in pci if d not in (BRIDGE, NVME)} <= ids | {(0x8086, 0x4F90, 0x040300)}


def test_the_host_folder_for_each_box():
    today = datetime.date(2026, 11, 29)
    want = {
        "arc-a770": ("intel-arc", ['services.ipex.deviceSelector = "level_zero:0";']),
        "max-1550": ("intel-arc", ["services.ipex-fleet.minDevices = 2;",
                                   'services.ipex-comfyui.optimisation = { level = "O2"; precision = "bf16"; };']),
        "h100": ("nvidia", []),
        "cpu": ("cpu", []),
    }
    for box, (pci, render) in BOXES.items():
        facts = _facts(pci, render)
        p = plan(f"{box}-9", "10.40.0.99", facts, identify(pci))
        files = render_host(p, facts, ("10.40.9.10",), today)
        default = files["default.nix"]
        profile, lines = want[box]
        assert f"imports = [ ../../profiles/{profile}.nix ];" in default, default
        for line in lines:
            assert line in default, (box, default)
        assert 'services.ipex-fleet.metrics.allowFrom = [ "10.40.9.10" ];' in default
        assert "boot.loader.systemd-boot.enable = true;" in default and "on 2026-11-29" in default
        assert files["hardware-configuration.nix"].startswith(
            "# Read from 10.40.0.99 by `ipex-fleet enroll` on 2026-11-29: its `nixos-generate-config --show-hardware-config`.\n"
            "# Do not modify this file!")
    bios = _facts(BOXES["cpu"][0], (), efi=False)
    default = render_host(plan("cpu-9", "10.40.0.99", bios, identify(bios.pci)), bios)["default.nix"]
    assert 'boot.loader.grub.device = "/dev/nvme0n1";' in default and "systemd-boot" not in default
    assert "# services.ipex-fleet.metrics.allowFrom" in default  # closed until the user says who scrapes


def test_a_missing_render_node_and_an_unknown_device_are_warned_in_the_file():
    facts = _facts([A770, PciDevice("0000:11:00.0", 0x1002, 0x74A1, 0x038000)], ())
    p = plan("arc-9", "10.40.0.99", facts, identify(facts.pci))
    default = render_host(p, facts)["default.nix"]
    assert "# Warning at enrolment: unknown accelerator or display device 1002:74a1" in default
    assert "1 Intel GPU(s) but 0 render node(s)" in default


def test_the_inventory_entry_goes_into_the_last_wave_and_parses(tmp_path):
    inventory = tmp_path / "prod.py"
    shutil.copy(REPO / "inventories/prod.py", inventory)
    facts = _facts(*BOXES["h100"])
    p = plan("h100-09", "10.40.2.19", facts, identify(facts.pci))
    entry = render_inventory_entry(p, SshOptions(user="deploy", sudo=True))
    assert entry == ('    ("h100-09", {"ssh_hostname": "10.40.2.19", "ssh_user": "deploy", "_sudo": True, '
                     '"accelerator": "cuda", "nixos_config": "h100-09"}),\n')
    keyed = render_inventory_entry(p, SshOptions(port=2222, key="keys/id_ed25519", known_hosts_file="/etc/kh"))
    assert keyed == ('    ("h100-09", {"ssh_hostname": "10.40.2.19", "ssh_port": 2222, '
                     f'"ssh_key": "{Path("keys/id_ed25519").resolve()}", "ssh_known_hosts_file": "/etc/kh", '
                     '"accelerator": "cuda", "nixos_config": "h100-09"}),\n')
    edit = inventory_edit(inventory, "h100-09", entry, None)
    assert edit.group == "wave2" and edit.text is not None
    namespace: dict = {}
    exec(compile(edit.text.replace("refuse_empty_selection(globals())", ""), "prod.py", "exec"), namespace)
    assert namespace["wave2"][-1] == ("h100-09", {"ssh_hostname": "10.40.2.19", "ssh_user": "deploy", "_sudo": True,
                                                  "accelerator": "cuda", "nixos_config": "h100-09"})
    assert inventory_edit(inventory, "h100-01", entry, None).text is None  # already listed: left alone


def test_a_one_line_group_and_a_new_group(tmp_path):
    inventory = tmp_path / "inv.py"
    inventory.write_text('canary = [("a", {})]\nwave1 = []\nrefuse(globals())\n')
    assert inventory_edit(inventory, "b", '    ("b", {}),\n', "wave1").text == \
        'canary = [("a", {})]\nwave1 = [\n    ("b", {}),\n]\nrefuse(globals())\n'
    assert inventory_edit(inventory, "b", '    ("b", {}),\n', "canary").text == \
        'canary = [\n    ("a", {}),\n    ("b", {}),\n]\nwave1 = []\nrefuse(globals())\n'
    new = inventory_edit(inventory, "b", '    ("b", {}),\n', "spare").text
    assert new is not None and new.index("spare = [") < new.index("refuse(globals())")


def _enroll(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ipex_fleet", "enroll", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("args,says", [
    (["root@10.0.0.1"], "give the user with --ssh-user, not user@host"),
    (["10.0.0.1;reboot"], "is not an address or host name"),
    (["10.0.0.1", "--name", "Arc_1"], "--name 'Arc_1': use lower-case letters"),
    (["10.0.0.1", "--name", "arc-a770-01"], "host arc-a770-01 already exists (flake/hosts/arc-a770-01); give --force"),
    (["10.0.0.1", "--ssh-user", "root;x"], "--ssh-user 'root;x' is not a user name"),
    (["10.0.0.1", "--ssh-key", "/nonexistent/key"], "--ssh-key /nonexistent/key: no such file"),
    (["10.0.0.1", "--metrics-from", "prometheus"], "--metrics-from 'prometheus' is not an IP address"),
    (["10.0.0.1", "--inventory", "/nonexistent.py"], "inventory /nonexistent.py not found"),
    (["10.0.0.1", "--flake", "/tmp"], "--flake /tmp: no flake.nix with a hosts/ folder there"),
    (["10.0.0.1", "--ssh-port", "0"], "--ssh-port 0: give a port from 1 to 65535"),
])
def test_bad_input_is_one_line_before_any_connection(args, says):
    # 10.0.0.1 is never reached: every refusal comes before a connection (nothing leaves loopback).
    proc = _enroll(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert says in proc.stderr


def test_a_box_that_does_not_answer_is_one_line():
    proc = _enroll("127.0.0.1", "--ssh-port", "1", "--name", "nobody-01")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("ipex-fleet: error: cannot connect to 127.0.0.1 over SSH:")


@pytest.fixture(scope="module")
def harness_flake(tmp_path_factory) -> Path:
    lib = nixeval.lib_path()
    if lib is None:
        pytest.skip("no nixpkgs lib for the flake harness")
    flake = nixeval.pushed_copy(REPO / "flake", tmp_path_factory.mktemp("enrolled"))
    for box, (pci, render) in BOXES.items():
        for efi in (True, False):
            facts = _facts(pci, render, efi)
            name = f"{box}-{'efi' if efi else 'bios'}"
            for file, text in render_host(plan(name, "10.40.0.99", facts, identify(pci)), facts).items():
                (flake / "hosts" / name).mkdir(exist_ok=True)
                (flake / "hosts" / name / file).write_text(text)
    return flake


@pytest.mark.parametrize("box", list(BOXES))
@pytest.mark.parametrize("efi", [True, False])
def test_generated_hosts_evaluate_in_the_harness(harness_flake, box, efi):
    lib = nixeval.lib_path()
    assert lib is not None
    h = nixeval.Harness(lib, harness_flake)
    name = f"{box}-{'efi' if efi else 'bios'}"
    assert name in h.hosts
    ev = h.host(name)
    assert ev.error is None, ev.error
    assert ev.facts["failedAssertions"] == []
    # The only warning: nothing may scrape the node exporter until allowFrom is set.
    assert [w for w in ev.facts["warnings"] if "metrics.allowFrom is empty" not in w] == []
    accelerator = {"arc-a770": "xpu", "max-1550": "xpu", "h100": "cuda", "cpu": "cpu"}[box]
    assert ev.facts["fleet"]["accelerator"] == accelerator
    assert ev.facts["comfyui"]["torch"] == accelerator
    if box == "max-1550":
        assert "--bf16-unet" in ev.facts["comfyui"]["execStart"]
