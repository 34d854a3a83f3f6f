"""The materialised Crysformer attention, as the shipped checkpoints were trained: the
(B, N, N, 9 + 6K) edge tensor LN([Gram, Fourier(x_j - x_i)]) built and projected per layer.
The model computes the same function factorised (dao_core.model.PairGeometry); this module is
the reference that tests and benchmarks/sampling_throughput.py compare it with.
"""

import math

import torch

from dao_core.data import CrystalBatch
from dao_core.model import Crysformer, CrysformerLayer, CrysformerOutput, sinusoidal_embedding


def materialised_edges(frac: torch.Tensor, lattice: torch.Tensor, fourier: int) -> torch.Tensor:
    b, n, _ = frac.shape
    dx = torch.remainder(frac[:, None, :, :] - frac[:, :, None, :], 1.0)  # x_j - x_i
    k = torch.arange(fourier, dtype=frac.dtype, device=frac.device)
    phase = 2 * math.pi * dx[..., None] * k  # (B, N, N, 3, K)
    waves = torch.cat([phase.sin(), phase.cos()], dim=-1).reshape(b, n, n, 6 * fourier)
    gram = (lattice @ lattice.transpose(1, 2)).reshape(b, 1, 1, 9).expand(b, n, n, 9)
    return torch.cat([gram, waves], dim=-1)


def materialised_layer(
    layer: CrysformerLayer, h: torch.Tensor, edges: torch.Tensor, attn_bias: torch.Tensor
) -> torch.Tensor:
    b, n, width = h.shape
    q, k, v = layer.qkv(layer.norm_attn(h)).view(b, n, 3, layer.heads, layer.head_dim).unbind(2)
    e = layer.edge(edges).view(b, n, n, layer.heads, layer.head_dim)
    logits = torch.einsum("bihd,bjhd->bhij", q, k) + torch.einsum("bihd,bijhd->bhij", q, e)
    attn = torch.softmax(logits / math.sqrt(layer.head_dim) + attn_bias, dim=-1)
    msg = torch.einsum("bhij,bjhd->bihd", attn, v) + torch.einsum("bhij,bijhd->bihd", attn, e)
    h = layer.res_attn(h, layer.out(msg.reshape(b, n, width)))
    return layer.res_ff(h, layer.ff(layer.norm_ff(h)))


def materialised_forward(net: Crysformer, batch: CrystalBatch, t: torch.Tensor) -> CrysformerOutput:
    """Crysformer.forward as trained: the edge tensor built, normalised and projected."""
    atom_types, frac, lattice, mask = batch.atom_types, batch.frac, batch.lattice, batch.mask
    b, n = atom_types.shape
    time = sinusoidal_embedding(t, net.cfg.time_dim)[:, None].expand(b, n, -1).to(frac.dtype)
    h = net.node_in(torch.cat([net.element(atom_types), time], dim=-1))
    edges = net.edge_norm(materialised_edges(frac, lattice, net.cfg.fourier))
    pair = mask[:, None, :] | torch.eye(n, dtype=torch.bool, device=mask.device)[None]
    attn_bias = torch.zeros(pair.shape, dtype=h.dtype, device=h.device)
    attn_bias = attn_bias.masked_fill(~pair, float("-inf"))[:, None]
    for layer in net.layers:
        h = materialised_layer(layer, h, edges, attn_bias)
    h = net.final_norm(h) * mask[..., None]
    pooled = h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    coord = net.coord_head(h) * mask[..., None]
    lattice_eps = net.lattice_head(pooled).view(-1, 3, 3) @ lattice
    return CrysformerOutput(coord, lattice_eps, net.energy_head(pooled).squeeze(-1))
