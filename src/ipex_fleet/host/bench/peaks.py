"""Known devices' peaks (REFERENCE.md), so every result can show its efficiency: measured / peak.

Dense fp16/bf16 matrix peaks in TFLOP/s and memory bandwidth in GB/s.
"""

from __future__ import annotations

PEAKS: dict[str, dict[str, float]] = {
    "Arc A770": {"tflops_bf16": 138.0, "tflops_fp16": 138.0, "mem_gbps": 560.0},
    "Arc B580": {"tflops_bf16": 117.0, "tflops_fp16": 117.0, "mem_gbps": 456.0},
    "Max 1550": {"tflops_bf16": 839.0, "tflops_fp16": 839.0, "mem_gbps": 3280.0},
    "H100": {"tflops_bf16": 989.0, "tflops_fp16": 989.0, "tflops_fp32": 67.0, "mem_gbps": 3350.0},
    "H200": {"tflops_bf16": 989.0, "tflops_fp16": 989.0, "tflops_fp32": 67.0, "mem_gbps": 4800.0},
}


def peak_for(device_name: str, key: str) -> float | None:
    """The peak of the first known device whose name appears in `device_name`."""
    for known, peaks in PEAKS.items():
        if known.lower() in device_name.lower():
            return peaks.get(key)
    return None


def efficiency(device_name: str, key: str | None, value: float) -> float | None:
    peak = peak_for(device_name, key) if key else None
    return round(value / peak, 4) if peak else None
