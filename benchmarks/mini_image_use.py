"""Does a trained model use the image? Loss on held-out records with their own image vs with another
record's image (the batch's visual tokens rolled by one). Equal losses: the answers ignore the image.

    python benchmarks/mini_image_use.py MODEL_DIR RECORDS.jsonl N [TEMPLATE]
(the last N records, images in .cache/hrvqa). TEMPLATE: the prompt format the records were trained
with; a stage-1 output is saved with its chat template, so pass `plain` for its captions.
"""
import sys, json, torch
import torch.nn.functional as F
from infllava.inference import load
from infllava.training.data import load_records, SupervisedDataset, collate
torch.set_num_threads(1)
model_dir, data, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
model, proc = load(model_dir, device='cpu')
if len(sys.argv) > 4:
    proc.template = sys.argv[4]
recs, _ = load_records(data)
recs = recs[-n:]  # the end of the file: not seen in short runs
pc = model.config
ds = SupervisedDataset(recs, '.cache/hrvqa', proc.tokenizer, proc.image_processor, proc.template, pc.image_token_id, pc.num_image_tokens, 512)
b = collate([ds[i] for i in range(n)], pad_token_id=proc.tokenizer.pad_token_id or 0)
with torch.no_grad():
    feats = model.get_image_features(b['pixel_values'])
    out = {}
    for name, f in (('own', feats), ('other', feats.roll(1, 0))):
        logits = model(input_ids=b['input_ids'], attention_mask=b['attention_mask'], image_features=f).logits
        lab = b['labels'][:, 1:]
        out[name] = F.cross_entropy(logits[:, :-1].flatten(0, 1), lab.flatten(), ignore_index=-100).item()
print(model_dir, out)
