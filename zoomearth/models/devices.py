"""The CUDA devices this process may use, found without importing torch.

:func:`visible_cuda_devices` asks torch when it is already imported, else ``nvidia-smi`` or the
driver's ``/proc`` folder, and applies ``CUDA_VISIBLE_DEVICES`` as CUDA would. ``zoomearth
models`` uses it to show a budget per device without paying for a torch import.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["CudaDevice", "visible_cuda_devices"]


@dataclass(frozen=True)
class CudaDevice:
    """A CUDA device this process may use, as the driver reports it.

    Attributes:
        name: The pool's device name, ``"cuda:<index>"`` numbered as CUDA numbers the visible
            devices (after ``CUDA_VISIBLE_DEVICES``).
        free_bytes: Free memory now, when known without creating a CUDA context.
        total_bytes: Total memory, when known.
    """

    name: str
    free_bytes: int | None = None
    total_bytes: int | None = None


_NVIDIA_SMI_QUERY = (
    "--query-gpu=index,uuid,memory.free,memory.total",
    "--format=csv,noheader,nounits",
)
_PROC_NVIDIA_GPUS = "/proc/driver/nvidia/gpus"


@dataclass(frozen=True)
class _PhysicalGpu:
    index: int
    uuid: str | None
    free_bytes: int | None
    total_bytes: int | None


def _mib(text: str) -> int | None:
    try:
        return int(float(text)) * 2**20
    except ValueError:  # "[N/A]" and the like
        return None


def _gpus_from_nvidia_smi(executable: str) -> list[_PhysicalGpu] | None:
    import subprocess

    try:
        proc = subprocess.run(
            [executable, *_NVIDIA_SMI_QUERY],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    gpus = []
    for line in proc.stdout.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 4 or not fields[0].isdigit():
            continue
        index, uuid, free, total = fields[:4]
        gpus.append(_PhysicalGpu(int(index), uuid or None, _mib(free), _mib(total)))
    return gpus


def _gpus_from_proc(proc_dir: str) -> list[_PhysicalGpu]:
    try:
        count = sum(1 for _ in os.scandir(proc_dir))
    except OSError:
        return []
    return [_PhysicalGpu(i, None, None, None) for i in range(count)]


def _apply_visible_devices(gpus: list[_PhysicalGpu], spec: str | None) -> list[_PhysicalGpu]:
    """Select and order GPUs as CUDA does for ``CUDA_VISIBLE_DEVICES`` (None: all of them).

    Entries are physical indexes, (prefixes of) ``GPU-...`` UUIDs or ``MIG-...`` instances
    (memory unknown); like CUDA, the list ends at the first entry that names no device (or
    repeats one).
    """
    if spec is None:
        return list(gpus)
    chosen: list[_PhysicalGpu] = []
    for raw in spec.split(","):
        item = raw.strip()
        if item.isdigit():
            match = next((g for g in gpus if g.index == int(item)), None)
        elif item.startswith("GPU-"):
            match = next((g for g in gpus if g.uuid and g.uuid.startswith(item)), None)
        elif item.startswith("MIG-"):
            match = _PhysicalGpu(-1, item, None, None)
        else:
            match = None
        if match is None or match in chosen:
            break
        chosen.append(match)
    return chosen


def visible_cuda_devices(
    *,
    environ: Mapping[str, str] | None = None,
    allow_torch: bool = True,
    nvidia_smi: str | None = "nvidia-smi",
    proc_dir: str = _PROC_NVIDIA_GPUS,
) -> list[CudaDevice]:
    """The CUDA devices this process can use, found without importing torch.

    When torch is already imported (and ``allow_torch``), it is asked -- that costs nothing more.
    Otherwise the driver is: ``nvidia-smi`` (which also gives each device's free memory), else
    the entries of ``/proc/driver/nvidia/gpus``; ``CUDA_VISIBLE_DEVICES`` then selects and orders
    them as CUDA would. Physical GPUs are numbered in PCI bus order (nvidia-smi's); CUDA numbers
    them the same way with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` or when the GPUs are alike (its
    default order puts the fastest first).

    Args:
        environ: Environment to read ``CUDA_VISIBLE_DEVICES`` from (default ``os.environ``).
        allow_torch: Ask torch when it is already imported.
        nvidia_smi: The nvidia-smi executable (looked up on ``PATH``); None skips it.
        proc_dir: The driver's per-GPU folder, used when nvidia-smi gives no answer.

    Returns:
        The devices, ``cuda:0`` first; empty without a driver or a visible device.
    """
    torch = sys.modules.get("torch") if allow_torch else None
    if torch is not None:
        try:
            count = int(torch.cuda.device_count())
        except Exception:  # noqa: BLE001 - a broken CUDA install means no usable device
            count = 0
        return [CudaDevice(f"cuda:{i}") for i in range(count)]
    env = os.environ if environ is None else environ
    gpus: list[_PhysicalGpu] | None = None
    if nvidia_smi:
        import shutil

        executable = shutil.which(nvidia_smi, path=env.get("PATH"))
        if executable:
            gpus = _gpus_from_nvidia_smi(executable)
    if gpus is None:
        gpus = _gpus_from_proc(proc_dir)
    visible = _apply_visible_devices(gpus, env.get("CUDA_VISIBLE_DEVICES"))
    return [CudaDevice(f"cuda:{i}", g.free_bytes, g.total_bytes) for i, g in enumerate(visible)]


def _is_cuda(device: str) -> bool:
    return device == "cuda" or device.startswith("cuda:")
