"""Reading crystals: CDVAE-layout CSVs (parsed in a process pool, cached) and the compact
``.npz`` record files of ``dao preprocess``."""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing as mp
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from dao_core.data.compositions import MAX_ATOMS
from dao_core.data.records import CrystalRecord, record_from_structure
from dao_core.errors import DAOInputError

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # bump when the preprocessing changes, so stale caches are not reused
PARALLEL_MIN_ROWS = 400  # below this a process pool costs more than it saves


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


def mp_context() -> mp.context.BaseContext:
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
    with mp_context().Pool(min(workers, len(chunks))) as pool:
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
    """Records of a CDVAE-layout CSV (``cif`` column; ``material_id`` if present, else
    ``<file stem>-<row>``), or of a ``.npz`` written by ``dao preprocess``
    (:func:`save_records`; its label is fixed).

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
        # Unique per file: split_datasets holds ids out across files, so "0".."n-1" would collide.
        else np.array([f"{path.stem}-{i}" for i in rows])
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
