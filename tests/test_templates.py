"""Template substitution: libraries from files, element assignment by chemistry, volume scaling,
and the fixed number of template slots the flows rely on."""

from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from dao_core.data import parse_composition
from dao_core.errors import DAOInputError
from dao_flows.templates import TemplateLibrary


def rocksalt(a: float, cation: str, anion: str) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]])  # fmt: skip


@pytest.fixture
def cif_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "library"
    folder.mkdir()
    rocksalt(5.64, "Na", "Cl").to(filename=str(folder / "NaCl.cif"))
    cscl = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cscl.to(filename=str(folder / "CsCl.cif"))
    perovskite = Structure(
        Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )  # fmt: skip
    perovskite.to(filename=str(folder / "SrTiO3.cif"))
    return folder


def test_candidates_fit_the_anonymous_formula(cif_folder: Path) -> None:
    library = TemplateLibrary.load(cif_folder)
    assert len(library) == 3
    found = library.candidates(parse_composition("KBr"), 5)
    assert {meta["template_formula"] for _, meta in found} == {"NaCl", "CsCl"}
    # KBr is closer to NaCl than to CsCl on the cation side (K vs Na / Cs); both are listed,
    # and each candidate carries the target's elements on the template's sites.
    for structure, meta in found:
        assert structure.composition.reduced_formula == "KBr"
        assert meta["library"] == str(cif_folder) and meta["chemical_distance"] > 0
    # Element assignment follows chemistry: Ba goes on Sr's site, Zr on Ti's.
    (bazro3, meta), *_ = library.candidates(parse_composition("BaZrO3"), 3)
    assert meta["template"] == "SrTiO3"
    species = [str(s.specie) for s in bazro3]
    assert species[:2] == ["Ba", "Zr"]
    # The cell grows with the substituted elements' molar volumes.
    assert bazro3.volume > 3.9**3
    assert library.candidates(parse_composition("Fe2O3"), 5) == []


def test_supercell_templates_reach_the_target_atom_count(cif_folder: Path) -> None:
    found = TemplateLibrary.load(cif_folder).candidates(parse_composition("NaCl", 2), 2)
    assert all(len(s) == 4 and s.composition.reduced_formula == "NaCl" for s, _ in found)
    assert all(meta["supercell"] == 2 for _, meta in found)


def test_bundled_library_round_trips_and_finds_rocksalt(tmp_path: Path) -> None:
    library = TemplateLibrary.load()
    assert len(library) > 18_000
    structure, meta = library.candidates(parse_composition("NaCl"), 1)[0]
    assert meta["template_formula"] == "NaCl" and meta["chemical_distance"] == 0
    assert structure.get_space_group_info(0.1)[1] == 225
    assert 19 < structure.volume / len(structure) < 25  # NaCl: 22.4 Å^3/atom
    small = TemplateLibrary.from_structures([("x", structure)], "test")
    small.save(tmp_path / "lib.npz")
    again = TemplateLibrary.load(tmp_path / "lib.npz").candidates(parse_composition("NaCl"), 1)
    np.testing.assert_allclose(again[0][0].lattice.matrix, structure.lattice.matrix, atol=1e-4)


def test_bad_libraries_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DAOInputError, match="does not exist"):
        TemplateLibrary.load(tmp_path / "missing.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DAOInputError, match="no CIF or POSCAR"):
        TemplateLibrary.load(tmp_path / "empty")


def test_library_from_a_maggma_store_and_its_json_dump(tmp_path: Path) -> None:
    """A user's structure database as templates: any maggma store of documents with a
    structure (an MP / OQMD export), or its JSON dump given as --templates."""
    import json

    from maggma.stores import MemoryStore

    rocksalt = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(6.3), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    docs = [{"material_id": "kcl", "structure": rocksalt.as_dict()},
            {"material_id": "no-structure"}]  # fmt: skip
    store = MemoryStore(key="material_id")
    store.connect()
    store.update(docs)
    library = TemplateLibrary.from_store(store)
    assert len(library) == 1 and library.source.startswith("store:")
    (found, meta), *_ = library.candidates(parse_composition("NaCl"), 1)
    assert meta["template"] == "kcl" and found.composition.reduced_formula == "NaCl"
    path = tmp_path / "export.json"
    path.write_text(json.dumps(docs))
    again = TemplateLibrary.load(path)
    assert [t.material_id for g in again.templates.values() for t in g] == ["kcl"]
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DAOInputError, match="holds no 'structure' documents"):
        TemplateLibrary.load(tmp_path / "empty.json")


def test_one_candidate_per_structure_type_before_repeats() -> None:
    """Three rocksalt templates chemically closer to LiF than one CsCl-type template: with two
    slots, LiF gets one rocksalt and the CsCl type (a second rocksalt would relax into the
    first); with more slots the other rocksalts follow, closest first."""
    cscl = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    items = [("nacl", rocksalt(5.64, "Na", "Cl")), ("naf", rocksalt(4.63, "Na", "F")),
             ("kf", rocksalt(5.35, "K", "F")), ("cscl", cscl)]  # fmt: skip
    library = TemplateLibrary.from_structures(items, "test")
    two = library.candidates(parse_composition("LiF"), 2)
    types = [s.get_space_group_info()[1] for s, _ in two]
    assert sorted(types) == [221, 225] and two[0][1]["template"] == "naf"
    # Li on the cation site of each: the assignment that swaps Li and F is never the same type
    for structure, _ in two:
        assert structure.composition.reduced_formula == "LiF"
    everything = library.candidates(parse_composition("LiF"), 10)
    assert [m["template"] for _, m in everything[:2]] == [m["template"] for _, m in two]
    assert {m["template"] for _, m in everything} == {"nacl", "naf", "kf", "cscl"}
