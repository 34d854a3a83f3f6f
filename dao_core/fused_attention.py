"""Crysformer attention messages in one Triton kernel (inference only).

`CrysformerLayer`'s PyTorch path contracts the query and the messages with Fourier(x_j - x_i),
a (B, N, N, 6K) tensor read twice per layer from GPU memory, and projects the (B, N, heads, 6K)
products in separate passes. Here one program per head and group of crystals projects the
query onto the per-atom wave basis, rotates it by the receiver's phases (so the pair features
are never stored), forms the logits, the softmax and the messages, and projects back, a chunk
of frequencies at a time, so those products never leave on-chip memory. Small cells share a
program (32 // N crystals stacked in one tile), so the head's weights are read once for all of
them. Same parameters, same result as `CrysformerLayer`'s PyTorch path (tested in Triton's
interpreter on the CPU).

No autograd: the layer uses it only when no gradient is needed (sampling without guidance),
on CUDA tensors (or in Triton's CPU interpreter, `TRITON_INTERPRET=1`, for tests), for cells of
up to 32 sites; the default since its H100 timing (docs/performance.md), `DAO_FUSED_ATTENTION=0`
turns it off.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

# Crystals of up to 32 sites: the tiles measured free of register spills on sm_90 (larger
# cells take the PyTorch path).
FUSED_MAX_SITES = 32
# Rows of a stacked tile; benchmarks compare 0, the smallest tile tl.dot allows: max(16,
# N rounded up to a power of two) rows, which still stacks 16 // N crystals of N <= 8 sites.
STACK_ROWS = 32
# Launch options: 2 warps, 3 stages timed fastest on an H100 for both presets at 5 and 20 atoms
# (1.3-1.9x Triton's default 4 warps; benchmarks/attention_kernel_sweep.py, docs/performance.md).
NUM_WARPS = 2
NUM_STAGES = 3


def enabled(x: torch.Tensor) -> bool:
    """Whether the layer should use the kernel for this call: hidden states ``x`` (B, N, H)
    on a GPU, no gradient, N <= FUSED_MAX_SITES, unless ``DAO_FUSED_ATTENTION=0``."""
    if os.environ.get("DAO_FUSED_ATTENTION", "1") == "0" or torch.is_grad_enabled():
        return False
    if x.shape[-2] > FUSED_MAX_SITES:
        return False
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _chunk(w_head, waves, d, rows, c, d_ok, row_ok, start, K3: tl.constexpr, dtype: tl.constexpr):
    """One chunk of (c, k) frequencies: the head's wave projection columns (D, CHUNK) for the
    sin and cos halves, and the tile's sin and cos waves (rows, CHUNK)."""
    w_at = w_head + d[:, None] * 2 * K3 + start + c[None, :]
    w_sin = tl.load(w_at, mask=d_ok[:, None], other=0.0).to(dtype)
    w_cos = tl.load(w_at + K3, mask=d_ok[:, None], other=0.0).to(dtype)
    wave_at = waves + rows[:, None] * 2 * K3 + start + c[None, :]
    sin = tl.load(wave_at, mask=row_ok[:, None], other=0.0)
    cos = tl.load(wave_at + K3, mask=row_ok[:, None], other=0.0)
    return w_sin, w_cos, sin, cos


@triton.jit
def _attention_kernel(
    q_ptr, k_ptr, v_ptr, stride_b, stride_n, stride_h,
    w_ptr, waves_ptr, mean_ptr, inv_std_ptr, gram_ptr, centre_ptr, shift_ptr, mask_ptr,
    out_ptr, n_atoms, n_sites, group, heads, scale,
    D: tl.constexpr, K3: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    CHUNK: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    # One program: head h of `group` consecutive crystals, their atoms stacked in one tile of
    # BLOCK_N rows (a row is a site: crystal b, atom a); attention stays within a crystal.
    h = tl.program_id(0) % heads
    r = tl.arange(0, BLOCK_N)
    site = tl.program_id(0) // heads * group * n_atoms + r  # = b * n_atoms + a
    row_ok = (r < group * n_atoms) & (site < n_sites)
    site = tl.where(row_ok, site, 0)
    b = site // n_atoms
    a = site % n_atoms
    d = tl.arange(0, BLOCK_D)
    c = tl.arange(0, CHUNK)
    d_ok = d < D
    atom_tile = row_ok[:, None] & d_ok[None, :]
    qkv = (b * stride_b + a * stride_n + h * stride_h)[:, None] + d[None, :]
    q = tl.load(q_ptr + qkv, mask=atom_tile, other=0.0)
    dtype = q.dtype
    w_head = w_ptr + h * D * 2 * K3  # w_wave[h]: (D, [sin (c,k) | cos (c,k)])

    # Logits: the query projected on the wave basis and rotated by -a_i, dotted with the
    # senders' waves, one chunk of (c, k) frequencies at a time.
    wave_logit = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)
    for start in range(0, K3, CHUNK):
        w_sin, w_cos, sin, cos = _chunk(
            w_head, waves_ptr, d, site, c, d_ok, row_ok, start, K3, dtype
        )
        q_sin = tl.dot(q, w_sin, input_precision=PRECISION)
        q_cos = tl.dot(q, w_cos, input_precision=PRECISION)
        sin32, cos32 = sin.to(tl.float32), cos.to(tl.float32)
        rot_sin = (q_sin * cos32 + q_cos * sin32).to(dtype)
        rot_cos = (q_cos * cos32 - q_sin * sin32).to(dtype)
        wave_logit += tl.dot(rot_sin, tl.trans(sin), input_precision=PRECISION)
        wave_logit += tl.dot(rot_cos, tl.trans(cos), input_precision=PRECISION)

    vec = (b * heads * D + h * D)[:, None] + d[None, :]
    gram = tl.load(gram_ptr + vec, mask=atom_tile, other=0.0)  # each row its crystal's
    centre = tl.load(centre_ptr + h * D + d, mask=d_ok, other=0.0)
    shift = tl.load(shift_ptr + h * D + d, mask=d_ok, other=0.0)
    q32 = q.to(tl.float32)
    q_gram = tl.sum(q32 * gram, axis=1)
    q_centre = tl.sum(q32 * centre[None, :], axis=1)
    same = (b[:, None] == b[None, :]) & row_ok[:, None] & row_ok[None, :]
    pair = (b * n_atoms * n_atoms + a * n_atoms)[:, None] + a[None, :]
    mean = tl.load(mean_ptr + pair, mask=same, other=0.0)
    inv_std = tl.load(inv_std_ptr + pair, mask=same, other=0.0)
    k = tl.load(k_ptr + qkv, mask=atom_tile, other=0.0)
    logits = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    logits += inv_std * (q_gram[:, None] + wave_logit - mean * q_centre[:, None])
    # Padded senders and other crystals are masked; every receiver keeps itself (no empty
    # row, no NaN).
    sender = tl.load(mask_ptr + site, mask=row_ok, other=0) != 0
    allowed = (same & sender[None, :]) | (r[:, None] == r[None, :])
    logits = tl.where(allowed, logits * scale, float("-inf"))
    p = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    attn = p / tl.sum(p, axis=1)[:, None]

    # Messages: sum_j a_ij (v_j + W_e LN(e_ij)); the senders' summed waves rotated by +a_i.
    scaled = attn * inv_std
    v = tl.load(v_ptr + qkv, mask=atom_tile, other=0.0)
    msg = tl.dot(attn.to(dtype), v, input_precision=PRECISION)
    msg += tl.sum(scaled, axis=1)[:, None] * gram
    msg += shift[None, :] - tl.sum(scaled * mean, axis=1)[:, None] * centre[None, :]
    scaled = scaled.to(dtype)
    for start in range(0, K3, CHUNK):
        w_sin, w_cos, sin, cos = _chunk(
            w_head, waves_ptr, d, site, c, d_ok, row_ok, start, K3, dtype
        )
        sum_sin = tl.dot(scaled, sin, input_precision=PRECISION)
        sum_cos = tl.dot(scaled, cos, input_precision=PRECISION)
        sin32, cos32 = sin.to(tl.float32), cos.to(tl.float32)
        msg_sin = (sum_sin * cos32 - sum_cos * sin32).to(dtype)
        msg_cos = (sum_cos * cos32 + sum_sin * sin32).to(dtype)
        msg += tl.dot(msg_sin, tl.trans(w_sin), input_precision=PRECISION)
        msg += tl.dot(msg_cos, tl.trans(w_cos), input_precision=PRECISION)
    out = (site * heads * D + h * D)[:, None] + d[None, :]
    tl.store(out_ptr + out, msg.to(out_ptr.dtype.element_ty), mask=atom_tile)


def tile_sizes(n: int, dim: int, k3: int) -> dict[str, int]:
    """The kernel's compile-time sizes: tl.dot wants power-of-two tiles of at least 16 rows;
    cells of up to STACK_ROWS / 2 sites are stacked into tiles of STACK_ROWS rows, so one
    program serves several crystals and loads the head's wave projection once for all of them
    (with one crystal per program, reloading it was most of a 5-atom step: H100 profile in
    docs/performance.md). Chunks of 32 frequencies keep the base and paper presets free of
    register spills on sm_90 (64 spilled; ptxas -v)."""
    assert n <= FUSED_MAX_SITES
    rows = max(16, 1 << (n - 1).bit_length(), STACK_ROWS)
    return dict(
        D=dim, K3=k3, BLOCK_N=rows, BLOCK_D=max(16, 1 << (dim - 1).bit_length()),
        CHUNK=32 if k3 % 32 == 0 else 16,
    )  # fmt: skip


@torch.library.custom_op("dao::attention_messages", mutates_args=())
def attention_messages(
    qkv: torch.Tensor,
    w_wave: torch.Tensor,
    gram_vec: torch.Tensor,
    centre_vec: torch.Tensor,
    shift_vec: torch.Tensor,
    waves: torch.Tensor,
    mean: torch.Tensor,
    inv_std: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Messages (B, N, heads, D) of `CrysformerLayer`'s attention. qkv: (B, N, 3, heads, D),
    the query, key and value of the one qkv projection; w_wave (heads, D, 6K); gram_vec
    (B, heads, D); centre_vec, shift_vec (heads, D); waves (B, N, 6K); mean, inv_std (B, N, N);
    mask (B, N). A registered operator, so `torch.compile` keeps it as one opaque call and
    fuses the PyTorch work around it."""
    b, n, _, heads, dim = qkv.shape
    k3 = waves.shape[-1] // 2
    qkv = qkv.contiguous()
    dtype = qkv.dtype
    out = torch.empty((b, n, heads, dim), dtype=dtype, device=qkv.device)
    sizes = tile_sizes(n, dim, k3)
    group = sizes["BLOCK_N"] // n  # crystals per program
    q, k, v = qkv.unbind(2)
    _attention_kernel[(triton.cdiv(b, group) * heads,)](
        q, k, v, q.stride(0), q.stride(1), q.stride(2),
        w_wave.to(dtype).contiguous(), waves.to(dtype).contiguous(),
        mean.float().contiguous(), inv_std.float().contiguous(),
        gram_vec.float().contiguous(), centre_vec.float().contiguous(),
        shift_vec.float().contiguous(), mask.to(torch.int8).contiguous(), out,
        n, b * n, group, heads, 1 / math.sqrt(dim),
        **sizes, PRECISION="ieee" if dtype == torch.float32 else "tf32",
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )  # fmt: skip
    return out


@attention_messages.register_fake
def _(qkv: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
    b, n, _, heads, dim = qkv.shape
    return qkv.new_empty((b, n, heads, dim))
