"""Shared by the INF-LLaVA-mini diagnostics: batches of training records and their LM loss with
given visual tokens (so the same batch can be scored with its own or with other images)."""

from __future__ import annotations

import torch.nn.functional as F

from infllava.training.data import SupervisedDataset, collate

IMAGES = ".cache/hrvqa"


def dataset(model, proc, records, max_length: int = 512) -> SupervisedDataset:
    pc = model.config
    return SupervisedDataset(records, IMAGES, proc.tokenizer, proc.image_processor, proc.template, pc.image_token_id,
                             pc.num_image_tokens, max_length)


def batch(ds: SupervisedDataset, indices) -> dict:
    return collate([ds[i] for i in indices], pad_token_id=0)  # right padding, masked: the id does not matter


def lm_loss(model, b: dict, features):
    """Mean token loss of the batch's supervised tokens with `features` as its visual tokens."""
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], image_features=features).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten(), ignore_index=-100)
