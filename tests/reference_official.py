"""A plain re-implementation of the official INF-LLaVA computation, kept as the parity oracle.

Written from the description in shared/reference/official-inf-llava.md (not copied): module names
follow the official checkpoint layout (`model.spatial_embed.*`, `model.mm_projector.*`,
`model.vision_tower.vision_tower.vision_model.*`) so `official_state_dict()` yields an official-style
checkpoint. It does everything the slow way on purpose:
  - 2*n*n + 1 separate tower passes per image (local crops, global crops, thumbnail), each through the
    *full* tower, keeping hidden_states[-2];
  - the DEM over the whole (n*h) x (n*w) map with one attention call per block / sub-grid;
  - the final bilinear F.interpolate back to h x w; (thumbnail + dem) mean; projector.
Square grids only (the official code has a single n).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import CLIPVisionModel


class RefMHA(nn.Module):
    def __init__(self, heads: int, d: int):
        super().__init__()
        self.h, self.d_k = heads, d // heads
        self.linears = nn.ModuleList([nn.Linear(d, d) for _ in range(4)])
        self.ln = nn.LayerNorm(d)

    def forward(self, q, k, v):
        b = q.shape[0]
        query, key, value = [
            lin(x).view(b, -1, self.h, self.d_k).transpose(1, 2) for lin, x in zip(self.linears, (q, k, v))
        ]
        scores = query @ key.transpose(-2, -1) / math.sqrt(self.d_k)
        x = F.softmax(scores, dim=-1) @ value
        x = x.transpose(1, 2).reshape(b, -1, self.h * self.d_k)
        return self.ln(self.linears[3](x) + q)


class RefSpatialEmbed(nn.Module):
    def __init__(self, d: int, heads: int = 8, ratio: int = 16):
        super().__init__()
        self.attention = RefMHA(heads, d)
        self.ffn_crop = nn.Sequential(nn.Linear(d, d // ratio), nn.GELU(), nn.Linear(d // ratio, d // 2))
        self.ffn_stride = nn.Sequential(nn.Linear(d, d // ratio), nn.GELU(), nn.Linear(d // ratio, d // 2))
        self.ln_fuse = nn.LayerNorm(d)
        self.unshuffle_weight = self.unshuffle_bias = None  # set by a test for downsample "unshuffle"

    def forward(self, feats: list, n: int, downsample: str = "bilinear"):
        b, hw, d = feats[0].shape
        h = w = int(round(hw ** 0.5))
        maps = [f.reshape(b, h, w, d) for f in feats]
        L = torch.cat([torch.cat(maps[r * n:(r + 1) * n], dim=2) for r in range(n)], dim=1)
        G = torch.zeros(b, n * h, n * w, d, dtype=L.dtype, device=L.device)
        for i in range(n):
            for j in range(n):
                G[:, i::n, j::n] = maps[n * n + i * n + j]
        a = torch.zeros_like(L)
        for i in range(n):  # contiguous blocks: global queries, local keys
            for j in range(n):
                rs, cs = slice(i * h, (i + 1) * h), slice(j * w, (j + 1) * w)
                q = G[:, rs, cs].reshape(b, hw, d)
                kv = L[:, rs, cs].reshape(b, hw, d)
                a[:, rs, cs] = self.attention(q, kv, kv).reshape(b, h, w, d)
        c = torch.zeros_like(L)
        for i in range(n):  # strided sub-grids: local queries, global keys
            for j in range(n):
                q = L[:, i::n, j::n].reshape(b, hw, d)
                kv = G[:, i::n, j::n].reshape(b, hw, d)
                c[:, i::n, j::n] = self.attention(q, kv, kv).reshape(b, h, w, d)
        fused = self.ln_fuse(torch.cat([self.ffn_crop(c), self.ffn_stride(a)], -1) + a + c)
        fused = fused.permute(0, 3, 1, 2).float()
        if downsample == "bilinear":
            out = F.interpolate(fused, size=(h, w), mode="bilinear", align_corners=False)
        elif downsample == "unshuffle":  # ours: pixel unshuffle (channel c*n*n + i*n + j), then a Linear
            x = F.pixel_unshuffle(fused, n).view(b, d, n * n, h, w).transpose(1, 2).reshape(b, n * n * d, h, w)
            out = F.linear(x.permute(0, 2, 3, 1), self.unshuffle_weight, self.unshuffle_bias).permute(0, 3, 1, 2)
        else:
            out = F.avg_pool2d(fused, n) if downsample == "avgpool" else F.max_pool2d(fused, n)
        return out.to(feats[0].dtype).permute(0, 2, 3, 1).reshape(b, hw, d)


class OfficialReference(nn.Module):
    """The official vision path + LM splice, for an `InfLlavaConfig` with a CLIP tower and square grid."""

    def __init__(self, config, language_model: nn.Module | None = None):
        super().__init__()
        assert config.grid[0] == config.grid[1]
        self.n = config.grid[0]
        self.S = config.tower_image_size
        self.select_layer = config.vision_feature_layer
        self.downsample = config.dem_downsample
        self.vision_tower = CLIPVisionModel(config.vision_config)  # all layers
        d = config.vision_config.hidden_size
        self.spatial_embed = RefSpatialEmbed(d, config.dem_num_heads, config.dem_ffn_ratio)
        D = config.text_config.hidden_size
        self.mm_projector = nn.Sequential(nn.Linear(d, D), nn.GELU(), nn.Linear(D, D))
        self.language_model = language_model
        for m in self.spatial_embed.modules():  # non-trivial LayerNorm affine parameters
            if isinstance(m, nn.LayerNorm):
                nn.init.normal_(m.weight, 1.0, 0.3)
                nn.init.normal_(m.bias, 0.0, 0.5)

    def tower(self, img):
        out = self.vision_tower(pixel_values=img, output_hidden_states=True)
        return out.hidden_states[self.select_layer][:, 1:]

    def encode_images(self, images):
        n, S = self.n, self.S
        big = F.interpolate(images.float(), (S * n, S * n), mode="bicubic", align_corners=False).to(images.dtype)
        crops = [big[:, :, i * S:(i + 1) * S, j * S:(j + 1) * S] for i in range(n) for j in range(n)]
        crops += [big[:, :, i::n, j::n] for i in range(n) for j in range(n)]
        crops.append(F.interpolate(images.float(), (S, S), mode="bicubic", align_corners=False).to(images.dtype))
        feats = [self.tower(c) for c in crops]  # 2*n*n + 1 passes
        dem = self.spatial_embed(feats[: 2 * n * n], n, self.downsample)
        return torch.stack([feats[-1], dem], -1).mean(-1)

    def get_image_features(self, images):
        return self.mm_projector(self.encode_images(images))

    image_tokens = get_image_features  # infllava's name for the (B, T, D) tensor

    def logits(self, ids_with_marker: list[int], images, marker: int = -200):
        """Official splice: each `marker` id is replaced by one image's visual tokens."""
        embed = self.language_model.get_input_embeddings()
        feats = self.get_image_features(images)
        parts, k, run = [], 0, []
        for t in ids_with_marker:
            if t == marker:
                if run:
                    parts.append(embed(torch.tensor(run, device=images.device)))
                    run = []
                parts.append(feats[k])
                k += 1
            else:
                run.append(t)
        if run:
            parts.append(embed(torch.tensor(run, device=images.device)))
        embeds = torch.cat(parts).unsqueeze(0)
        return self.language_model(inputs_embeds=embeds).logits

    def official_state_dict(self, include_tower: bool = True) -> dict[str, torch.Tensor]:
        """This model's weights under the official checkpoint's key names (transformers-4 CLIP prefix)."""
        sd = {}
        for k, v in self.spatial_embed.state_dict().items():
            sd[f"model.spatial_embed.{k}"] = v
        for k, v in self.mm_projector.state_dict().items():
            sd[f"model.mm_projector.{k}"] = v
        if include_tower:
            for k, v in self.vision_tower.state_dict().items():
                sd[f"model.vision_tower.vision_tower.vision_model.{k}"] = v
        if self.language_model is not None:
            for k, v in self.language_model.state_dict().items():
                sd[k] = v  # LlamaForCausalLM keys: model.embed_tokens, model.layers.*, model.norm, lm_head
        return sd
