"""Models shared by the planner and the tools: the GPU-sharing model pool.

Every model is obtained from one :class:`ModelPool` (usually :func:`get_default_pool`)::

    spec = ModelSpec("sam:vit_b:/models/sam_b.pth", load=load_sam, size_bytes=375_000_000)
    masks = pool.run(spec, lambda sam, device: segment(sam, image, device), device="auto")

Importing this package loads no model and does not import torch.
"""

from zoomearth.models.pool import (
    CudaDevice,
    DeviceStats,
    ModelPool,
    ModelSpec,
    ModelStats,
    PoolStats,
    PoolWarning,
    available_ram_bytes,
    default_move,
    format_bytes,
    format_stats,
    get_default_pool,
    is_out_of_memory,
    measure_bytes,
    parse_bytes,
    pool_from_settings,
    set_default_pool,
    visible_cuda_devices,
)

__all__ = [
    "CudaDevice",
    "DeviceStats",
    "ModelPool",
    "ModelSpec",
    "ModelStats",
    "PoolStats",
    "PoolWarning",
    "available_ram_bytes",
    "default_move",
    "format_bytes",
    "format_stats",
    "get_default_pool",
    "is_out_of_memory",
    "measure_bytes",
    "parse_bytes",
    "pool_from_settings",
    "set_default_pool",
    "visible_cuda_devices",
]
