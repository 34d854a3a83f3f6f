"""Crystal data: composition parsing, canonical cells, CSV loading with a cache, padded batches,
DDP-safe batching and recorded train/validation splits.

A crystal is (A, L, X): atomic numbers, a 3x3 lattice with one lattice vector per row (Å) and
fractional coordinates in [0, 1). Batches are dense and padded (atom type 0 = padding).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pymatgen.core import Composition, Element, Lattice, Structure

from dao_core.errors import DAOInputError

log = logging.getLogger(__name__)

MAX_ATOMS = 100
MAX_Z = 100
CACHE_VERSION = 2  # bump when the preprocessing changes, so stale caches are not reused
PARALLEL_MIN_ROWS = 400  # below this a process pool costs more than it saves

_ZERO_AMOUNT = re.compile(r"([A-Z][a-z]?)0+(?:\.0*)?(?![\d.])")


# --- compositions -------------------------------------------------------------------------------


def parse_composition(
    formula: str, formula_units: int | None = None, max_atoms: int = MAX_ATOMS
) -> np.ndarray:
    """Atomic numbers (int64, one per atom, grouped by element in order of appearance).

    ``formula_units`` multiplies the formula as written: ("CsV3Sb5", 2) -> 18 atoms.
    """
    if not isinstance(formula, str) or not formula.strip():
        raise DAOInputError(f"empty formula {formula!r}: give a chemical formula such as 'NaCl'")
    formula = formula.strip()
    if formula_units is None:
        formula_units = 1
    if isinstance(formula_units, bool) or not isinstance(formula_units, int | np.integer):
        raise DAOInputError(f"formula_units must be a whole number, got {formula_units!r}")
    if formula_units < 1:
        raise DAOInputError(f"formula_units must be at least 1, got {formula_units}")
    try:
        comp = Composition(formula)
    except Exception as exc:  # pymatgen raises ValueError/KeyError/... for unparseable strings
        raise DAOInputError(f"cannot parse formula {formula!r}: {exc}") from exc
    # pymatgen silently drops zero amounts ("H0O" -> O); an explicit 0 is almost surely a typo.
    zero = _ZERO_AMOUNT.search(formula)
    if zero:
        raise DAOInputError(f"formula {formula!r} gives element {zero.group(1)} an amount of 0")
    if len(comp) == 0:
        raise DAOInputError(f"formula {formula!r} contains no elements")
    numbers, counts = [], []
    for species, amount in comp.items():
        if not isinstance(species, Element):  # DummySpecies ("Xx") or an ion ("Fe2+")
            symbol = getattr(species, "symbol", str(species))
            raise DAOInputError(f"unknown element {symbol!r} in formula {formula!r}")
        if species.Z > MAX_Z:
            raise DAOInputError(
                f"element {species.symbol} (Z={species.Z}) in formula {formula!r} is beyond "
                f"Z={MAX_Z}, which the models do not support"
            )
        if abs(amount - round(amount)) > 1e-8 or round(amount) < 1:
            raise DAOInputError(
                f"element {species.symbol} has a non-integer amount {amount:g} in formula "
                f"{formula!r}; give whole atom counts (e.g. 'Fe2O3', not 'FeO1.5')"
            )
        numbers.append(species.Z)
        counts.append(int(round(amount)) * int(formula_units))
    total = int(sum(counts))
    if total > max_atoms:
        raise DAOInputError(
            f"formula {formula!r} x {formula_units} formula unit(s) has {total} atoms; "
            f"at most {max_atoms} atoms are supported"
        )
    return np.repeat(np.asarray(numbers, dtype=np.int64), counts)


# --- structures ---------------------------------------------------------------------------------


def _wrap(frac: np.ndarray) -> np.ndarray:
    """Fractional coordinates in [0, 1): x % 1 can round to exactly 1.0 for tiny negatives."""
    frac = np.mod(frac, 1.0)
    frac[frac >= 1.0] = 0.0
    return frac


def canonicalize(structure: Structure) -> Structure:
    """Niggli-reduce the given cell and rebuild the lattice from (a, b, c, α, β, γ), as
    CDVAE/DiffCSP preprocess (no primitive-cell search); coordinates wrapped into [0, 1)."""
    reduced = structure.get_reduced_structure()  # Niggli by default
    lattice = Lattice.from_parameters(*reduced.lattice.parameters)
    return Structure(
        lattice,
        reduced.species,
        _wrap(np.array(reduced.frac_coords, dtype=np.float64)),
        coords_are_cartesian=False,
    )


@dataclass
class CrystalRecord:
    """One crystal as arrays (cheap to pickle, cache and batch)."""

    atomic_numbers: np.ndarray  # (N,) int64
    frac: np.ndarray  # (N, 3) float32 in [0, 1)
    lattice: np.ndarray  # (3, 3) float32, rows = lattice vectors (Å)
    energy: float | None = None
    material_id: str = ""

    @property
    def num_atoms(self) -> int:
        return len(self.atomic_numbers)

    def to_structure(self) -> Structure:
        return Structure(
            Lattice(np.asarray(self.lattice, dtype=np.float64)),
            [int(z) for z in self.atomic_numbers],
            np.asarray(self.frac, dtype=np.float64),
            coords_are_cartesian=False,
        )

    @classmethod
    def from_structure(
        cls,
        structure: Structure,
        energy: float | None = None,
        material_id: str = "",
        canonical: bool = True,
    ) -> CrystalRecord:
        return record_from_structure(structure, energy, material_id, canonical)


def record_from_structure(
    structure: Structure,
    energy: float | None = None,
    material_id: str = "",
    canonical: bool = True,
) -> CrystalRecord:
    """Arrays of an ordered structure (Niggli-canonicalised unless ``canonical=False``)."""
    if not structure.is_ordered:
        raise DAOInputError(
            f"structure {material_id or structure.composition.formula!r} is disordered "
            "(partial occupancies); only ordered structures are supported"
        )
    if canonical:
        structure = canonicalize(structure)
    numbers = np.array([site.specie.Z for site in structure], dtype=np.int64)
    return CrystalRecord(
        atomic_numbers=numbers,
        # Wrap after the cast: 0.99999999 becomes 1.0 in float32.
        frac=_wrap(np.array(structure.frac_coords, dtype=np.float32)),
        lattice=np.array(structure.lattice.matrix, dtype=np.float32),
        energy=None if energy is None else float(energy),
        material_id=str(material_id),
    )


# --- CSV loading --------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    return Path(os.environ.get("DAO_CACHE_DIR", Path.home() / ".cache" / "dao" / "preprocessed"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_Parsed = tuple[np.ndarray, np.ndarray, np.ndarray] | str


def _parse_cif(cif: Any, canonical: bool) -> _Parsed:
    """(numbers, frac, lattice) or an error message; module-level so a process pool can use it."""
    try:
        if not isinstance(cif, str) or not cif.strip():
            return "empty cif"
        with warnings.catch_warnings():  # pymatgen warns per file (e.g. rounded coordinates)
            warnings.simplefilter("ignore")
            structure = Structure.from_str(cif, fmt="cif")
        rec = record_from_structure(structure, canonical=canonical)
        return rec.atomic_numbers, rec.frac, rec.lattice
    except Exception as exc:  # any pymatgen/CIF failure becomes a row-level error
        return f"{type(exc).__name__}: {exc}".strip()


def _parse_cif_chunk(args: tuple[list[Any], bool]) -> list[_Parsed]:
    cifs, canonical = args
    return [_parse_cif(c, canonical) for c in cifs]


def _mp_context() -> mp.context.BaseContext:
    # fork: workers start instantly and need no importable __main__ (scripts without a
    # main guard work); they only run pymatgen/numpy, never CUDA.
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def _parse_all(cifs: list[Any], canonical: bool, workers: int | None = None) -> list[_Parsed]:
    workers = workers or os.cpu_count() or 1
    if workers < 2 or len(cifs) < PARALLEL_MIN_ROWS:
        return _parse_cif_chunk((cifs, canonical))
    size = max(16, math.ceil(len(cifs) / (workers * 8)))  # a few chunks per worker balances load
    chunks = [(cifs[i : i + size], canonical) for i in range(0, len(cifs), size)]
    with _mp_context().Pool(min(workers, len(chunks))) as pool:
        parts = pool.map(_parse_cif_chunk, chunks)
    return [p for part in parts for p in part]


def save_records(
    path: str | Path, records: Sequence[CrystalRecord], label: str | None = None
) -> Path:
    """Write records as one compressed ``.npz`` (the cache format, and ``dao preprocess``'s
    output): the 80k-structure MP file takes 8.5 MB, small enough to travel to a GPU machine.
    ``label`` names the energy column the records were read with."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = np.array([r.num_atoms for r in records], dtype=np.int64)
    has_energy = np.array([r.energy is not None for r in records], dtype=bool)
    arrays = {
        "num_atoms": counts,
        "atomic_numbers": np.concatenate([r.atomic_numbers for r in records]).astype(np.uint8)
        if records
        else np.zeros(0, np.uint8),
        "frac": np.concatenate([r.frac for r in records]) if records else np.zeros((0, 3), "f4"),
        "lattice": np.stack([r.lattice for r in records]) if records else np.zeros((0, 3, 3), "f4"),
        "energy": np.array([np.nan if r.energy is None else r.energy for r in records], "f8"),
        "has_energy": has_energy,
        "material_id": np.array([r.material_id for r in records], dtype=str),
        "label": np.array(label or ""),
    }
    # Write-then-rename: concurrent DDP ranks never read a half-written cache.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def records_label(path: str | Path) -> str | None:
    """The energy column a file written by :func:`save_records` was read with (None: none)."""
    with np.load(path, allow_pickle=False) as z:
        stored = str(z["label"]) if "label" in z else ""
    return stored or None


def load_records(path: str | Path) -> list[CrystalRecord]:
    """Records of a file written by :func:`save_records`."""
    with np.load(path, allow_pickle=False) as z:
        counts = z["num_atoms"]
        all_numbers = z["atomic_numbers"].astype(np.int64)
        numbers = np.split(all_numbers, np.cumsum(counts)[:-1]) if len(counts) else []
        frac = np.split(z["frac"], np.cumsum(counts)[:-1]) if len(counts) else []
        lattice, energy, has_energy = z["lattice"], z["energy"], z["has_energy"]
        ids = z["material_id"]
    return [
        CrystalRecord(
            atomic_numbers=numbers[i],
            frac=frac[i],
            lattice=lattice[i],
            energy=float(energy[i]) if has_energy[i] else None,
            material_id=str(ids[i]),
        )
        for i in range(len(counts))
    ]


def load_csv(
    path: str | Path,
    label: str | None = None,
    canonical: bool = True,
    cache_dir: str | Path | None = None,
    max_atoms: int = MAX_ATOMS,
    workers: int | None = None,
) -> list[CrystalRecord]:
    """Records of a CDVAE-layout CSV (``cif`` column; ``material_id`` if present), or of a
    ``.npz`` written by ``dao preprocess`` (:func:`save_records`; its label is fixed).

    ``label`` names the energy column: rows where it is missing are dropped (and logged).
    Crystals with more than ``max_atoms`` atoms are dropped (and logged). The result is cached
    in ``cache_dir`` (default ``$DAO_CACHE_DIR`` or ``~/.cache/dao/preprocessed``), keyed by the
    file's sha256 and the options; ``cache_dir=""`` disables caching. CIFs are parsed in a
    process pool (``workers``, default all CPUs) for files of ``PARALLEL_MIN_ROWS`` rows or more.
    """
    path = Path(path)
    if not path.is_file():
        raise DAOInputError(f"data file {str(path)!r} does not exist or is not a file")
    if path.suffix == ".npz":
        return _load_preprocessed(path, label, max_atoms)
    try:
        digest = _sha256(path)
    except OSError as exc:
        raise DAOInputError(f"cannot read data file {str(path)!r}: {exc}") from exc
    options = f"v{CACHE_VERSION}|label={label}|canonical={canonical}|max_atoms={max_atoms}"
    key = hashlib.sha256(f"{digest}|{options}".encode()).hexdigest()[:24]
    use_cache = cache_dir != ""
    cache_path = Path(cache_dir or default_cache_dir()) / f"{path.stem}-{key}.npz"
    if use_cache and cache_path.is_file():
        try:
            records = load_records(cache_path)
            log.info("%s: %d records from cache %s", path, len(records), cache_path)
            return records
        except Exception as exc:  # a corrupt cache is rebuilt, never fatal
            log.warning("ignoring unreadable cache %s: %s", cache_path, exc)

    try:
        frame = pd.read_csv(path)
    except Exception as exc:  # ParserError, UnicodeDecodeError, EmptyDataError, ...
        raise DAOInputError(f"cannot read data file {str(path)!r} as CSV: {exc}") from exc
    if "cif" not in frame.columns:
        raise DAOInputError(
            f"data file {str(path)!r} has no 'cif' column (columns: {list(frame.columns)})"
        )
    if label is not None and label not in frame.columns:
        raise DAOInputError(
            f"data file {str(path)!r} has no label column {label!r} "
            f"(columns: {list(frame.columns)})"
        )
    rows = np.arange(len(frame))  # 0-based data-row numbers, for error messages
    ids = (
        frame["material_id"].astype(str).to_numpy()
        if "material_id" in frame.columns
        else np.array([str(i) for i in rows])
    )
    energies = np.full(len(frame), np.nan)
    if label is not None:
        energies = pd.to_numeric(frame[label], errors="coerce").to_numpy(dtype=float)
        keep = np.isfinite(energies)
        if not keep.all():
            log.warning(
                "%s: dropped %d of %d rows with no %r label", path, (~keep).sum(), len(keep), label
            )
        rows, ids, energies = rows[keep], ids[keep], energies[keep]

    parsed = _parse_all(frame["cif"].to_numpy()[rows].tolist(), canonical, workers)
    records: list[CrystalRecord] = []
    too_big = 0
    for row, mid, energy, item in zip(rows, ids, energies, parsed, strict=True):
        if isinstance(item, str):
            raise DAOInputError(
                f"data file {str(path)!r}, row {row} (0-based, after the header; material_id "
                f"{mid}): unreadable CIF: {item}"
            )
        numbers, frac, lattice = item
        if len(numbers) > max_atoms:
            too_big += 1
            continue
        records.append(
            CrystalRecord(numbers, frac, lattice, None if label is None else float(energy), mid)
        )
    if too_big:
        log.warning("%s: dropped %d crystals with more than %d atoms", path, too_big, max_atoms)
    if use_cache:
        try:
            save_records(cache_path, records, label)
        except OSError as exc:  # read-only home etc.: loading still works, just uncached
            log.warning("could not write cache %s: %s", cache_path, exc)
    log.info("%s: %d records", path, len(records))
    return records


def _load_preprocessed(path: Path, label: str | None, max_atoms: int) -> list[CrystalRecord]:
    try:
        stored = records_label(path)
        records = load_records(path)
    except Exception as exc:  # not an npz, or not one of ours
        raise DAOInputError(f"cannot read preprocessed data file {str(path)!r}: {exc}") from exc
    if label is not None and label != stored:
        raise DAOInputError(
            f"preprocessed data file {str(path)!r} holds the label {stored!r}, not {label!r} "
            "(labels are chosen at `dao preprocess`)"
        )
    kept = [r for r in records if r.num_atoms <= max_atoms]
    if len(kept) < len(records):
        log.warning("%s: dropped %d crystals with more than %d atoms", path,
                    len(records) - len(kept), max_atoms)  # fmt: skip
    return kept


def load_many(
    paths: Sequence[str | Path],
    label_map: Mapping[str, str | None] | None = None,
    default_label: str | None = None,
    **kwargs: Any,
) -> dict[str, list[CrystalRecord]]:
    """Load several CSVs, each with its own label column: ``{str(path): records}``.

    ``label_map`` keys may be the path as given, the file name or the folder name
    (e.g. ``{"mp_20_slice": "formation_energy_per_atom", "carbon_24": "energy_per_atom"}``);
    files not in it use ``default_label``. Other keyword arguments go to :func:`load_csv`.
    """
    label_map = dict(label_map or {})
    out: dict[str, list[CrystalRecord]] = {}
    for p in paths:
        p = Path(p)
        label = default_label
        for key in (str(p), p.name, p.parent.name):
            if key in label_map:
                label = label_map[key]
                break
        out[str(p)] = load_csv(p, label, **kwargs)
    return out


# --- batches ------------------------------------------------------------------------------------


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


def right_handed(lattice: np.ndarray, frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same crystals with right-handed lattices (det > 0), for (..., 3, 3) lattices and
    (..., N, 3) fractional coordinates.

    DAO-G is reflection-invariant, so about half its cells come out left-handed. That is the same
    crystal, but CHGNet divides its stress by the *signed* volume, so a left-handed cell relaxes
    the wrong way and collapses. Negating all three vectors and the fractional coordinates keeps
    every Cartesian position and makes the determinant positive.
    """
    flip = np.linalg.det(lattice) < 0
    sign = np.where(flip, -1.0, 1.0)[..., None, None]
    frac = np.where(sign > 0, frac, np.remainder(-frac, 1.0))
    return lattice * sign, frac


def right_handed_structure(structure: Structure) -> Structure:
    """``structure`` itself if its lattice is right-handed, else the same crystal re-expressed
    in a right-handed cell (see :func:`right_handed`)."""
    if np.linalg.det(structure.lattice.matrix) >= 0:
        return structure
    lattice, frac = right_handed(structure.lattice.matrix, structure.frac_coords)
    return Structure(
        Lattice(lattice), structure.species, frac, site_properties=structure.site_properties
    )


# --- splits -------------------------------------------------------------------------------------


def split_records(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) index arrays; deterministic for ``seed`` (numpy Generator)."""
    if n < 0:
        raise DAOInputError(f"number of records must be >= 0, got {n}")
    if not 0.0 <= val_fraction < 1.0:
        raise DAOInputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n > 1:
        n_val = min(max(n_val, 1), n - 1)  # both sides non-empty when a split is asked for
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _plain(ids: Sequence[Any] | np.ndarray) -> list[Any]:
    return [i.item() if isinstance(i, np.generic) else i for i in list(ids)]


def save_split(
    path: str | Path,
    ids_train: Sequence[Any] | np.ndarray | None,
    ids_val: Sequence[Any] | np.ndarray,
    seed: int,
    source: str | Sequence[str],
    val_sets: Mapping[str, Sequence[Any]] | None = None,
) -> Path:
    """Write a split (material ids or row indices) as JSON so it can be committed.

    ``ids_train=None`` records only the held-out ids: everything else in ``source`` trains
    (compact for large corpora). ``val_sets`` names subsets of the validation ids.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "seed": int(seed),
        "source": source if isinstance(source, str) else list(source),
        "n_val": len(ids_val),
    }
    if ids_train is not None:
        doc |= {"n_train": len(ids_train), "train": _plain(ids_train)}
    doc["val"] = _plain(ids_val)
    if val_sets:
        doc["val_sets"] = {k: _plain(v) for k, v in val_sets.items()}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def load_split(path: str | Path) -> dict[str, Any]:
    """The dict written by :func:`save_split` (keys seed, source, val, and train if recorded)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DAOInputError(f"cannot read split file {str(path)!r}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("val"), list):
        raise DAOInputError(f"split file {str(path)!r} lacks a 'val' list")
    return doc


def held_out_ids(spec: str | Path) -> set[Any]:
    """The validation ids of a split file, or of one named subset: ``split.json[:NAME]``."""
    path, _, name = str(spec).partition(":")
    doc = load_split(path)
    if not name:
        return set(doc["val"])
    sets = doc.get("val_sets", {})
    if name not in sets:
        raise DAOInputError(
            f"split file {path!r} has no validation set {name!r} "
            f"(it has: {', '.join(sorted(sets)) or 'none'})"
        )
    return set(sets[name])
