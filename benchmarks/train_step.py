"""Samples/s and peak memory of a stage-1 training step: infllava against the full official computation.

Same weights (tests/reference_official.py mapped into our model), CLIP ViT-L/14-336 tower sizes
(`--layers` deep, frozen), 3x3 grid, DEM + projector trained, a small frozen LLaMA-shaped LM
(`--lm-hidden`, 2 layers), AdamW on the trainable weights. A step: forward on `--batch` images
(each prompt: 8 text tokens, the 576 image tokens, 24 answer tokens), token cross-entropy on the
answer, backward, optimiser step. The first steps' losses and DEM gradients are checked to agree.

    python benchmarks/train_step.py [--layers 4] [--batch 1] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import load_official_into  # noqa: E402
from reference_official import OfficialReference  # noqa: E402

from infllava import InfLlavaForConditionalGeneration, official_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4, help="tower depth (24 = CLIP ViT-L/14; CPU default 4)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lm-hidden", type=int, default=1024)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    dev = args.device
    if dev == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    vision = dict(official_config().vision_config.to_dict(), num_hidden_layers=args.layers)
    text = dict(model_type="llama", vocab_size=1000, hidden_size=args.lm_hidden, intermediate_size=2 * args.lm_hidden,
                num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8)
    config = official_config(vision_config=vision, text_config=text, image_token_id=1000)
    torch.manual_seed(0)
    ref = OfficialReference(config, AutoModelForCausalLM.from_config(config.text_config)).to(dev)
    ours = InfLlavaForConditionalGeneration(config).to(dev)
    load_official_into(ours, {k: v for k, v in ref.official_state_dict().items()})
    for m, trainable in ((ref, (ref.spatial_embed, ref.mm_projector)), (ours, (ours.dem, ours.projector))):
        m.train().requires_grad_(False)
        for t in trainable:
            t.requires_grad_(True)
    opt = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
           for name, m in (("official", ref), ("infllava", ours))}

    B, T = args.batch, config.num_image_tokens
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(B, 3, *config.input_size, generator=g).to(dev)
    pre = torch.randint(3, 1000, (B, 8), generator=g).tolist()
    post = torch.randint(3, 1000, (B, 24), generator=g).tolist()

    def step_official():
        loss = 0.0
        for b in range(B):
            logits = ref.logits(pre[b] + [-200] + post[b], pixels[b:b + 1])[0]
            tgt = torch.tensor(post[b], device=dev)
            loss = loss + F.cross_entropy(logits[-len(post[b]) - 1:-1], tgt)
        loss = loss / B
        loss.backward()
        grad = ref.spatial_embed.ffn_stride[0].weight.grad.clone()
        opt["official"].step()
        opt["official"].zero_grad()
        return loss.item(), grad

    ids = torch.tensor([pre[b] + [config.image_token_id] * T + post[b] for b in range(B)], device=dev)
    labels = ids.clone()
    labels[:, : 8 + T] = -100

    def step_ours():
        logits = ours(input_ids=ids, pixel_values=pixels).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        loss.backward()
        grad = ours.dem.ffn_global.fc1.weight.grad.clone()
        opt["infllava"].step()
        opt["infllava"].zero_grad()
        return loss.item(), grad

    times = {"official": [], "infllava": []}
    peaks = {"official": [], "infllava": []}
    results = {"official": [], "infllava": []}
    for _ in range(args.repeats):
        for name, fn in (("official", step_official), ("infllava", step_ours)):
            dt, peak, res = measure(fn, dev)
            times[name].append(dt)
            peaks[name].append(peak)
            results[name].append(res)
    # identical weights and inputs: each step's loss and DEM gradient agree (the optimiser keeps them in step)
    dl = max(abs(a[0] - b[0]) for a, b in zip(results["official"], results["infllava"]))
    dg = max((a[1] - b[1]).abs().max().item() for a, b in zip(results["official"], results["infllava"]))
    where = torch.cuda.get_device_name() if dev == "cuda" else f"{platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device: {dev} ({where}); torch {torch.__version__}; float32; batch {B}; tower layers {args.layers}; "
          f"LM hidden {args.lm_hidden}; repeats {args.repeats}")
    print(f"max |loss difference| {dl:.2e}; max |DEM gradient difference| {dg:.2e} "
          f"({'OK' if dl <= 1e-4 and dg <= 1e-4 else 'MISMATCH'})")
    for name in times:
        med = statistics.median(times[name])
        print(f"{name:9s} median step {med:8.3f} s  ({B / med:7.3f} samples/s)   runs "
              + " ".join(f"{t:.3f}" for t in times[name])
              + f"   peak memory {statistics.median(peaks[name]) / 2**20:8.1f} MiB")
    print(f"speed-up (median official / median infllava): "
          f"{statistics.median(times['official']) / statistics.median(times['infllava']):.2f}x")
    if dl > 1e-4 or dg > 1e-4:
        sys.exit(1)


if __name__ == "__main__":
    main()
