"""Crystal data, one job per module: compositions (formula -> atoms), records (one crystal as
arrays, canonical cells), files (CSV / ``.npz`` reading with a cache), batches (padded tensors,
size-bucketed batching) and splits (recorded held-out ids).

A crystal is (A, L, X): atomic numbers, a 3x3 lattice with one lattice vector per row (Å) and
fractional coordinates in [0, 1). Batches are dense and padded (atom type 0 = padding).
"""

from dao_core.data.batches import CrystalBatch, bucketed_batches, size_buckets
from dao_core.data.compositions import MAX_ATOMS, parse_composition
from dao_core.data.files import (
    default_cache_dir,
    load_csv,
    load_many,
    load_records,
    records_label,
    save_records,
)
from dao_core.data.records import (
    CrystalRecord,
    canonicalize,
    record_from_structure,
    right_handed,
    right_handed_structure,
)
from dao_core.data.splits import held_out_ids, load_split, save_split, split_records

__all__ = [
    "MAX_ATOMS",
    "CrystalBatch",
    "CrystalRecord",
    "bucketed_batches",
    "size_buckets",
    "canonicalize",
    "default_cache_dir",
    "held_out_ids",
    "load_csv",
    "load_many",
    "load_records",
    "load_split",
    "parse_composition",
    "record_from_structure",
    "records_label",
    "right_handed",
    "right_handed_structure",
    "save_records",
    "save_split",
    "split_records",
]
