"""Template substitution: known structures whose anonymous formula fits the composition, with the
target's elements put on the template's sites.

A template fits when its element counts, scaled to the target's atom count, are the target's
counts in some order (AB3C5 for CsV3Sb5). Elements are assigned by enumeration among equal
counts and scored by chemical distance in the fixed element descriptors (dao_core.elements), so
Na takes K's sites before Cl's; the cell is scaled by the ratio of the elements' molar volumes.
The library is any structure database: the bundled one (Materials Project, see
``dao_flows/data/templates.md``), a CDVAE-layout CSV, a folder of CIF/POSCAR files, or structures
from a maggma store (:meth:`TemplateLibrary.from_structures`).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Element, Structure

from dao_core.data.compositions import reduced_formula
from dao_core.errors import DAOInputError

BUNDLED = Path(__file__).parent / "data" / "templates-mp2025.npz"
MAX_ASSIGNMENTS = 720  # 6! orderings among equal counts; beyond, the first ones only
# Substitutions looked at per candidate wanted while collecting distinct structure types.
SCAN_PER_CANDIDATE = 25


def count_key(counts: Iterable[int]) -> tuple[int, ...]:
    """The anonymous formula of a reduced composition: its counts, sorted."""
    counts = list(counts)
    g = math.gcd(*counts)
    return tuple(sorted(c // g for c in counts))


@dataclass
class Template:
    material_id: str
    numbers: np.ndarray  # (N,) atomic numbers
    frac: np.ndarray  # (N, 3)
    lattice: np.ndarray  # (3, 3)

    @property
    def counts(self) -> dict[int, int]:
        z, c = np.unique(self.numbers, return_counts=True)
        return dict(zip(z.tolist(), c.tolist(), strict=True))


@dataclass
class TemplateLibrary:
    """Structures indexed by anonymous formula."""

    templates: dict[tuple[int, ...], list[Template]] = field(default_factory=dict)
    source: str = ""

    def __len__(self) -> int:
        return sum(len(v) for v in self.templates.values())

    @classmethod
    def from_structures(
        cls, items: Iterable[tuple[str, Structure]], source: str
    ) -> TemplateLibrary:
        index: dict[tuple[int, ...], list[Template]] = defaultdict(list)
        for material_id, s in items:
            if not s.is_ordered:
                continue
            s = s.get_primitive_structure()  # a conventional cell would miss smaller targets
            t = Template(
                str(material_id),
                np.array([site.specie.Z for site in s], dtype=np.int64),
                np.asarray(s.frac_coords, dtype=np.float64),
                np.asarray(s.lattice.matrix, dtype=np.float64),
            )
            index[count_key(t.counts.values())].append(t)
        return cls(dict(index), source)

    @classmethod
    def from_store(
        cls, store: Any, criteria: dict | None = None, structure_key: str = "structure",
        id_key: str = "material_id",
    ) -> TemplateLibrary:  # fmt: skip
        """Structures of a maggma store's documents (e.g. a user's Materials Project or OQMD
        export, or a dao store), ``criteria`` a MongoDB query on them."""
        store.connect()
        try:
            docs = store.query(criteria or {}, properties=[structure_key, id_key])
            items = [
                (str(d.get(id_key, i)), _as_structure(d[structure_key]))
                for i, d in enumerate(docs)
                if d.get(structure_key)
            ]
        finally:
            store.close()
        from dao_flows.stores import redact

        name = redact(store.name)
        if not items:
            raise DAOInputError(f"the store {name} holds no {structure_key!r} documents")
        return cls.from_structures(items, f"store:{name}")

    @classmethod
    def load(cls, path: str | Path | None = None) -> TemplateLibrary:
        """The bundled library (``None``), a library ``.npz``, a CDVAE CSV, a CIF folder, or a
        JSON file of documents with a ``structure`` (a maggma ``JSONStore``: what
        ``mp_api``'s ``MPRester.materials.summary.search`` results dump to)."""
        path = Path(path) if path is not None else BUNDLED
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".cif", ".vasp")
                           or p.name.upper().startswith("POSCAR"))  # fmt: skip
            if not files:
                raise DAOInputError(f"template folder {path} holds no CIF or POSCAR files")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return cls.from_structures(
                    ((p.stem, Structure.from_file(p)) for p in files), str(path)
                )
        if not path.is_file():
            raise DAOInputError(f"template library {path} does not exist")
        if path.suffix == ".npz":
            return _load_npz(path)
        if path.name.endswith((".json", ".json.gz")):
            from maggma.stores import JSONStore

            return cls.from_store(JSONStore(str(path), key="material_id"))
        from dao_core.data import load_csv

        records = load_csv(path, canonical=False)
        return cls.from_structures(((r.material_id, r.to_structure()) for r in records), str(path))

    def save(self, path: str | Path) -> None:
        """A compact ``.npz`` (uint8 numbers, float16 coordinates), as the bundled one."""
        items = [t for group in self.templates.values() for t in group]
        np.savez_compressed(
            path,
            num_atoms=np.array([len(t.numbers) for t in items], dtype=np.int16),
            numbers=np.concatenate([t.numbers for t in items]).astype(np.uint8),
            # Templates are starting points that get relaxed: float16 (5e-4) is plenty.
            frac=np.concatenate([t.frac for t in items]).astype(np.float16),
            lattice=np.stack([t.lattice for t in items]).astype(np.float32),
            material_id=np.array([t.material_id for t in items]),
        )

    def candidates(self, atomic_numbers: np.ndarray, n: int) -> list[tuple[Structure, dict]]:
        """Up to ``n`` substituted structures for a cell of these atoms, most similar first,
        one per structure type (space group and each element's Wyckoff sites) before any
        second of a type: chemically similar templates are often one prototype many times
        over, and a copy relaxes into the same polymorph."""
        target = dict(zip(*np.unique(atomic_numbers, return_counts=True), strict=True))
        target_key = count_key(target.values())
        scored = []
        for t in self.templates.get(target_key, []):
            counts = t.counts
            if len(t.numbers) > len(atomic_numbers) or len(atomic_numbers) % len(t.numbers):
                continue
            scale = len(atomic_numbers) // len(t.numbers)
            for mapping in _assignments(counts, target, scale):
                scored.append((_distance(mapping), t, mapping, scale))
        scored.sort(key=lambda x: x[0])
        firsts, repeats, types = [], [], set()
        for distance, t, mapping, scale in scored[: n * SCAN_PER_CANDIDATE]:
            structure = _substitute(t, mapping, scale)
            kind = _structure_type(structure)
            if kind in types and len(repeats) >= n:
                continue  # enough repeats to fill the slots already
            (repeats if kind in types else firsts).append((structure, {
                "template": t.material_id, "template_formula": reduced_formula(t.numbers),
                "library": self.source, "chemical_distance": round(float(distance), 3),
                "supercell": scale,
            }))  # fmt: skip
            types.add(kind)
            if len(firsts) == n:
                break
        return (firsts + repeats)[:n]


def _as_structure(obj: Any) -> Structure:
    return obj if isinstance(obj, Structure) else Structure.from_dict(obj)


def _assignments(
    template: dict[int, int], target: dict[int, int], scale: int
) -> Iterable[dict[int, int]]:
    """Every map template element -> target element with matching (scaled) counts."""
    by_count: dict[int, list[int]] = defaultdict(list)
    for z, c in target.items():
        by_count[c].append(int(z))
    groups = defaultdict(list)
    for z, c in template.items():
        groups[c * scale].append(int(z))
    if sorted((c, len(v)) for c, v in groups.items()) != sorted(
        (c, len(v)) for c, v in by_count.items()
    ):
        return
    choices = [[dict(zip(groups[c], p, strict=True)) for p in itertools.permutations(by_count[c])]
               for c in groups]  # fmt: skip
    for combo in itertools.islice(itertools.product(*choices), MAX_ASSIGNMENTS):
        mapping: dict[int, int] = {}
        for part in combo:
            mapping.update(part)
        yield mapping


@cache
def _descriptors() -> np.ndarray:
    from dao_core.elements import element_table

    return element_table(100).numpy()


def _distance(mapping: dict[int, int]) -> float:
    table = _descriptors()
    return float(sum(np.linalg.norm(table[a] - table[b]) for a, b in mapping.items()))


def _molar_volume(z: int) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v = Element.from_Z(z).molar_volume
    return float(v) if v else 20.0  # cm^3/mol; a typical value where pymatgen has none


def _substitute(t: Template, mapping: dict[int, int], scale: int) -> Structure:
    numbers = [mapping[int(z)] for z in t.numbers]
    ratio = sum(_molar_volume(z) for z in numbers) / sum(_molar_volume(int(z)) for z in t.numbers)
    structure = Structure(t.lattice * ratio ** (1 / 3), numbers, t.frac)
    if scale > 1:  # a supercell with the target's atom count, along the shortest axis
        axis = int(np.argmin(structure.lattice.abc))
        structure.make_supercell([scale if i == axis else 1 for i in range(3)])
    return structure


def _structure_type(structure: Structure) -> tuple:
    """Space group and the (element, Wyckoff letter, multiplicity) of every orbit (spglib,
    symprec 0.1): equal for two substitutions of one prototype with the same site assignment."""
    import spglib

    numbers = structure.atomic_numbers
    cell = (structure.lattice.matrix, structure.frac_coords, numbers)
    with warnings.catch_warnings():  # spglib's notice about its error handling, per call
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            data = spglib.get_symmetry_dataset(cell, symprec=0.1)
        except Exception:  # noqa: BLE001 - spglib raising instead of returning None
            data = None
    if data is None:  # no symmetry found: every such structure is its own type
        return (0, id(structure))
    orbit, size = np.unique(data.equivalent_atoms, return_counts=True)
    return (data.number, tuple(sorted(
        (numbers[i], data.wyckoffs[i], int(m)) for i, m in zip(orbit, size, strict=True)
    )))  # fmt: skip


def _load_npz(path: Path) -> TemplateLibrary:
    with np.load(path) as z:
        bounds = np.cumsum(z["num_atoms"].astype(np.int64))[:-1]
        numbers = np.split(z["numbers"].astype(np.int64), bounds)
        frac = np.split(z["frac"].astype(np.float64), bounds)
        lattice, ids = z["lattice"].astype(np.float64), z["material_id"]
    index: dict[tuple[int, ...], list[Template]] = defaultdict(list)
    for i in range(len(ids)):
        t = Template(str(ids[i]), numbers[i], frac[i], lattice[i])
        index[count_key(t.counts.values())].append(t)
    return TemplateLibrary(dict(index), str(path))
