"""Candidate generation: DAO-G samples (optionally DAO-P guided), symmetric random structures
from pyxtal, template substitutions and the user's own structures, screened for sanity before
anything is relaxed."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from jobflow import Maker
from pymatgen.core import Composition, Element, Structure

from dao_core.csp import DEFAULT_SCALE, default_generator, default_guidance
from dao_core.errors import DAOInputError
from dao_flows.batched_fire import MAX_VOLUME_PER_ATOM, MIN_VOLUME_PER_ATOM
from dao_flows.jobs import generation_job
from dao_flows.schemas import CandidateDoc, GenerationDoc, package_versions
from dao_flows.templates import TemplateLibrary

logger = logging.getLogger(__name__)

MIN_DISTANCE = 0.5  # Å; DAO's structural validity threshold (method doc, section 7)
# An atom with no neighbour this close is outside CHGNet's atom graph (cutoff 6 Å): its energy
# is the free-atom term and the candidate's ranking meaningless.
ISOLATION_CUTOFF = 6.0  # Å


_MODEL_CACHE: dict[tuple[str, float, str], object] = {}


def cached_model(name_or_path: str, device: str | None = None):  # type: ignore[no-untyped-def]
    """``dao_core.checkpoint.load_model`` with a small per-process cache.

    Generation, scoring and ranking jobs running in one process (run_locally, a FireWorks
    rapidfire loop) load each checkpoint once; the key includes the weights' mtime so a
    re-trained checkpoint is picked up.
    """
    from dao_core.checkpoint import WEIGHTS_FILE, default_device, load_model, resolve

    folder = resolve(name_or_path)
    dev = str(default_device(device))
    key = (str(folder.resolve()), (folder / WEIGHTS_FILE).stat().st_mtime, dev)
    if key not in _MODEL_CACHE:
        if len(_MODEL_CACHE) >= 4:
            _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
        _MODEL_CACHE[key] = load_model(name_or_path, device=dev)
    return _MODEL_CACHE[key]


@lru_cache(maxsize=2)
def template_library(path: str | None) -> TemplateLibrary:
    """The template library at ``path`` (``None``: the bundled one), loaded once per process."""
    return TemplateLibrary.load(path)


def validate_request(
    formula: str,
    n: int,
    n_random: int = 0,
    formula_units: int | None = None,
    n_template: int = 0,
) -> np.ndarray:
    """Check a CSP request before any job exists; returns the atomic numbers of the cell.

    Raises :class:`dao_core.errors.DAOInputError` for a bad formula, unknown element, too many
    atoms (>100), a negative count or a request for no DAO-G candidates.
    """
    from dao_core.data import parse_composition

    if not isinstance(n, int | np.integer) or n < 1:
        raise DAOInputError(f"number of DAO-G candidates must be at least 1, got {n!r}")
    for what, count in (("random", n_random), ("template", n_template)):
        if not isinstance(count, int | np.integer) or count < 0:
            raise DAOInputError(f"number of {what} candidates must be >= 0, got {count!r}")
    if formula_units is not None and formula_units < 1:
        raise DAOInputError(f"formula units must be at least 1, got {formula_units}")
    return parse_composition(formula, formula_units)


def user_structures(
    formula: str, items: list[Structure | str | Path]
) -> list[tuple[Structure, dict]]:
    """The user's seed structures (pymatgen objects or CIF/POSCAR paths) with provenance;
    :class:`dao_core.errors.DAOInputError` names any that is unreadable, disordered or of
    another composition than ``formula`` (atom counts may differ: ranking is per atom)."""
    target = Composition(formula).reduced_composition
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Structure):
            structure = item
        else:
            try:
                structure = Structure.from_file(str(item))
            except Exception as exc:  # noqa: BLE001 - pymatgen raises many types
                raise DAOInputError(f"cannot read user structure {str(item)!r}: {exc}") from exc
            structure.properties["source_file"] = str(item)  # travels with the structure
        label = structure.properties.get("source_file", f"structure {i}")
        if not structure.is_ordered:
            raise DAOInputError(f"user structure {label} is disordered; give an ordered cell")
        if structure.composition.reduced_composition != target:
            raise DAOInputError(
                f"user structure {label} is {structure.composition.reduced_formula}, "
                f"not {target.reduced_formula}"
            )
        out.append((structure, {"given_as": str(label), "n_atoms": len(structure)}))
    return out


def check_structure(structure: Structure | None) -> tuple[str | None, float | None, float | None]:
    """(issue or None, min distance Å, volume per atom Å^3): non-finite, collapsed or exploded
    cells, overlapping or isolated atoms. Screens raw candidates and relaxed results alike."""
    if structure is None:
        return "no structure was produced", None, None
    lattice = np.asarray(structure.lattice.matrix)
    frac = np.asarray(structure.frac_coords)
    if not (np.isfinite(lattice).all() and np.isfinite(frac).all()):
        return "non-finite lattice or coordinates", None, None
    volume = float(abs(np.linalg.det(lattice)))
    vpa = volume / len(structure)
    if volume < 0.1 or vpa < MIN_VOLUME_PER_ATOM:
        return f"collapsed cell ({vpa:.3g} Å^3/atom < {MIN_VOLUME_PER_ATOM})", None, vpa
    if vpa > MAX_VOLUME_PER_ATOM:
        return f"exploded cell ({vpa:.3g} Å^3/atom > {MAX_VOLUME_PER_ATOM})", None, vpa
    if len(structure) > 1:
        dm = structure.distance_matrix
        dmin = float(dm[np.triu_indices(len(structure), k=1)].min())
    else:
        dmin = float(min(structure.lattice.abc))
    # A single atom also sees its own periodic images.
    dmin = min(dmin, float(min(structure.lattice.abc)))
    if dmin < MIN_DISTANCE:
        return f"overlapping atoms (min distance {dmin:.3f} Å < {MIN_DISTANCE} Å)", dmin, vpa
    centers = structure.get_neighbor_list(ISOLATION_CUTOFF)[0]
    isolated = len(structure) - len(np.unique(centers))
    if isolated:
        return (
            f"isolated atoms ({isolated} without a neighbour within {ISOLATION_CUTOFF} Å)",
            dmin,
            vpa,
        )
    return None, dmin, vpa


def random_candidates(
    atomic_numbers: np.ndarray, n: int, seed: int, max_attempts: int = 60
) -> list[tuple[Structure | None, dict]]:
    """``n`` symmetric random structures (pyxtal) for a cell with these atoms.

    Space groups are drawn at random among those compatible with the composition; P1 is the
    fallback, so a slot only stays empty if pyxtal itself fails.
    """
    from pyxtal import pyxtal

    counts = Counter(int(z) for z in atomic_numbers)
    species = [Element.from_Z(z).symbol for z in counts]
    num_ions = [counts[z] for z in counts]
    rng = np.random.default_rng(seed)
    out: list[tuple[Structure | None, dict]] = []
    for _ in range(n):
        structure, meta, errors = None, {}, []
        for attempt in range(max_attempts):
            group = int(rng.integers(1, 231)) if attempt < max_attempts - 1 else 1
            crystal = pyxtal()
            try:
                crystal.from_random(
                    3, group, species, num_ions, random_state=int(rng.integers(2**31))
                )
            except Exception as exc:  # noqa: BLE001 - pyxtal raises many types
                errors.append(type(exc).__name__)
                continue
            if not crystal.valid:
                continue
            structure = crystal.to_pymatgen()
            meta = {"pyxtal_spacegroup": group, "attempts": attempt + 1}
            break
        if structure is None:
            meta = {"errors": sorted(set(errors))}
        out.append((structure, meta))
    return out


@dataclass
class DAOGenerationMaker(Maker):
    """Composition -> candidate structures from DAO-G (+ optional pyxtal random ones).

    Parameters
    ----------
    n
        Number of DAO-G samples.
    n_random
        Number of symmetry-aware random structures (pyxtal) ranked together with them.
    n_template, templates
        Number of template-substituted structures (dao_flows.templates) and their library: a
        library ``.npz``, CDVAE CSV or CIF folder; ``None`` is the bundled Materials Project one.
    structures
        The user's own candidates (pymatgen structures or CIF/POSCAR paths) of the same
        composition, relaxed and ranked with the others (source ``"user"``).
    model, guidance
        DAO-G / DAO-P checkpoint (bundled name or path). ``guidance=None`` or ``scale=0``
        samples without energy guidance. Defaults honour ``$DAO_G_MODEL`` / ``$DAO_P_MODEL``.
    score
        Also record the DAO-P energy score of every valid raw candidate.
    """

    name: str = "dao generate"
    n: int = 20
    n_random: int = 40  # random structures find what DAO-G misses (CsV3Sb5's kagome cell)
    n_template: int = 20
    templates: str | None = None
    structures: list[Structure | str] = field(default_factory=list)
    model: str | None = None
    guidance: str | None = "default"
    scale: float = DEFAULT_SCALE
    steps: int | None = None  # None: the generator's own default (its sampler settings)
    formula_units: int | None = None
    seed: int | None = None
    device: str | None = None
    batch_size: int = 256
    score: bool = True

    def __post_init__(self) -> None:
        # Resolved here (not as dataclass defaults) so env vars set after import still count.
        if self.model is None:
            self.model = default_generator()
        if self.guidance == "default":
            self.guidance = default_guidance()

    @generation_job
    def make(self, formula: str, formula_units: int | None = None) -> GenerationDoc:
        from dao_core.csp import fresh_seed, generate, score_energy

        formula_units = formula_units if formula_units is not None else self.formula_units
        atoms = validate_request(formula, self.n, self.n_random, formula_units, self.n_template)
        seed = self.seed
        if seed is None:  # pick one and record it, so every run is reproducible
            seed = fresh_seed()
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        guide = None
        try:
            generator = cached_model(self.model, self.device)
            guide = cached_model(self.guidance, self.device) if self.guidance else None
            result = generate(
                formula,
                self.n,
                model=generator,
                guidance=guide,
                scale=self.scale,
                steps=self.steps,
                formula_units=formula_units,
                seed=seed,
                device=self.device,
                batch_size=self.batch_size,
            )
            provenance = dict(result.provenance)
            raw: list[tuple[str, Structure | None, dict]] = [
                ("dao-g", s, {}) for s in result.structures
            ]
        except DAOInputError:
            raise  # a wrong request (e.g. a Maker used without the flow's checks): say so
        except Exception as exc:  # noqa: BLE001 - the other sources still give candidates
            # (a run-time failure such as running out of memory)
            error = f"DAO-G failed: {type(exc).__name__}: {exc}"
            logger.warning("%s; continuing with the other candidate sources", error)
            provenance = {"generator_error": error}
            raw = [("dao-g", None, {"errors": [error]})] * self.n
        timings["dao_g_s"] = time.perf_counter() - t0

        if self.n_random:
            t0 = time.perf_counter()
            for structure, meta in random_candidates(atoms, self.n_random, seed + 1):
                raw.append(("pyxtal", structure, meta))
            timings["pyxtal_s"] = time.perf_counter() - t0

        if self.n_template:
            t0 = time.perf_counter()
            found = template_library(self.templates).candidates(atoms, self.n_template)
            raw += [("template", s, meta) for s, meta in found]
            # Exactly n_template slots, so per-candidate flows can fan out before this runs.
            missing = {"errors": [f"only {len(found)} template(s) fit this composition"]}
            raw += [("template", None, missing)] * (self.n_template - len(found))
            timings["template_s"] = time.perf_counter() - t0

        raw += [("user", s, meta) for s, meta in user_structures(formula, self.structures)]

        candidates: list[CandidateDoc] = []
        counters: Counter[str] = Counter()
        for index, (source, structure, meta) in enumerate(raw):
            issue, dmin, vpa = check_structure(structure)
            if structure is None and meta.get("errors"):
                issue = f"{source} produced no structure ({', '.join(meta['errors'])})"
            candidates.append(
                CandidateDoc(
                    candidate_id=f"{source}-{counters[source]:03d}",
                    index=index,
                    source=source,  # type: ignore[arg-type]
                    structure=structure if issue is None else None,
                    raw_structure=structure,
                    valid=issue is None,
                    issue=issue,
                    min_distance=dmin,
                    volume_per_atom=vpa,
                    metadata=meta,
                )
            )
            counters[source] += 1

        provenance.update(
            {
                "seed": seed,
                "pyxtal_seed": seed + 1 if self.n_random else None,
                "n_random": self.n_random,
                "n_template": self.n_template,
                "templates": self.templates or "bundled (Materials Project)",
                "n_user": len(self.structures),
                "checks": {
                    "min_distance": MIN_DISTANCE,
                    "volume_per_atom": [MIN_VOLUME_PER_ATOM, MAX_VOLUME_PER_ATOM],
                },
                "versions": package_versions(),
            }
        )

        valid = [c for c in candidates if c.valid]
        scorer = guide
        if self.score and scorer is None and self.guidance:
            scorer = cached_model(self.guidance, self.device)
        if self.score and scorer is not None and valid:
            t0 = time.perf_counter()
            try:
                structures = [c.structure for c in valid]
                scores = score_energy(structures, model=scorer, device=self.device)
                for c, s in zip(valid, scores, strict=True):
                    c.dao_p_score = float(s) if np.isfinite(s) else None
            except Exception as exc:  # noqa: BLE001 - scoring is optional information
                logger.warning("DAO-P scoring of raw candidates failed: %s", exc)
                provenance["score_error"] = f"{type(exc).__name__}: {exc}"
            timings["score_s"] = time.perf_counter() - t0

        composition = Composition(formula)
        return GenerationDoc(
            formula=formula,
            reduced_formula=composition.reduced_formula,
            formula_units=formula_units,
            n_atoms=int(len(atoms)),
            n_dao_g=self.n,
            n_random=self.n_random,
            candidates=candidates,
            provenance=provenance,
            timings={k: round(v, 4) for k, v in timings.items()},
        )
