"""Stage-1 learning curve (thumbnail view, frozen LM, projector only): held-out caption loss with each
record's own image vs another record's image, every K steps of fresh 8-image batches.

    python benchmarks/mini_stage1_curve.py STAGE1_MODEL_DIR LR STEPS K
"""
import sys, torch, time, random
import torch.nn.functional as F
from infllava.inference import load
from infllava.training.data import load_records, SupervisedDataset, collate
torch.set_num_threads(1); torch.manual_seed(0)
model, proc = load(sys.argv[1], device='cpu')
lr, steps, every = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
recs, _ = load_records('.cache/hrvqa/train_captions.jsonl')
pc = model.config
ds = SupervisedDataset(recs, '.cache/hrvqa', proc.tokenizer, proc.image_processor, proc.template, pc.image_token_id, pc.num_image_tokens, 512)
held = collate([ds[i] for i in range(len(ds) - 16, len(ds))], pad_token_id=0)
order = list(range(len(ds) - 16)); random.Random(0).shuffle(order)
model.requires_grad_(False); model.projector.requires_grad_(True)
opt = torch.optim.Adam(model.projector.parameters(), lr=lr)
def loss_of(b, f):
    logits = model(input_ids=b['input_ids'], attention_mask=b['attention_mask'], image_features=f).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), b['labels'][:, 1:].flatten(), ignore_index=-100)
with torch.no_grad(): held_enc = model.encode_images(held['pixel_values'])
t = time.time()
for step in range(steps + 1):
    if step % every == 0:
        with torch.no_grad():
            f = model.projector(held_enc)
            print(step, 'held-out own', round(loss_of(held, f).item(), 3), 'other', round(loss_of(held, f.roll(1, 0)).item(), 3), round(time.time() - t), 's', flush=True)
    if step == steps: break
    b = collate([ds[i] for i in order[step * 8:(step + 1) * 8]], pad_token_id=0)
    with torch.no_grad(): enc = model.encode_images(b['pixel_values'])
    l = loss_of(b, model.projector(enc))
    opt.zero_grad(); l.backward(); opt.step()
