"""Does a trained model use the image? Loss on held-out records with their own image vs with another
record's image (the batch's visual tokens rolled by one). Equal losses: the answers ignore the image.

    python experiments/mini_image_use.py MODEL_DIR RECORDS.jsonl N [TEMPLATE]
(the last N records, images in .cache/hrvqa). TEMPLATE: the prompt format the records were trained
with; a stage-1 output is saved with its chat template, so pass `plain` for its captions.
"""
import sys

import torch
from _mini import batch, dataset, lm_loss

from infllava.data.records import load_records
from infllava.inference import load

torch.set_num_threads(1)
model_dir, data, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
model, proc = load(model_dir, device="cpu")
if len(sys.argv) > 4:
    proc.template = sys.argv[4]
recs, _ = load_records(data)
b = batch(dataset(model, proc, recs[-n:]), range(n))  # the end of the file: not seen in short runs
with torch.no_grad():
    feats = model.image_tokens(b["pixel_values"])
    out = {name: lm_loss(model, b, f).item() for name, f in (("own", feats), ("other", feats.roll(1, 0)))}
print(model_dir, out)
