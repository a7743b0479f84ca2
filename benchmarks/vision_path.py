"""Time `get_image_features` against the plain official computation, on the same random weights.

CLIP ViT-L/14-336 sizes, 3x3 grid (1008-px input), DEM 8 heads, projector 1024 -> 4096, float32,
batch 1. The official computation (tests/reference_official.py) runs 19 tower passes through the
whole tower and the DEM over the whole 72x72 map; ours runs 10 passes through the layers up to the
selected one and the DEM only where the output reads it. Both outputs are checked to agree
(max abs difference <= 1e-4). Runs alternate (official, ours, official, ours, ...) and medians are
quoted. Peak memory is the largest increase of the process RSS during one call (sampled every 2 ms,
with glibc told to return large blocks at once) on CPU, or torch.cuda.max_memory_allocated on CUDA.

    python benchmarks/vision_path.py [--layers 24] [--repeats 3] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure  # noqa: E402  (re-executes with malloc tuned for RSS peaks)

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import load_official_into  # noqa: E402
from reference_official import OfficialReference  # noqa: E402

from infllava import InfLlavaForConditionalGeneration, official_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=24, help="tower depth (24 = CLIP ViT-L/14)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.device == "cuda":  # exact fp32 (cuDNN convolutions default to TF32)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    vision = dict(official_config().vision_config.to_dict(), num_hidden_layers=args.layers)
    text = dict(model_type="llama", vocab_size=16, hidden_size=4096, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=32, num_key_value_heads=8)
    config = official_config(vision_config=vision, text_config=text, image_token_id=16)
    torch.manual_seed(0)
    ref = OfficialReference(config).eval()
    ours = InfLlavaForConditionalGeneration(config).eval()
    load_official_into(ours, ref.official_state_dict(include_tower=True), strict=False)
    ref.to(args.device, dtype)
    ours.to(args.device, dtype)
    pixels = torch.randn(args.batch, 3, *config.input_size, device=args.device, dtype=dtype)

    times = {"official": [], "infllava": []}
    peaks = {"official": [], "infllava": []}
    outs = {}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, model in (("official", ref), ("infllava", ours)):
                dt, peak, out = measure(lambda: model.image_tokens(pixels), args.device)
                times[name].append(dt)
                peaks[name].append(peak)
                outs[name] = out
    diff = (outs["official"].float() - outs["infllava"].float()).abs().max().item()
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device: {args.device} ({dev}); torch {torch.__version__}; {args.dtype}; batch {args.batch}; "
          f"tower layers {args.layers}; input {config.input_size[0]}x{config.input_size[1]}; repeats {args.repeats}")
    print(f"output {tuple(outs['infllava'].shape)}; max abs difference official vs infllava: {diff:.2e} "
          f"({'OK' if diff <= tol else 'MISMATCH'}, tolerance {tol:g})")
    for name in times:
        print(f"{name:9s} median {statistics.median(times[name]):8.3f} s   runs "
              + " ".join(f"{t:.3f}" for t in times[name])
              + f"   peak memory {statistics.median(peaks[name]) / 2**20:8.1f} MiB")
    ratio = statistics.median(times["official"]) / statistics.median(times["infllava"])
    mem = statistics.median(peaks["official"]) / max(statistics.median(peaks["infllava"]), 1)
    print(f"speed-up (median official / median infllava): {ratio:.2f}x; peak-memory ratio: {mem:.2f}x")
    if diff > tol:
        sys.exit(1)


if __name__ == "__main__":
    main()
