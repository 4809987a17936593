"""The benchmark workloads (the seeds' categories), device-generic.

Each case builds its tensors once and returns (fn, work) where work converts seconds to the metric.
Each says what it bounds (`bounds`): the device's arithmetic, its memory bandwidth, its host link,
or, for the UNet block, the whole mix. On GPUs each call is captured as a device graph where torch
can (bench.measure), and sized so that one call keeps the device busy far longer than a launch
takes: the numbers are the device's, not the host's launch rate or jitter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from ipex_fleet.host.device import Device


@dataclass(frozen=True)
class Case:
    name: str
    dtype: str
    shape: str
    metric: str  # tflops | gbps | its
    unit: str
    setup: Callable[[Any, Device], tuple[Callable[[], Any], float]]  # -> (fn, units of work per call)
    peak: str | None = None  # the key of bench.peaks.PEAKS this result is measured against
    bounds: str = ""  # what limits this case's speed: what a slowdown of it points at


def _dtype(torch: Any, name: str) -> Any:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def matmul(n: int, dtype: str) -> Case:
    def setup(torch: Any, dev: Device):
        a = torch.randn(n, n, device=dev.torch_device, dtype=_dtype(torch, dtype))
        b = torch.randn(n, n, device=dev.torch_device, dtype=_dtype(torch, dtype))
        return (lambda: torch.mm(a, b)), 2.0 * n * n * n / 1e12

    bounds = ("FLOPs: dense fp32 arithmetic (the vector units)" if dtype == "fp32" else
              f"FLOPs: dense {dtype} on the matrix engines (tensor cores, XMX, AMX)")
    return Case(f"matmul_{dtype}_{n}", dtype, f"{n}x{n}x{n}", "tflops", "TFLOP/s", setup, f"tflops_{dtype}", bounds)


def conv(batch: int, channels: int, size: int, dtype: str) -> Case:
    def setup(torch: Any, dev: Device):
        x = torch.randn(batch, channels, size, size, device=dev.torch_device, dtype=_dtype(torch, dtype))
        layer = torch.nn.Conv2d(channels, channels, 3, padding=1).to(dev.torch_device, _dtype(torch, dtype)).eval()
        flops = 2.0 * batch * channels * size * size * channels * 9 / 1e12

        def fn():
            with torch.inference_mode():
                return layer(x)

        return fn, flops

    return Case(f"conv3x3_{dtype}_b{batch}", dtype, f"{batch}x{channels}x{size}x{size}", "tflops", "TFLOP/s", setup,
                f"tflops_{dtype}", "FLOPs through the convolution library (cuDNN, oneDNN)")


def unet_step(batch: int, channels: int, latent: int, dtype: str) -> Case:
    """One Stable-Diffusion-like UNet block at a latent size: GroupNorm, conv, self-attention, conv."""

    def setup(torch: Any, dev: Device):
        nn = torch.nn
        heads = 8
        dt = _dtype(torch, dtype)

        class Block(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.norm1 = nn.GroupNorm(32, channels)
                self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
                self.norm2 = nn.GroupNorm(32, channels)
                self.qkv = nn.Linear(channels, 3 * channels)
                self.proj = nn.Linear(channels, channels)
                self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

            def forward(self, x):
                h = self.conv1(torch.nn.functional.silu(self.norm1(x)))
                b, c, hh, ww = h.shape
                t = self.norm2(h).flatten(2).transpose(1, 2)
                q, k, v = self.qkv(t).chunk(3, dim=-1)
                q, k, v = (z.reshape(b, -1, heads, c // heads).transpose(1, 2) for z in (q, k, v))
                a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
                a = self.proj(a.transpose(1, 2).reshape(b, -1, c)).transpose(1, 2).reshape(b, c, hh, ww)
                return x + self.conv2(h + a)

        model = Block().to(dev.torch_device, dt).eval()
        x = torch.randn(batch, channels, latent, latent, device=dev.torch_device, dtype=dt)

        def fn():
            with torch.inference_mode():
                return model(x)

        return fn, 1.0

    return Case(f"sd_unet_step_{dtype}", dtype, f"{batch}x{channels}x{latent}x{latent}", "its", "it/s", setup,
                bounds="a UNet block end to end: convolution and attention FLOPs, the norms' memory bandwidth, "
                       "and (where no device graph captures it) the host's kernel launch rate")


def memory_copy(mib: int) -> Case:
    def setup(torch: Any, dev: Device):
        n = mib * (1 << 20) // 4
        x = torch.empty(n, device=dev.torch_device, dtype=torch.float32).fill_(1.0)
        y = torch.empty_like(x)
        return (lambda: y.copy_(x)), 2.0 * n * 4 / 1e9

    return Case(f"mem_copy_{mib}MiB", "fp32", f"{mib}MiB", "gbps", "GB/s", setup, "mem_gbps",
                "memory bandwidth (bytes read plus written)")


def transfer(mib: int, direction: str) -> Case:
    def setup(torch: Any, dev: Device):
        n = mib * (1 << 20) // 4
        host = torch.empty(n, dtype=torch.float32).pin_memory()
        device = torch.empty(n, dtype=torch.float32, device=dev.torch_device)
        if direction == "h2d":
            return (lambda: device.copy_(host, non_blocking=True)), n * 4 / 1e9
        return (lambda: host.copy_(device, non_blocking=True)), n * 4 / 1e9

    return Case(f"{direction}_{mib}MiB", "fp32", f"{mib}MiB", "gbps", "GB/s", setup,
                bounds=f"the host link ({'host to device' if direction == 'h2d' else 'device to host'}, "
                       "pinned memory: PCIe or the like)")


def plan(device: Device, quick: bool) -> list[Case]:
    """Sizes that reach peak on GPUs; small ones on the CPU, so --quick stays within 30 s there."""
    if device.type == "cpu":
        n = 1024 if quick else 2048
        return [
            matmul(n, "fp32"), matmul(256, "bf16"), matmul(128, "fp16"),
            conv(4 if quick else 8, 32, 32, "fp32"),
            unet_step(1, 64, 32, "fp32"),
            memory_copy(128 if quick else 512),
        ]
    # Every call keeps a GPU busy for a tenth of a millisecond or more (an H200: matmul 4096 bf16
    # 0.2 ms, the conv 0.1 ms, the UNet block 1 ms, the copies 0.1-5 ms), and is replayed from a graph.
    n = 4096 if quick else 8192
    return [
        matmul(n, "fp32"), matmul(n, "bf16"), matmul(n, "fp16"),
        conv(32 if quick else 64, 128, 64, "fp16"),
        unet_step(4 if quick else 8, 320, 64, "fp16"),
        memory_copy(256 if quick else 1024),
        transfer(256, "h2d"), transfer(256, "d2h"),
    ]
