"""Dense padded batches (atom type 0 = padding) and DDP-safe, size-bucketed batching."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from dao_core.data.records import CrystalRecord, record_from_structure, right_handed
from dao_core.elements import MAX_Z
from dao_core.errors import DAOInputError


@dataclass
class CrystalBatch:
    """Dense padded batch: padding atoms have type 0, ``mask`` False, zero coordinates."""

    atom_types: torch.Tensor  # (B, N) long
    frac: torch.Tensor  # (B, N, 3) float
    lattice: torch.Tensor  # (B, 3, 3) float, rows = lattice vectors
    mask: torch.Tensor  # (B, N) bool
    energy: torch.Tensor | None = None  # (B,) float, NaN where a record has no label

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CrystalBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return CrystalBatch(
            self.atom_types.to(device, non_blocking=non_blocking),
            self.frac.to(device, non_blocking=non_blocking),
            self.lattice.to(device, non_blocking=non_blocking),
            self.mask.to(device, non_blocking=non_blocking),
            move(self.energy),
        )

    @property
    def num_atoms(self) -> torch.Tensor:
        return self.mask.sum(dim=1)

    @property
    def batch_size(self) -> int:
        return int(self.atom_types.shape[0])

    def __len__(self) -> int:
        return self.batch_size

    def to_structures(self) -> list[Structure]:
        """One right-handed Structure per crystal, padding dropped (values are kept even if
        non-finite)."""
        types = self.atom_types.detach().cpu().numpy()
        frac = self.frac.detach().float().cpu().numpy().astype(np.float64)
        lattice = self.lattice.detach().float().cpu().numpy().astype(np.float64)
        mask = self.mask.detach().cpu().numpy()
        lattice, frac = right_handed(lattice, frac)
        out = []
        for b in range(len(types)):  # per crystal, not per atom
            m = mask[b]
            out.append(
                Structure(
                    Lattice(lattice[b]),
                    types[b][m].tolist(),
                    frac[b][m],
                    coords_are_cartesian=False,
                )
            )
        return out

    @staticmethod
    def _padded(counts: np.ndarray) -> tuple[np.ndarray, int]:
        n_max = int(counts.max()) if len(counts) else 0
        return np.arange(n_max)[None, :] < counts[:, None], n_max

    @classmethod
    def from_records(
        cls, records: Sequence[CrystalRecord], energies_required: bool = False
    ) -> CrystalBatch:
        if len(records) == 0:
            raise DAOInputError("cannot build a batch from zero records")
        counts = np.array([r.num_atoms for r in records], dtype=np.int64)
        mask, n_max = cls._padded(counts)
        types = np.zeros(mask.shape, dtype=np.int64)
        frac = np.zeros((*mask.shape, 3), dtype=np.float32)
        types[mask] = np.concatenate([r.atomic_numbers for r in records])  # row-major fill
        frac[mask] = np.concatenate([r.frac for r in records])
        lattice = np.stack([np.asarray(r.lattice, dtype=np.float32) for r in records])
        missing = [r.material_id or str(i) for i, r in enumerate(records) if r.energy is None]
        if energies_required and missing:
            raise DAOInputError(
                f"{len(missing)} record(s) have no energy label (e.g. {missing[:3]}); "
                "an energy column is required"
            )
        energy = None
        if len(missing) < len(records):
            energy = torch.tensor(
                [np.nan if r.energy is None else r.energy for r in records], dtype=torch.float32
            )
        return cls(
            torch.from_numpy(types),
            torch.from_numpy(frac),
            torch.from_numpy(lattice),
            torch.from_numpy(mask),
            energy,
        )

    @classmethod
    def from_structures(
        cls, structures: Sequence[Structure], canonical: bool = False
    ) -> CrystalBatch:
        return cls.from_records([record_from_structure(s, canonical=canonical) for s in structures])

    @classmethod
    def from_compositions(cls, compositions: Sequence[np.ndarray | Sequence[int]]) -> CrystalBatch:
        """Atom types only (for sampling): zero coordinates and identity lattices."""
        if len(compositions) == 0:
            raise DAOInputError("cannot build a batch from zero compositions")
        arrays = [np.asarray(c, dtype=np.int64).reshape(-1) for c in compositions]
        counts = np.array([len(a) for a in arrays], dtype=np.int64)
        if (counts == 0).any():
            raise DAOInputError(f"composition {int(np.argmax(counts == 0))} has no atoms")
        mask, n_max = cls._padded(counts)
        types = np.zeros(mask.shape, dtype=np.int64)
        types[mask] = np.concatenate(arrays)
        if types[mask].min() < 1 or types[mask].max() > MAX_Z:
            raise DAOInputError(f"atomic numbers must be in 1..{MAX_Z}")
        b = len(arrays)
        return cls(
            torch.from_numpy(types),
            torch.zeros(b, n_max, 3),
            torch.eye(3).expand(b, 3, 3).clone(),
            torch.from_numpy(mask),
            None,
        )


def bucketed_batches(
    records: Sequence[CrystalRecord],
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    max_pairs_per_batch: int | None = None,
) -> Iterator[list[int]]:
    """Shuffled batches of similar-sized crystals (little padding), sharded over ranks.

    Indices are shuffled, cut into chunks of 50 batches, sorted by atom count inside each chunk,
    then batches are shuffled again; every rank gets the same number of batches (as DDP needs),
    so up to ``world_size - 1`` batches are left out per epoch. Pass seed + epoch to reshuffle.
    ``max_pairs_per_batch`` splits batches of large crystals so B * Nmax^2 stays bounded.
    """
    if batch_size < 1:
        raise DAOInputError(f"batch_size must be at least 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise DAOInputError(f"rank {rank} is outside 0..{world_size - 1}")
    rng = np.random.default_rng(seed)
    sizes = np.array([len(r.atomic_numbers) for r in records])
    order = rng.permutation(len(records))
    chunk = 50 * batch_size
    batches: list[np.ndarray] = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(sizes[part], kind="stable")]
        for b in range(0, len(part), batch_size):
            idx = part[b : b + batch_size]
            if max_pairs_per_batch:  # keep B * Nmax^2 bounded for large crystals
                cap = max(1, max_pairs_per_batch // int(sizes[idx].max()) ** 2)
                batches.extend(idx[i : i + cap] for i in range(0, len(idx), cap))
            else:
                batches.append(idx)
    batches = [batches[i] for i in rng.permutation(len(batches))]
    per_rank = len(batches) // world_size
    yield from (b.tolist() for b in batches[rank * per_rank : (rank + 1) * per_rank])


# What one more sampling batch costs, in padded atom rows of work per network evaluation: a
# GPU evaluation has a latency floor of about two thousand rows (the 5-atom H100 profile:
# ~90 kernels of a few microseconds against 4.9 ms for 20,480 rows); a CPU has almost none.
BATCH_COST_ROWS = {"cuda": 2048.0, "cpu": 64.0}


def size_buckets(
    sizes: Sequence[int], batch_size: int, batch_cost: float = BATCH_COST_ROWS["cuda"]
) -> list[np.ndarray]:
    """Sampling batches of similar-sized crystals: indices sorted by atom count and cut where
    the padding a cut saves outweighs the cost of one more batch (``batch_cost``, see
    :data:`BATCH_COST_ROWS`), each batch at most ``batch_size`` long. ``inf`` makes no cut, so
    the sorted indices are just chunked into the fewest batches, each still padded to its own
    largest crystal: sizes [5, 20, 5, 10, 10] with ``batch_size`` 2 give three shapes (5, 10,
    20 atoms). Carbon-24's validation file (6-24 atoms, 2,032 crystals) in one batch padded
    to 24 atoms is 2.2x the rows of its three GPU buckets."""
    if batch_size < 1:
        raise DAOInputError(f"batch_size must be at least 1, got {batch_size}")
    sizes = np.asarray(sizes)
    order = np.argsort(sizes, kind="stable")
    values, counts = np.unique(sizes[order], return_counts=True)
    ends = np.cumsum(counts)  # groups of equal size; a bucket is a run of whole groups
    starts = np.concatenate([[0], ends[:-1]])

    def cost(i: int, j: int) -> float:  # groups i..j in one bucket, padded to values[j]
        n = int(ends[j] - starts[i])
        return -(-n // batch_size) * batch_cost + n * float(values[j])

    # cut[j]: the first group of the last bucket in the cheapest split of groups 0..j-1
    best = [0.0] + [np.inf] * len(values)
    cut = [0] * (len(values) + 1)
    if np.isfinite(batch_cost):
        for j in range(len(values)):
            for i in range(j + 1):
                c = best[i] + cost(i, j)
                if c < best[j + 1]:
                    best[j + 1], cut[j + 1] = c, i
    bounds, j = [], len(values)
    while j > 0:  # with an infinite batch_cost every cut is 0: one run of all sizes
        bounds.append((int(starts[cut[j]]), int(ends[j - 1])))
        j = cut[j]
    return [
        order[b : min(b + batch_size, hi)]
        for lo, hi in reversed(bounds)
        for b in range(lo, hi, batch_size)
    ]
