"""Fixed, chemistry-aware element descriptors for Z = 1..MAX_Z (CGCNN-style, from pymatgen).

The authors' Crysformer embeds frozen CGCNN element vectors through a linear layer, so
chemically similar elements share what training learns about them; a learned embedding per Z
leaves rare elements with almost no signal. Each row here holds one-hot group (18), period (7)
and block (s, p, d, f), and eight standardised properties: Pauling electronegativity, atomic
radius, first ionisation energy, electron affinity, valence electrons (beyond the preceding noble
gas core), log molar volume, log atomic mass and Mendeleev number. A property pymatgen lacks for
an element (He's electronegativity, say) sits at the column mean, 0. Values are rounded to
float16, so the fp16 shipping of checkpoints stores the table exactly. Row 0 is padding (zeros).
"""

from __future__ import annotations

import math
import warnings
from functools import cache

import numpy as np
import torch
from pymatgen.core import Element

MAX_Z = 100  # the heaviest element the models embed (Fm)
GROUPS, PERIODS, BLOCKS = 18, 7, ("s", "p", "d", "f")
PROPERTIES = (
    "electronegativity", "atomic_radius", "ionisation_energy", "electron_affinity",
    "valence_electrons", "log_molar_volume", "log_atomic_mass", "mendeleev_number",
)  # fmt: skip
NOBLE_CORES = (0, 2, 10, 18, 36, 54, 86)
N_FEATURES = GROUPS + PERIODS + len(BLOCKS) + len(PROPERTIES)


def _number(value: object) -> float:
    """A float, or NaN for pymatgen's None / NaN / missing data."""
    try:
        x = float(value)  # FloatWithUnit and plain numbers alike
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def _properties(element: Element) -> list[float]:
    core = max(c for c in NOBLE_CORES if c < element.Z)
    volume = _number(element.molar_volume)
    return [
        _number(element.X),
        _number(element.atomic_radius),
        _number(element.ionization_energy),
        _number(element.electron_affinity),
        float(element.Z - core),
        math.log(volume) if volume > 0 else math.nan,
        math.log(float(element.atomic_mass)),
        _number(element.mendeleev_no),
    ]


@cache
def element_table(max_z: int) -> torch.Tensor:
    """(max_z + 1, N_FEATURES) float32 descriptors; row 0 (padding) is zero."""
    categorical = np.zeros((max_z, GROUPS + PERIODS + len(BLOCKS)))
    properties = np.zeros((max_z, len(PROPERTIES)))
    with warnings.catch_warnings():  # pymatgen warns about missing data per element
        warnings.simplefilter("ignore")
        for z in range(1, max_z + 1):
            element = Element.from_Z(z)
            categorical[z - 1, element.group - 1] = 1
            categorical[z - 1, GROUPS + element.row - 1] = 1
            categorical[z - 1, GROUPS + PERIODS + BLOCKS.index(element.block)] = 1
            properties[z - 1] = _properties(element)
    mean = np.nanmean(properties, axis=0)
    std = np.nanstd(properties, axis=0)
    properties = np.nan_to_num((properties - mean) / std, nan=0.0)
    table = np.concatenate([np.zeros((1, N_FEATURES)), np.hstack([categorical, properties])])
    return torch.from_numpy(table).to(torch.float16).to(torch.float32)
