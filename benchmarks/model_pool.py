"""Benchmark of the model pool: four real torch models sharing a budget a third of their size.

Each cycle is one agent step: planner -> tool -> tool -> planner (the tools rotate through three
tool models), run through ``ModelPool.run`` like the agent does. Prints the peak resident bytes
(which must never pass the budget: exit status 1 if it does), the number of loads, restores and
evictions, and the time spent loading versus computing.

Usage::

    python benchmarks/model_pool.py                      # tiny MLPs on the CPU, < 1 minute
    python benchmarks/model_pool.py --device cuda        # the same models on a GPU (offload to RAM)
    python benchmarks/model_pool.py --published --cycles 10
        # the published architectures with random weights on a GPU: Qwen2.5-VL-3B (planner),
        # SAM vit_h (segmentation), SD-1.5 inpainting (cloud removal), InstructPix2Pix (edit)
    python benchmarks/model_pool.py --published --scale tiny --device cpu
        # the same builders with tiny dimensions: checks the code path on a CPU-only machine
    python benchmarks/model_pool.py --published --zoomearth-stages --cycles 3
        # the real-size Qwen2.5-VL-3B architecture (random weights, saved and loaded like the
        # checkpoint) through the zoomearth profile's transformers path: time per stage on a
        # 5000 x 3000 scene; stage 1's output is scripted for stage 2 (random weights write no
        # box). With --scale tiny --device cpu it checks the same path on a CPU.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoomearth.models import ModelPool, ModelSpec, format_bytes, format_stats, measure_bytes


@dataclass
class Role:
    name: str
    spec: ModelSpec
    work: Callable[[Any, str], Any]


# ---- tiny MLPs (default) ----------------------------------------------------------------------

TINY_MIB = {"planner": 16, "segmentation": 12, "denoise": 4, "inpaint": 16}  # 48 MiB = 3 x 16


def _mlp(width: int, depth: int = 4) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    return torch.nn.Sequential(*layers)


def tiny_roles(workdir: Path) -> list[Role]:
    roles = []
    for seed, (name, mib) in enumerate(TINY_MIB.items()):
        # 4 square float32 layers hold about 16 * width^2 bytes.
        width = int(math.sqrt(mib * 2**20 / 16))
        torch.manual_seed(seed)
        path = workdir / f"{name}.pt"
        torch.save(_mlp(width).state_dict(), path)
        size = measure_bytes(_mlp(width))

        def load(device: str, width: int = width, path: Path = path) -> torch.nn.Module:
            model = _mlp(width)
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.to(device).eval()

        def work(model: torch.nn.Module, device: str, width: int = width) -> float:
            x = torch.randn(64, width, device=device)
            with torch.inference_mode():
                for _ in range(2):
                    x = model(x)
            return float(x.float().mean())

        spec = ModelSpec(key=f"bench:{name}", load=load, size_bytes=size, description=f"{name} MLP")
        roles.append(Role(name, spec, work))
    return roles


# ---- published architectures, random weights -------------------------------------------------


def _qwen_config(scale: str) -> Any:
    from transformers import Qwen2_5_VLConfig

    if scale == "full":  # Qwen2.5-VL-3B-Instruct's config.json (one definition, shared)
        from zoomearth.testing_models import QWEN25_VL_3B_TEXT, QWEN25_VL_3B_VISION

        text = {k: v for k, v in QWEN25_VL_3B_TEXT.items() if k != "rope_parameters"}
        vision = dict(QWEN25_VL_3B_VISION)
    else:
        text = dict(
            vocab_size=152000,  # must hold the special image/vision token ids
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
        )
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            fullatt_block_indexes=[1],
        )
    text.update(
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
        if scale == "full"
        else {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    )
    vision.update(
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        tokens_per_second=2,
    )
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True)


def build_qwen(device: str, scale: str, half: bool) -> torch.nn.Module:
    from transformers import Qwen2_5_VLForConditionalGeneration

    dtype = torch.bfloat16 if half else torch.float32
    with torch.device(device):  # random init directly on the device: no 7 GB host round trip
        model = Qwen2_5_VLForConditionalGeneration._from_config(_qwen_config(scale), dtype=dtype)
    return model.eval()


def run_qwen(model: Any, device: str) -> float:
    # One prefill over an image of 32 x 32 patches (448 x 448 px) and 64 text tokens, as the
    # planner does on its overview.
    cfg = model.config
    grid = 32 if cfg.text_config.hidden_size >= 1024 else 4
    n_patches = grid * grid
    n_image_tokens = n_patches // cfg.vision_config.spatial_merge_size**2
    patch_dim = 3 * cfg.vision_config.temporal_patch_size * cfg.vision_config.patch_size**2
    dtype = next(model.parameters()).dtype
    text = torch.randint(0, 150000, (64,), device=device)
    ids = torch.cat(
        [
            torch.tensor([cfg.vision_start_token_id], device=device),
            torch.full((n_image_tokens,), cfg.image_token_id, device=device),
            torch.tensor([cfg.vision_end_token_id], device=device),
            text,
        ]
    )[None]
    with torch.inference_mode():
        out = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=torch.randn(n_patches, patch_dim, device=device, dtype=dtype),
            image_grid_thw=torch.tensor([[1, grid, grid]], device=device),
        )
    return float(out.logits[0, -1].float().max())


def build_sam(device: str, scale: str, half: bool) -> torch.nn.Module:
    del half  # SAM runs in float32, as its reference code does
    from segment_anything import sam_model_registry
    from segment_anything.build_sam import _build_sam

    with torch.device(device):
        if scale == "full":
            model = sam_model_registry["vit_h"](checkpoint=None)
        else:
            model = _build_sam(
                encoder_embed_dim=32,
                encoder_depth=2,
                encoder_num_heads=2,
                encoder_global_attn_indexes=[1],
                checkpoint=None,
            )
    # segment-anything builds its pixel_mean/std buffers with torch.Tensor(list), which ignores
    # the default device: move once more so every buffer is on the device.
    return model.to(device).eval()


def run_sam(model: Any, device: str) -> float:
    image = torch.randint(0, 256, (3, 1024, 1024), device=device).float()
    boxes = torch.tensor([[100.0, 150.0, 600.0, 700.0]], device=device)
    batch = [{"image": image, "original_size": (1024, 1024), "boxes": boxes}]
    with torch.inference_mode():
        out = model(batch, multimask_output=False)
    return float(out[0]["iou_predictions"].max())


def build_sd(device: str, scale: str, half: bool, in_channels: int) -> torch.nn.Module:
    """SD-1.5-like UNet (9 input channels: inpainting; 8: InstructPix2Pix) + VAE + CLIP text."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    full = scale == "full"
    blocks = (320, 640, 1280, 1280) if full else (32, 64)
    n = len(blocks)
    dtype = torch.float16 if half else torch.float32
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64 if full else 8,
            in_channels=in_channels,
            out_channels=4,
            layers_per_block=2 if full else 1,
            block_out_channels=blocks,
            down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
            cross_attention_dim=768 if full else 32,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * (4 if full else 2),
            up_block_types=("UpDecoderBlock2D",) * (4 if full else 2),
            block_out_channels=(128, 256, 512, 512) if full else (32, 64),
            layers_per_block=2 if full else 1,
            latent_channels=4,
            sample_size=512 if full else 16,
        )
        text_config = (
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                projection_dim=768,
                hidden_act="quick_gelu",
            )
            if full
            else CLIPTextConfig(
                vocab_size=1000,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                projection_dim=32,
                bos_token_id=0,
                eos_token_id=2,
            )
        )
        text_encoder = CLIPTextModel(text_config)
    bundle = torch.nn.ModuleDict({"unet": unet, "vae": vae, "text_encoder": text_encoder})
    return bundle.to(device=device, dtype=dtype).eval()


def run_sd(model: Any, device: str, steps: int = 4) -> float:
    unet, vae, text_encoder = model["unet"], model["vae"], model["text_encoder"]
    dtype = next(unet.parameters()).dtype
    size = 512 if unet.config.sample_size >= 64 else 16
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    vocab = text_encoder.config.vocab_size
    with torch.inference_mode():
        tokens = torch.randint(0, vocab, (1, 77), device=device)
        context = text_encoder(tokens).last_hidden_state.to(dtype)
        image = torch.rand(1, 3, size, size, device=device, dtype=dtype) * 2 - 1
        image_latents = vae.encode(image).latent_dist.mode() * 0.18215
        latents = torch.randn_like(image_latents)
        side = size // scale
        if unet.config.in_channels == 9:  # inpainting: latents + mask + masked-image latents
            mask = torch.zeros(1, 1, side, side, device=device, dtype=dtype)
            mask[..., side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 1
            extra = [mask, image_latents * (1 - mask)]
        else:  # InstructPix2Pix: latents + image latents
            extra = [image_latents]
        for t in torch.linspace(999, 0, steps, device=device).long():
            noise = unet(torch.cat([latents, *extra], dim=1), t, context).sample
            latents = latents - noise / steps
        decoded = vae.decode(latents / 0.18215).sample
    return float(decoded.float().mean())


PUBLISHED = {
    "planner": ("Qwen2.5-VL-3B", build_qwen, run_qwen),
    "segmentation": ("SAM vit_h", build_sam, run_sam),
    "inpaint": ("SD-1.5 inpainting", lambda d, s, h: build_sd(d, s, h, 9), run_sd),
    "edit": ("InstructPix2Pix", lambda d, s, h: build_sd(d, s, h, 8), run_sd),
}


def published_roles(device: str, scale: str) -> list[Role]:
    roles = []
    for name, (title, build, work) in PUBLISHED.items():
        # Build once on the meta device (no memory, milliseconds) to know the exact size before
        # the first real load, in the dtype the device build will use (half precision on CUDA).
        half = device.startswith("cuda")
        probe = build("meta", scale, half)
        meta_size = measure_bytes(probe) or 0
        del probe

        def load(dev: str, build: Callable[[str, str, bool], Any] = build) -> Any:
            return build(dev, scale, dev.startswith("cuda"))

        spec = ModelSpec(
            key=f"bench:{name}:{title}:{scale}",
            load=load,
            size_bytes=meta_size,
            description=title if scale == "full" else f"{title} (tiny)",
        )
        roles.append(Role(name, spec, work))
    return roles


# ---- the benchmark ----------------------------------------------------------------------------


def cycle_plan(roles: list[Role], cycles: int) -> list[Role]:
    planner, tools = roles[0], roles[1:]
    plan = []
    for c in range(cycles):
        plan += [planner, tools[c % len(tools)], tools[(c + 1) % len(tools)], planner]
    return plan


# ---- the zoomearth profile's two stages at real size ------------------------------------------

STAGE_PROMPT = (
    "\n<|im_start|>system\nYou are a benchmark. <|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>{{question}}\nThink, crop, answer.\n"
    "<|im_end|><|im_start|>assistant\n"
)
SCRIPTED_STAGE1 = (
    '<think>A harbour. [{"bbox_2d": [300, 120, 340, 160], "label": "boat"}]</think>'
    "<answer>yes</answer>"
)


def zoomearth_stages(device: str, scale: str, cycles: int, workdir: Path) -> int:
    """Time stage 1 and stage 2 of the zoomearth profile through the transformers backend."""
    import statistics

    import numpy as np

    from zoomearth.agent.backends.hf import TransformersPlanner
    from zoomearth.agent.base import PlanRequest, TranscriptEntry
    from zoomearth.agent.profiles import ZoomEarthProfile, reference_box_factor
    from zoomearth.config import load_settings
    from zoomearth.geometry import PixelBox, ViewSpec
    from zoomearth.testing_models import build_tiny_qwen25vl

    t0 = time.perf_counter()
    checkpoint = build_tiny_qwen25vl(workdir / "qwen", size="3b" if scale == "full" else "tiny")
    build_s = time.perf_counter() - t0
    prompt = workdir / "prompt.txt"
    prompt.write_bytes(STAGE_PROMPT.encode("utf-8"))
    settings = load_settings(
        flags={
            "data_dir": workdir / "data",
            "cache_dir": workdir / "cache",
            "planner": "transformers",
            "planner_model": str(checkpoint),
            "planner_profile": "zoomearth",
            "planner_prompt": str(prompt),
            "planner_device": device,
            "planner_seed": 0,
        },
        environ={},
    )
    pool = ModelPool(budgets={device: 80 * 2**30, "cpu": 64 * 2**30})
    planner = TransformersPlanner(settings, pool=pool)
    # The reference's sizes on a 5000 x 3000 scene: overview 512 x 307, crop 512 x 512.
    profile = ZoomEarthProfile(STAGE_PROMPT)
    width, height = 5000, 3000
    box = [v * reference_box_factor(width, height) for v in (300, 120, 340, 160)]
    crop = profile.crop_xyxy(box, width, height)
    views = {
        0: ViewSpec(0, PixelBox(0, 0, width, height), *profile.overview_size(width, height)),
        1: ViewSpec(1, PixelBox(*map(float, crop)), 512, 512),
    }
    rng = np.random.default_rng(0)
    pixels = {
        v: rng.integers(0, 255, (spec.height, spec.width, 3), dtype=np.uint8)
        for v, spec in views.items()
    }

    def request(*entries: TranscriptEntry) -> PlanRequest:
        return PlanRequest("Is there a boat?", 0, list(entries), views, lambda v: pixels[v])

    t0 = time.perf_counter()
    with pool.use(planner.spec(), device):
        pass
    load_s = time.perf_counter() - t0
    stage2_request = request(
        TranscriptEntry("planner", SCRIPTED_STAGE1), TranscriptEntry("zoom", view_id=1)
    )
    times: dict[int, list[float]] = {1: [], 2: []}
    tokens: dict[int, int] = {}
    chars: dict[int, int] = {}
    for _ in range(cycles):
        for stage, req in ((1, request()), (2, stage2_request)):
            t = time.perf_counter()
            reply = planner.plan(req)
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            times[stage].append(time.perf_counter() - t)
            tokens[stage] = reply.visual_tokens
            chars[stage] = len(reply.text)
    print(
        f"zoomearth profile, {scale} Qwen2.5-VL "
        f"({'3B architecture' if scale == 'full' else 'tiny'}, random weights) on {device};"
        f" build {build_s:.1f} s, load {load_s:.1f} s"
    )
    print(f"{'stage':<8}{'median s':>10}{'min s':>9}{'max s':>9}{'visual tokens':>15}{'chars':>8}")
    for stage in (1, 2):
        runs = times[stage]
        print(
            f"{stage:<8}{statistics.median(runs):>10.3f}{min(runs):>9.3f}{max(runs):>9.3f}"
            f"{tokens[stage]:>15}{chars[stage]:>8}"
        )
    print(
        f"({cycles} runs each; up to {profile.max_new_tokens} new tokens per stage, sampled at "
        f"temperature {profile.temperature}; random weights rarely stop early)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=50, help="planner-tool-tool-planner cycles")
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, auto (default: cpu; auto with --published)"
    )
    parser.add_argument("--budget-mib", type=float, default=None, help="budget on the device")
    parser.add_argument("--published", action="store_true", help="published architectures")
    parser.add_argument(
        "--scale", choices=["full", "tiny"], default="full", help="with --published"
    )
    parser.add_argument("--transfer-gbps", type=float, default=10.0, help="assumed GB/s to RAM")
    parser.add_argument(
        "--zoomearth-stages",
        action="store_true",
        help="with --published: time the zoomearth profile's two stages (see the usage above)",
    )
    args = parser.parse_args(argv)

    pool_probe = ModelPool(budgets={"cpu": 1})
    device = pool_probe.resolve_device(args.device or ("auto" if args.published else "cpu"))
    torch.manual_seed(0)
    if args.zoomearth_stages:
        with tempfile.TemporaryDirectory(prefix="zoomearth-bench-") as tmp:
            return zoomearth_stages(device, args.scale, args.cycles, Path(tmp))

    with tempfile.TemporaryDirectory(prefix="zoomearth-bench-") as tmp:
        t0 = time.perf_counter()
        roles = published_roles(device, args.scale) if args.published else tiny_roles(Path(tmp))
        setup = time.perf_counter() - t0
        sizes = [r.spec.size_bytes or 0 for r in roles]
        total = sum(sizes)
        if args.budget_mib is not None:
            budget = int(args.budget_mib * 2**20)
        else:  # a third of the models' total, but at least the largest model
            budget = max(max(sizes), math.ceil(total / 3))
        budgets = {device: budget}
        pool = ModelPool(budgets=budgets, transfer_bytes_per_s=args.transfer_gbps * 1e9)

        print(
            f"model-pool benchmark on {device}: {len(roles)} models, {format_bytes(total)} in all"
        )
        for role, size in zip(roles, sizes, strict=True):
            print(f"  {role.name:<13} {role.spec.description:<28} {format_bytes(size):>10}")
        print(
            f"budget {format_bytes(budget)} ({total / budget:.1f}x smaller than the models), "
            f"{args.cycles} cycles of planner -> tool -> tool -> planner "
            f"({4 * args.cycles} uses); setup {setup:.1f} s"
        )

        peak_seen = 0
        work_seconds = 0.0
        started = time.perf_counter()
        for role in cycle_plan(roles, args.cycles):

            def timed(model: Any, dev: str, work: Callable[[Any, str], Any] = role.work) -> Any:
                nonlocal work_seconds
                t = time.perf_counter()
                result = work(model, dev)
                if dev.startswith("cuda"):
                    torch.cuda.synchronize(dev)
                work_seconds += time.perf_counter() - t
                return result

            pool.run(role.spec, timed, device)
            peak_seen = max(peak_seen, pool.resident_bytes(device))
        wall = time.perf_counter() - started

    stats = pool.stats()
    dev = stats.device(device)
    assert dev is not None
    ok = dev.peak_bytes <= budget and peak_seen <= budget
    loads = stats.misses
    print()
    print(format_stats(stats))
    print()
    print(
        f"peak resident     {format_bytes(dev.peak_bytes)} of {format_bytes(budget)} budget"
        f" -> {'OK, never exceeded' if ok else 'EXCEEDED'}"
    )
    print(f"loads             {loads} (hits {stats.hits}, restores from RAM {stats.restores})")
    print(f"evictions         {stats.evictions} (offloaded {stats.offloads}, freed {stats.frees})")
    mean_load = stats.load_seconds / loads * 1e3 if loads else 0.0
    print(f"time loading      {stats.load_seconds:8.2f} s ({mean_load:.1f} ms per load)")
    print(f"time moving       {stats.transfer_seconds:8.2f} s")
    print(f"time computing    {work_seconds:8.2f} s")
    print(f"wall              {wall:8.2f} s")
    if pool.warnings:
        print("warnings:")
        for warning in pool.warnings:
            print(f"  {warning}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
