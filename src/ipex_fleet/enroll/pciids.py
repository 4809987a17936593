"""Which accelerator a box has, from its PCI devices (vendor, device and class ids, as
/sys/bus/pci/devices/*/{vendor,device,class} give them). Pure functions: no host is touched here.

Intel GPUs are recognised by device id (Arc A- and B-series, Flex, Data Center GPU Max); NVIDIA
GPUs by vendor id 0x10de, with the model where its device id is known. Display controllers that
are only a console (a server's BMC, a VM's virtual display) are not accelerators. Any other
display or processing-accelerator device is unknown: the box is enrolled as cpu, with a warning
that names its ids.
"""

from __future__ import annotations

from dataclasses import dataclass

INTEL = 0x8086
NVIDIA = 0x10DE


@dataclass(frozen=True)
class PciDevice:
    slot: str  # 0000:03:00.0
    vendor: int
    device: int
    klass: int  # the 24-bit class code: 0x030000 VGA, 0x030200 3D controller, 0x120000 accelerator

    @property
    def ids(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"


@dataclass(frozen=True)
class Model:
    name: str
    family: str  # arc-a | arc-b | flex | max | nvidia
    stacks: int = 1  # devices torch sees per card (a Max 1550 shows its two stacks)
    memory_gb: int | None = None
    fp64: bool = True
    bf16: bool = True


# Intel device ids (Linux i915/xe pciids, Intel's product pages).
INTEL_MODELS: dict[int, Model] = {
    0x56A0: Model("Intel Arc A770", "arc-a", memory_gb=16, fp64=False),
    0x56A1: Model("Intel Arc A750", "arc-a", memory_gb=8, fp64=False),
    0x56A2: Model("Intel Arc A580", "arc-a", memory_gb=8, fp64=False),
    0x56A5: Model("Intel Arc A380", "arc-a", memory_gb=6, fp64=False),
    0x56A6: Model("Intel Arc A310", "arc-a", memory_gb=4, fp64=False),
    0x5690: Model("Intel Arc A770M", "arc-a", memory_gb=16, fp64=False),
    0x5691: Model("Intel Arc A730M", "arc-a", memory_gb=12, fp64=False),
    0x5692: Model("Intel Arc A550M", "arc-a", memory_gb=8, fp64=False),
    0x5693: Model("Intel Arc A370M", "arc-a", memory_gb=4, fp64=False),
    0x5694: Model("Intel Arc A350M", "arc-a", memory_gb=4, fp64=False),
    0x56B0: Model("Intel Arc Pro A30M", "arc-a", fp64=False),
    0x56B1: Model("Intel Arc Pro A40/A50", "arc-a", fp64=False),
    0x56B2: Model("Intel Arc Pro A60M", "arc-a", fp64=False),
    0x56B3: Model("Intel Arc Pro A60", "arc-a", memory_gb=12, fp64=False),
    0xE20B: Model("Intel Arc B580", "arc-b", memory_gb=12, fp64=False),
    0xE20C: Model("Intel Arc B570", "arc-b", memory_gb=10, fp64=False),
    0xE211: Model("Intel Arc Pro B60", "arc-b", memory_gb=24, fp64=False),
    0xE212: Model("Intel Arc Pro B50", "arc-b", memory_gb=16, fp64=False),
    0x56C0: Model("Intel Data Center GPU Flex 170", "flex", memory_gb=16, fp64=False),
    0x56C1: Model("Intel Data Center GPU Flex 140", "flex", memory_gb=12, fp64=False),
    0x0BD5: Model("Intel Data Center GPU Max 1550", "max", stacks=2, memory_gb=128),
    0x0BD6: Model("Intel Data Center GPU Max 1550", "max", stacks=2, memory_gb=128),
    0x0BD9: Model("Intel Data Center GPU Max 1100", "max", memory_gb=48),
    0x0BDA: Model("Intel Data Center GPU Max 1100", "max", memory_gb=48),
    0x0BDB: Model("Intel Data Center GPU Max 1100", "max", memory_gb=48),
    0x0BD0: Model("Intel Data Center GPU Max", "max"),
    0x0BD7: Model("Intel Data Center GPU Max", "max"),
    0x0BD8: Model("Intel Data Center GPU Max", "max"),
    0x0B69: Model("Intel Data Center GPU Max", "max"),
    0x0B6E: Model("Intel Data Center GPU Max", "max"),
}

# NVIDIA device ids where the model is known; any other NVIDIA GPU is still cuda.
NVIDIA_MODELS: dict[int, Model] = {
    0x2330: Model("NVIDIA H100 SXM5 80GB", "nvidia", memory_gb=80),
    0x2331: Model("NVIDIA H100 PCIe", "nvidia", memory_gb=80),
    0x2321: Model("NVIDIA H100 NVL", "nvidia", memory_gb=94),
    0x2335: Model("NVIDIA H200", "nvidia", memory_gb=141),
    0x20B0: Model("NVIDIA A100 SXM4 40GB", "nvidia", memory_gb=40),
    0x20B2: Model("NVIDIA A100 SXM4 80GB", "nvidia", memory_gb=80),
    0x20B5: Model("NVIDIA A100 PCIe 80GB", "nvidia", memory_gb=80),
    0x20F1: Model("NVIDIA A100 PCIe 40GB", "nvidia", memory_gb=40),
    0x26B9: Model("NVIDIA L40S", "nvidia", memory_gb=48),
    0x27B8: Model("NVIDIA L4", "nvidia", memory_gb=24),
    0x2236: Model("NVIDIA A10", "nvidia", memory_gb=24),
    0x2684: Model("NVIDIA GeForce RTX 4090", "nvidia", memory_gb=24),
    0x2204: Model("NVIDIA GeForce RTX 3090", "nvidia", memory_gb=24),
    0x1EB8: Model("NVIDIA T4", "nvidia", memory_gb=16, bf16=False),
    0x1DB1: Model("NVIDIA V100 SXM2 16GB", "nvidia", memory_gb=16, bf16=False),
}

# Display controllers that only drive a console: a BMC's (ASPEED, Matrox G200e) or a VM's.
CONSOLE_VENDORS = {0x1A03: "ASPEED", 0x102B: "Matrox", 0x1234: "QEMU", 0x1AF4: "virtio", 0x15AD: "VMware",
                   0x1013: "Cirrus Logic", 0x1B36: "Red Hat"}


def _is_candidate(d: PciDevice) -> bool:
    """Display controllers (class 0x03) and processing accelerators (0x12)."""
    return (d.klass >> 16) in (0x03, 0x12)


@dataclass(frozen=True)
class Identified:
    accelerator: str  # xpu | cuda | cpu
    models: tuple[tuple[PciDevice, Model], ...]
    unknown: tuple[PciDevice, ...]
    warnings: tuple[str, ...]

    @property
    def model(self) -> Model | None:
        return self.models[0][1] if self.models else None

    @property
    def devices(self) -> int:
        """What torch sees: every card's stacks."""
        return sum(m.stacks for _d, m in self.models)

    def summary(self) -> str:
        if not self.models:
            return "no accelerator (cpu)"
        names: dict[str, int] = {}
        for _d, m in self.models:
            names[m.name] = names.get(m.name, 0) + 1
        return ", ".join(f"{n}x {name}" if n > 1 else name for name, n in names.items())


def model_of(d: PciDevice) -> Model | None:
    if d.vendor == INTEL and (d.klass >> 16) == 0x03:
        return INTEL_MODELS.get(d.device)
    if d.vendor == NVIDIA and (d.klass >> 16) == 0x03:
        return NVIDIA_MODELS.get(d.device) or Model(f"NVIDIA GPU (device {d.device:#06x})", "nvidia")
    return None


def identify(devices: list[PciDevice] | tuple[PciDevice, ...]) -> Identified:
    """The box's accelerator: xpu for Intel GPUs, cuda for NVIDIA, cpu for neither. Unknown display or
    accelerator devices make a warning naming their ids; they never make a box an accelerator host."""
    known: list[tuple[PciDevice, Model]] = []
    unknown: list[PciDevice] = []
    for d in sorted(devices, key=lambda d: d.slot):
        if not _is_candidate(d):
            continue
        m = model_of(d)
        if m is not None:
            known.append((d, m))
        elif d.vendor not in CONSOLE_VENDORS:
            unknown.append(d)
    warnings = [f"unknown accelerator or display device{'s' if len(unknown) > 1 else ''} "
                + ", ".join(f"{d.ids} (class {d.klass:#08x}) at {d.slot}" for d in unknown)
                + (": not used; enrolled without it" if known else ": enrolled as cpu")] if unknown else []
    kinds = {("cuda" if m.family == "nvidia" else "xpu") for _d, m in known}
    if len(kinds) > 1:
        # One accelerator per host (the profiles are per accelerator): the Intel GPUs, the others named.
        warnings.append("both Intel and NVIDIA GPUs: enrolled as xpu on the Intel GPUs; the NVIDIA ones are not used")
        known = [(d, m) for d, m in known if m.family != "nvidia"]
        kinds = {"xpu"}
    accelerator = kinds.pop() if kinds else "cpu"
    return Identified(accelerator, tuple(known), tuple(unknown), tuple(warnings))


def parse_sysfs_line(line: str) -> PciDevice:
    """`SLOT VENDOR DEVICE CLASS` as the enroll's remote read prints them (0x-prefixed hex from sysfs)."""
    parts = line.split()
    if len(parts) != 4:
        raise ValueError(f"not a PCI device line: {line!r}")
    slot, vendor, device, klass = parts
    return PciDevice(slot, int(vendor, 16), int(device, 16), int(klass, 16))
