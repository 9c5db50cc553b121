"""Accelerator presets: peak dense bf16 FLOP/s and HBM bandwidth for the roofline compute model, and
HBM capacity for the KV cache (workloads/kv_memory.py).

Values are the vendor's datasheet peaks, for dense math (no 2:4 structured
sparsity). The roofline divides by these peaks, so it gives the fastest an
operator can run; the ``*_efficiency`` factors derate them when a user wants
measured rather than peak throughput.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nicemu.errors import WorkloadError


@dataclass(frozen=True)
class Accelerator:
    """One GPU: what bounds a GEMM (FLOP/s) and a GEMV or attention read (HBM bytes/s)."""

    name: str
    peak_bf16_flops: float      # FLOP/s, dense tensor-core bf16
    hbm_GBps: float             # 1e9 bytes/s
    memory_GB: float            # HBM capacity, 1e9 bytes
    flops_efficiency: float = 1.0   # fraction of peak FLOP/s reached by GEMMs
    hbm_efficiency: float = 1.0     # fraction of peak HBM bandwidth reached by reads

    def __post_init__(self) -> None:
        for key in ("peak_bf16_flops", "hbm_GBps", "memory_GB"):
            if not getattr(self, key) > 0:
                raise WorkloadError(f"accelerator {self.name}: {key} must be > 0")
        for key in ("flops_efficiency", "hbm_efficiency"):
            if not 0 < getattr(self, key) <= 1:
                raise WorkloadError(f"accelerator {self.name}: {key} must be in (0, 1]")

    @property
    def flops_per_us(self) -> float:
        """Sustained FLOP per microsecond."""
        return self.peak_bf16_flops * self.flops_efficiency * 1e-6

    @property
    def bytes_per_us(self) -> float:
        """Sustained HBM bytes per microsecond."""
        return self.hbm_GBps * self.hbm_efficiency * 1e3


ACCELERATORS: dict[str, Accelerator] = {a.name: a for a in (
    # NVIDIA A100 Tensor Core GPU datasheet (2021), A100 80GB SXM column:
    # BFLOAT16 Tensor Core 312 TFLOPS (624 with sparsity), GPU memory bandwidth 2,039 GB/s, 80 GB HBM2e.
    Accelerator("A100-80G", peak_bf16_flops=312e12, hbm_GBps=2039.0, memory_GB=80.0),
    # NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column: BF16 Tensor Core 1,979 TFLOPS
    # *with sparsity*, i.e. 989 TFLOPS dense; GPU memory bandwidth 3.35 TB/s; 80 GB HBM3.
    Accelerator("H100-SXM", peak_bf16_flops=989e12, hbm_GBps=3350.0, memory_GB=80.0),
)}


def load_accelerator(name: str) -> Accelerator:
    """A preset by name; case, dashes and underscores are ignored (``h100`` and ``a100`` work too)."""
    wanted = re.sub(r"[^a-z0-9]", "", name.lower())
    for acc in ACCELERATORS.values():
        key = re.sub(r"[^a-z0-9]", "", acc.name.lower())
        if wanted in (key, key[:4]):
            return acc
    raise WorkloadError(f"unknown accelerator '{name}'; use one of {', '.join(ACCELERATORS)}")
