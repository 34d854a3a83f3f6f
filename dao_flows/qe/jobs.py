"""The jobflow layer: :class:`PWMaker` (one ``pw.x`` job) and :func:`qe_verification_flow`.

The Maker holds a :class:`PWSettings` rather than restating its fields, so defaults and
units live once, in the settings. Override field by field::

    PWMaker(settings=PWSettings(calculation="vc-relax", ecutwfc=40))
    replace(maker, settings=maker.settings.model_copy(update={"kpts": (4, 4, 4)}))
    maker.update_kwargs({"_set": {"settings->ecutwfc": 40}}, dict_mod=True)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jobflow import Flow, Maker, job
from pymatgen.core import Structure

from dao_flows.qe.inputs import PWSettings
from dao_flows.qe.run import run_pw
from dao_flows.qe.schemas import QEVerificationDoc
from dao_flows.verification import verification_flow


@dataclass
class PWMaker(Maker):
    """Run ``pw.x`` on a structure (SCF by default, ``calculation='vc-relax'`` to relax).

    ``settings`` defines the calculation (see :class:`PWSettings` for fields, defaults and
    units). A plain dict there (e.g. from ``update_kwargs({"settings": {...}})``) is
    validated into a new ``PWSettings``: unnamed fields get their defaults; merge single
    fields with ``dict_mod=True`` instead (module docstring). ``run_in_subdir`` gives
    every job its own folder, even under ``run_locally(create_folders=False)``.
    """

    name: str = "qe pw.x"
    settings: PWSettings = field(default_factory=PWSettings)
    run_in_subdir: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.settings, PWSettings):
            self.settings = PWSettings.model_validate(self.settings)

    @job(output_schema=QEVerificationDoc)
    def make(self, structure: Structure, prev_dir: str | None = None) -> QEVerificationDoc:
        """Job: run pw.x and return a :class:`QEVerificationDoc` (never fails the job).

        ``prev_dir`` is accepted for atomate2 signature compatibility and ignored.
        """
        wd = Path.cwd()
        if self.run_in_subdir:
            label = structure.composition.reduced_formula
            wd = wd / f"qe_{self.settings.calculation}_{label}_{uuid.uuid4().hex[:8]}"
        return run_pw(structure, self.settings, wd)


def qe_verification_flow(
    structures: Sequence[Structure],
    maker: PWMaker | None = None,
    name: str = "qe verification",
) -> Flow:
    """One ``maker.make(structure)`` job per (top-k) candidate; output = list of docs.

    Failed calculations do not stop the flow: each job returns a doc with
    ``success=False`` instead of raising.
    """
    flow = verification_flow(structures, maker or PWMaker())
    flow.name = name
    return flow
