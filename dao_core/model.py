"""Crysformer: the transformer backbone shared by DAO-G and DAO-P (method doc, section 2).

Every crystal in a batch is a dense, padded block of ``N`` atoms; attention runs over all atom pairs
of the same crystal (self-loops included) with invariant edge features added to keys and values.
Padding is handled with masks, so the whole batch is a few batched matrix products. The edge
features are never materialised nor projected to the hidden width per layer: attention is
computed exactly from the Fourier features of x_j - x_i (built once for all layers), a Gram
vector per crystal and N x N LayerNorm statistics (``PairGeometry``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from dao_core.data.batches import CrystalBatch
from dao_core.elements import MAX_Z, element_table

try:  # the one-kernel attention for GPU inference (needs triton)
    from dao_core import fused_attention
except ImportError:
    fused_attention = None


@dataclass(frozen=True)
class CrysformerConfig:
    # No size defaults: PRESETS holds the named sizes (the paper's is one of them).
    hidden: int
    layers: int
    heads: int
    fourier: int  # K: Fourier frequencies per fractional-coordinate component
    time_dim: int = 256
    elements: str = "learned"  # "learned": an embedding per Z; "descriptors": dao_core.elements

    @classmethod
    def preset(cls, name: str, elements: str = "learned") -> CrysformerConfig:
        try:
            return cls(**PRESETS[name], elements=elements)
        except KeyError:
            raise ValueError(
                f"unknown Crysformer preset {name!r}; choose from {sorted(PRESETS)}"
            ) from None

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)


PRESETS: dict[str, dict[str, int]] = {
    "paper": dict(hidden=384, layers=12, heads=8, fourier=128),
    "base": dict(hidden=256, layers=6, heads=8, fourier=64),
    "small": dict(hidden=128, layers=4, heads=4, fourier=32),
    "tiny": dict(hidden=64, layers=2, heads=4, fourier=16),
}


class CrysformerOutput(NamedTuple):
    coord: torch.Tensor  # (B, N, 3) coordinate score, scaled by 1/sqrt(lambda_t)
    lattice: torch.Tensor  # (B, 3, 3) predicted lattice noise, rotates with L
    energy: torch.Tensor  # (B,) scalar energy (standardised units)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style embedding of the (integer) diffusion step, shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=-1)


class PairGeometry(NamedTuple):
    """What attention needs from the edge features e_ij = LN([Gram(L), Fourier(x_j - x_i)]),
    without the (B, N, N, 9 + 6K) tensor or its per-layer projection to the hidden width.

    The Gram block is one vector per crystal and the LayerNorm statistics over the 9 + 6K
    entries are N x N scalars: the Fourier entries have a constant sum of squares (3K) and a
    separable sum (sin(a - b) = sin a cos b - cos a sin b, cos(a - b) = cos a cos b + sin a sin b).
    The Fourier block itself enters each layer through the query and the messages projected on
    it: the PyTorch path contracts them with Fourier(x_j - x_i), built once for all layers; the
    fused GPU kernel rebuilds it from per-atom waves in on-chip memory.
    """

    relative: torch.Tensor | None  # (B, N, N, 6K): Fourier(x_j - x_i), e_ij's column order
    waves: torch.Tensor  # (B, N, 6K): [sin 2 pi k x_c | cos 2 pi k x_c], (c, k) flattened
    gram: torch.Tensor  # (B, 9): L L^T
    mean: torch.Tensor  # (B, N, N): LayerNorm mean of e_ij
    inv_std: torch.Tensor  # (B, N, N): 1 / sqrt(var(e_ij) + eps)

    def waves_as(self, dtype: torch.dtype) -> PairGeometry:
        """The Fourier features in the layers' compute dtype (statistics stay float32), so the
        products with them stay in that dtype instead of promoting to float32."""
        relative = None if self.relative is None else self.relative.to(dtype)
        return self._replace(relative=relative, waves=self.waves.to(dtype))


def pair_geometry(
    frac: torch.Tensor, lattice: torch.Tensor, fourier: int, eps: float, relative: bool = True
) -> PairGeometry:
    """Per-atom waves, Fourier(x_j - x_i) if ``relative`` (the PyTorch attention's), the Gram
    vector and the pair LayerNorm statistics, kept out of autocast: the statistics feed every
    layer, and bf16 would leave them 3 significant digits."""
    with torch.autocast(frac.device.type, enabled=False):
        k = torch.arange(fourier, device=frac.device, dtype=frac.dtype)
        phase = (2 * math.pi * frac[..., None] * k).flatten(-2)  # (B, N, 3K)
        sin, cos = phase.sin(), phase.cos()
        waves = torch.cat([sin, cos], dim=-1)
        gram = (lattice @ lattice.transpose(1, 2)).flatten(1)
        # sum over (c, k) of sin(a_j - a_i) + cos(a_j - a_i) = (cos+sin)_i.sin_j + (cos-sin)_i.cos_j
        fourier_sum = torch.cat([cos + sin, cos - sin], dim=-1) @ waves.transpose(1, 2)
        dim = 9 + 6 * fourier
        mean = (gram.sum(-1)[:, None, None] + fourier_sum) / dim
        mean_sq = (gram.square().sum(-1)[:, None, None] + 3 * fourier) / dim
        inv_std = torch.rsqrt((mean_sq - mean.square()).clamp(min=0) + eps)
        pair_waves = None
        if relative:  # (c, sin|cos, k) per pair, as the edge features (and W_e's columns)
            dx = 2 * math.pi * (frac[:, None, :, :] - frac[:, :, None, :])  # (B, i, j, 3)
            pair_phase = dx[..., None, None] * k  # (B, N, N, 3, 1, K)
            pair_waves = torch.cat([pair_phase.sin(), pair_phase.cos()], dim=-2).flatten(-3)
    return PairGeometry(pair_waves, waves, gram, mean, inv_std)


class ElementDescriptors(nn.Module):
    """Fixed chemistry-aware descriptors (dao_core.elements) through a linear layer; padding
    (Z = 0) maps to zero, as the learned embedding's padding row does. The table is a buffer,
    so a checkpoint carries the exact descriptors it was trained with."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.register_buffer("table", element_table(MAX_Z))
        self.proj = nn.Linear(self.table.shape[1], hidden)

    def forward(self, atom_types: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table[atom_types]) * (atom_types > 0)[..., None]


class GatedResidual(nn.Module):
    """h <- g*h + (1-g)*h' with one scalar gate per atom, g = sigmoid(w.[h, h', h-h'])."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(3 * hidden, 1)

    def forward(self, h: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        # w.[h, h', h - h'] = (w_1 + w_3).h + (w_2 - w_3).h': the same gate without building
        # the (..., 3H) concatenation (a memory pass per layer when sampling).
        w_h, w_update, w_diff = self.gate.weight.chunk(3, dim=-1)
        logit = F.linear(h, w_h + w_diff, self.gate.bias) + F.linear(update, w_update - w_diff)
        g = torch.sigmoid(logit).to(update.dtype)
        return torch.lerp(update, h.to(update.dtype), g)  # g*h + (1-g)*h'; lerp wants one dtype


class CrysformerLayer(nn.Module):
    def __init__(self, cfg: CrysformerConfig, edge_dim: int) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.hidden // cfg.heads
        self.fourier = cfg.fourier
        self.norm_attn = nn.LayerNorm(cfg.hidden)
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.edge = nn.Linear(edge_dim, cfg.hidden, bias=False)  # W_e
        self.out = nn.Linear(cfg.hidden, cfg.hidden)
        self.res_attn = GatedResidual(cfg.hidden)
        self.norm_ff = nn.LayerNorm(cfg.hidden)
        self.ff = nn.Sequential(
            nn.Linear(cfg.hidden, 4 * cfg.hidden), nn.GELU(), nn.Linear(4 * cfg.hidden, cfg.hidden)
        )
        self.res_ff = GatedResidual(cfg.hidden)

    def forward(
        self,
        h: torch.Tensor,
        pairs: PairGeometry,
        attn_bias: torch.Tensor,
        edge_norm: nn.LayerNorm,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Attention in which receiver i sees sender j's key and value as k_j + W_e e_ij and
        v_j + W_e e_ij, computed exactly from Fourier(x_j - x_i) and N x N scalars
        (PairGeometry)."""
        b, n, _ = h.shape
        heads, dim, waves_dim = self.heads, self.head_dim, 6 * self.fourier
        qkv = self.qkv(self.norm_attn(h)).view(b, n, 3, heads, dim)
        q, k, v = qkv.unbind(2)
        # W_e LN(e) = inv_std * (W_e diag(gamma) e - mean * W_e gamma) + W_e beta.
        w = self.edge.weight * edge_norm.weight  # W_e diag(gamma), (H, 9 + 6K)
        w_wave = w[:, 9:].view(heads, dim, waves_dim)  # columns (c, sin|cos, k)
        gram_vec = (pairs.gram @ w[:, :9].T.to(pairs.gram.dtype)).view(b, 1, heads, dim)
        centre_vec = w.sum(1).view(heads, dim)  # W_e gamma
        shift_vec = (self.edge.weight @ edge_norm.bias).view(heads, dim)  # W_e beta
        if pairs.relative is None:  # the fused kernel: one call, no autograd
            # It rotates per-atom waves ordered [sin (c, k) | cos (c, k)] on chip.
            w_halves = w_wave.view(heads, dim, 3, 2, self.fourier).transpose(2, 3)
            msg = fused_attention.attention_messages(
                qkv, w_halves.reshape(heads, dim, waves_dim), gram_vec.view(b, heads, dim),
                centre_vec, shift_vec, pairs.waves, pairs.mean, pairs.inv_std, mask,
            )  # fmt: skip
            return self._residuals(h, msg)
        inv_std, mean = pairs.inv_std[:, None], pairs.mean[:, None]  # (B, 1, N, N)

        # Logits q_i.(k_j + W_e LN(e_ij)): the query projected on the Fourier features, dotted
        # with Fourier(x_j - x_i). The q_i.W_e beta term is the same for every j and cancels.
        q_wave = torch.einsum("bihd,hdf->bihf", q, w_wave)
        wave_logit = torch.einsum("bihf,bijf->bhij", q_wave, pairs.relative)
        q_gram = (q * gram_vec).sum(-1).transpose(1, 2)[..., None]  # (B, heads, N, 1)
        q_centre = (q * centre_vec).sum(-1).transpose(1, 2)[..., None]
        edge_logit = inv_std * (q_gram + wave_logit - mean * q_centre)
        logits = torch.einsum("bihd,bjhd->bhij", q, k) + edge_logit
        attn = torch.softmax(logits / math.sqrt(dim) + attn_bias, dim=-1)

        # Messages sum_j a_ij (v_j + W_e LN(e_ij)), the Fourier part summed before projecting
        # back. Attention rows sum to one.
        scaled = attn * inv_std
        wave_msg = torch.einsum("bhij,bijf->bihf", scaled.to(pairs.relative.dtype), pairs.relative)
        msg = (
            torch.einsum("bhij,bjhd->bihd", attn, v)
            + torch.einsum("bihf,hdf->bihd", wave_msg, w_wave)
            + scaled.sum(-1).transpose(1, 2)[..., None] * gram_vec
            - (scaled * mean).sum(-1).transpose(1, 2)[..., None] * centre_vec
            + shift_vec
        )
        return self._residuals(h, msg)

    def _residuals(self, h: torch.Tensor, msg: torch.Tensor) -> torch.Tensor:
        h = self.res_attn(h, self.out(msg.flatten(2)))
        return self.res_ff(h, self.ff(self.norm_ff(h)))


class Crysformer(nn.Module):
    """Backbone + three heads: coordinate score, lattice noise (equivariant), energy."""

    def __init__(self, cfg: CrysformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        edge_dim = 9 + 6 * cfg.fourier
        # Z = 1..100 (index 0 is padding): a learned embedding, or fixed descriptors.
        if cfg.elements == "learned":
            self.element: nn.Module = nn.Embedding(MAX_Z + 1, cfg.hidden, padding_idx=0)
        elif cfg.elements == "descriptors":
            self.element = ElementDescriptors(cfg.hidden)
        else:
            raise ValueError(
                f"unknown element encoding {cfg.elements!r}; choose 'learned' or 'descriptors'"
            )
        self.node_in = nn.Linear(cfg.hidden + cfg.time_dim, cfg.hidden)
        self.edge_norm = nn.LayerNorm(edge_dim)
        self.layers = nn.ModuleList(CrysformerLayer(cfg, edge_dim) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.hidden)
        self.coord_head = nn.Linear(cfg.hidden, 3, bias=False)
        self.lattice_head = nn.Linear(cfg.hidden, 9)
        self.energy_head = nn.Sequential(
            nn.Linear(cfg.hidden, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, 1)
        )

    def encode(self, batch: CrystalBatch, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-atom features (B, N, H) and mask-aware mean-pooled crystal features (B, H) of
        ``batch`` at noise steps ``t`` (B,)."""
        atom_types, frac, lattice, mask = batch.atom_types, batch.frac, batch.lattice, batch.mask
        b, n = atom_types.shape
        time = sinusoidal_embedding(t, self.cfg.time_dim)[:, None].expand(b, n, -1)
        h = self.node_in(torch.cat([self.element(atom_types), time], dim=-1))
        fused = fused_attention is not None and fused_attention.enabled(h)
        pairs = pair_geometry(frac, lattice, self.cfg.fourier, self.edge_norm.eps, not fused)
        if torch.is_autocast_enabled(frac.device.type):
            pairs = pairs.waves_as(torch.get_autocast_dtype(frac.device.type))
        # Additive mask: padded senders get -inf; padded receivers still see themselves (no NaN).
        pair = mask[:, None, :] | torch.eye(n, dtype=torch.bool, device=mask.device)[None]
        attn_bias = torch.zeros(pair.shape, dtype=h.dtype, device=h.device)
        attn_bias = attn_bias.masked_fill(~pair, float("-inf"))[:, None]
        for layer in self.layers:
            h = layer(h, pairs, attn_bias, self.edge_norm, mask)
        h = self.final_norm(h) * mask[..., None]
        pooled = h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return h, pooled

    def forward(self, batch: CrystalBatch, t: torch.Tensor) -> CrysformerOutput:
        h, pooled = self.encode(batch, t)
        coord = self.coord_head(h) * batch.mask[..., None]
        lattice_eps = self.lattice_head(pooled).view(-1, 3, 3) @ batch.lattice  # eps_L = M . L
        energy = self.energy_head(pooled).squeeze(-1)
        return CrysformerOutput(coord, lattice_eps, energy)
