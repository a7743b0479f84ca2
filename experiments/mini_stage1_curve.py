"""Stage-1 learning curve (thumbnail view, frozen LM, projector only): held-out caption loss with each
record's own image vs another record's image, every K steps of fresh 8-image batches.

    python experiments/mini_stage1_curve.py STAGE1_MODEL_DIR LR STEPS K
"""
import random
import sys
import time

import torch
from _mini import IMAGES, batch, dataset, lm_loss

from infllava.data.records import load_records
from infllava.inference import load

torch.set_num_threads(1)
torch.manual_seed(0)
model, proc = load(sys.argv[1], device="cpu")
lr, steps, every = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
recs, _ = load_records(f"{IMAGES}/train_captions.jsonl")
ds = dataset(model, proc, recs)
held = batch(ds, range(len(ds) - 16, len(ds)))
order = list(range(len(ds) - 16))
random.Random(0).shuffle(order)
model.requires_grad_(False)
model.projector.requires_grad_(True)
opt = torch.optim.Adam(model.projector.parameters(), lr=lr)
with torch.no_grad():
    held_enc = model.encode_images(held["pixel_values"])
t = time.time()
for step in range(steps + 1):
    if step % every == 0:
        with torch.no_grad():
            f = model.projector(held_enc)
            own, other = lm_loss(model, held, f).item(), lm_loss(model, held, f.roll(1, 0)).item()
        print(step, "held-out own", round(own, 3), "other", round(other, 3), round(time.time() - t), "s", flush=True)
    if step == steps:
        break
    b = batch(ds, order[step * 8:(step + 1) * 8])
    with torch.no_grad():
        enc = model.encode_images(b["pixel_values"])
    loss = lm_loss(model, b, model.projector(enc))
    opt.zero_grad()
    loss.backward()
    opt.step()
