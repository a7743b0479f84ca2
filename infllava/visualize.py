"""A picture of what the Dual-perspective Cropping Module feeds the tower: the model input, its
local crops (contiguous tiles) and its global crops (strided samples), plus the thumbnail."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from .model.crops import global_crops, local_crops


def crops_picture(image, image_processor, out_path: str | Path, gap: int = 6) -> Path:
    """Save a panel: [model input with the tile grid] [local crops] [global crops] [thumbnail]."""
    import torch

    padded = image_processor.preprocess_pil(image)  # PIL, n_h*S x n_w*S, before normalisation
    gh, gw = image_processor.grid
    S = image_processor.tower_size
    x = torch.from_numpy(__import__("numpy").asarray(padded).copy()).permute(2, 0, 1)[None]  # (1, 3, H, W) uint8
    loc = local_crops(x, (gh, gw))[0]
    glo = global_crops(x, (gh, gw))[0]

    def grid_panel(crops):
        W = gw * S + (gw - 1) * gap
        H = gh * S + (gh - 1) * gap
        panel = Image.new("RGB", (W, H), (255, 255, 255))
        for k, c in enumerate(crops):
            i, j = divmod(k, gw)
            panel.paste(Image.fromarray(c.permute(1, 2, 0).numpy()), (j * (S + gap), i * (S + gap)))
        return panel

    framed = padded.copy()
    draw = ImageDraw.Draw(framed)
    for i in range(1, gh):
        draw.line([(0, i * S), (gw * S, i * S)], fill=(255, 0, 0), width=3)
    for j in range(1, gw):
        draw.line([(j * S, 0), (j * S, gh * S)], fill=(255, 0, 0), width=3)
    thumb = padded.resize((S, S), Image.BICUBIC)
    panels = [("input (local tiles in red)", framed), ("local crops", grid_panel(loc)),
              ("global crops (strided)", grid_panel(glo)), ("thumbnail", thumb)]
    H = max(p.height for _, p in panels) + 24
    W = sum(p.width for _, p in panels) + gap * 4 * (len(panels) - 1)
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x0 = 0
    for title, p in panels:
        draw.text((x0 + 4, 4), title, fill=(0, 0, 0))
        canvas.paste(p, (x0, 24))
        x0 += p.width + gap * 4
    out_path = Path(out_path)
    canvas.save(out_path)
    return out_path
