"""Crysformer: the transformer backbone shared by DAO-G and DAO-P (method doc, section 2).

Every crystal in a batch is a dense, padded block of ``N`` atoms; attention runs over all atom pairs
of the same crystal (self-loops included) with invariant edge features added to keys and values.
Padding is handled with masks, so the whole batch is a few batched matrix products.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

MAX_Z = 100


@dataclass(frozen=True)
class CrysformerConfig:
    hidden: int = 384
    layers: int = 12
    heads: int = 8
    fourier: int = 128  # K: Fourier frequencies per fractional-coordinate component
    time_dim: int = 256

    @classmethod
    def preset(cls, name: str) -> CrysformerConfig:
        try:
            return cls(**PRESETS[name])
        except KeyError:
            raise ValueError(
                f"unknown Crysformer preset {name!r}; choose from {sorted(PRESETS)}"
            ) from None

    def to_dict(self) -> dict[str, int]:
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


def edge_features(frac: torch.Tensor, lattice: torch.Tensor, fourier: int) -> torch.Tensor:
    """Invariant pair features (B, N, N, 9 + 6K): Gram matrix entries and Fourier features of dx."""
    b, n, _ = frac.shape
    dx = torch.remainder(frac[:, None, :, :] - frac[:, :, None, :], 1.0)  # x_j - x_i, (B, N, N, 3)
    k = torch.arange(fourier, device=frac.device, dtype=frac.dtype)
    phase = 2 * math.pi * dx[..., None] * k  # (B, N, N, 3, K)
    fourier_feats = torch.cat([phase.sin(), phase.cos()], dim=-1).reshape(b, n, n, 6 * fourier)
    gram = (lattice @ lattice.transpose(1, 2)).reshape(b, 1, 1, 9).expand(b, n, n, 9)
    return torch.cat([gram, fourier_feats], dim=-1)


class GatedResidual(nn.Module):
    """h <- g*h + (1-g)*h' with one scalar gate per atom, g = sigmoid(w.[h, h', h-h'])."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(3 * hidden, 1)

    def forward(self, h: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([h, update, h - update], dim=-1)))
        return g * h + (1 - g) * update


class CrysformerLayer(nn.Module):
    def __init__(self, cfg: CrysformerConfig, edge_dim: int) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.hidden // cfg.heads
        self.norm_attn = nn.LayerNorm(cfg.hidden)
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.edge = nn.Linear(edge_dim, cfg.hidden, bias=False)
        self.out = nn.Linear(cfg.hidden, cfg.hidden)
        self.res_attn = GatedResidual(cfg.hidden)
        self.norm_ff = nn.LayerNorm(cfg.hidden)
        self.ff = nn.Sequential(
            nn.Linear(cfg.hidden, 4 * cfg.hidden), nn.GELU(), nn.Linear(4 * cfg.hidden, cfg.hidden)
        )
        self.res_ff = GatedResidual(cfg.hidden)

    def forward(
        self, h: torch.Tensor, edges: torch.Tensor, attn_bias: torch.Tensor
    ) -> torch.Tensor:
        b, n, width = h.shape
        q, k, v = self.qkv(self.norm_attn(h)).view(b, n, 3, self.heads, self.head_dim).unbind(2)
        e = self.edge(edges).view(b, n, n, self.heads, self.head_dim)  # W_e e_ij
        # Keys/values of j seen by receiver i are k_j + W_e e_ij and v_j + W_e e_ij.
        logits = torch.einsum("bihd,bjhd->bhij", q, k) + torch.einsum("bihd,bijhd->bhij", q, e)
        attn = torch.softmax(logits / math.sqrt(self.head_dim) + attn_bias, dim=-1)
        msg = torch.einsum("bhij,bjhd->bihd", attn, v) + torch.einsum("bhij,bijhd->bihd", attn, e)
        h = self.res_attn(h, self.out(msg.reshape(b, n, width)))
        return self.res_ff(h, self.ff(self.norm_ff(h)))


class Crysformer(nn.Module):
    """Backbone + three heads: coordinate score, lattice noise (equivariant), energy."""

    def __init__(self, cfg: CrysformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        edge_dim = 9 + 6 * cfg.fourier
        # A learned element embedding covering Z = 1..100 (index 0 is padding).
        self.element = nn.Embedding(MAX_Z + 1, cfg.hidden, padding_idx=0)
        self.node_in = nn.Linear(cfg.hidden + cfg.time_dim, cfg.hidden)
        self.edge_norm = nn.LayerNorm(edge_dim)
        self.layers = nn.ModuleList(CrysformerLayer(cfg, edge_dim) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.hidden)
        self.coord_head = nn.Linear(cfg.hidden, 3, bias=False)
        self.lattice_head = nn.Linear(cfg.hidden, 9)
        self.energy_head = nn.Sequential(
            nn.Linear(cfg.hidden, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, 1)
        )

    def encode(
        self,
        atom_types: torch.Tensor,
        frac: torch.Tensor,
        lattice: torch.Tensor,
        mask: torch.Tensor,
        t: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-atom features (B, N, H) and mask-aware mean-pooled crystal features (B, H)."""
        b, n = atom_types.shape
        time = sinusoidal_embedding(t, self.cfg.time_dim)[:, None].expand(b, n, -1)
        h = self.node_in(torch.cat([self.element(atom_types), time], dim=-1))
        edges = self.edge_norm(edge_features(frac, lattice, self.cfg.fourier))
        # Additive mask: padded senders get -inf; padded receivers still see themselves (no NaN).
        pair = mask[:, None, :] | torch.eye(n, dtype=torch.bool, device=mask.device)[None]
        attn_bias = torch.zeros(pair.shape, dtype=h.dtype, device=h.device)
        attn_bias = attn_bias.masked_fill(~pair, float("-inf"))[:, None]
        for layer in self.layers:
            h = layer(h, edges, attn_bias)
        h = self.final_norm(h) * mask[..., None]
        pooled = h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return h, pooled

    def forward(
        self,
        atom_types: torch.Tensor,
        frac: torch.Tensor,
        lattice: torch.Tensor,
        mask: torch.Tensor,
        t: torch.Tensor,
    ) -> CrysformerOutput:
        h, pooled = self.encode(atom_types, frac, lattice, mask, t)
        coord = self.coord_head(h) * mask[..., None]
        lattice_eps = self.lattice_head(pooled).view(-1, 3, 3) @ lattice  # eps_L = M . L
        energy = self.energy_head(pooled).squeeze(-1)
        return CrysformerOutput(coord, lattice_eps, energy)
