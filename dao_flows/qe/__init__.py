"""Quantum ESPRESSO (``pw.x``) verification of top-ranked DAO candidates.

One job per module, from the inside out:

* :mod:`~dao_flows.qe.pseudos` - UPF lookup and cutoff defaults;
* :mod:`~dao_flows.qe.inputs` - :class:`PWSettings` and the ``pw.in`` written from them;
* :mod:`~dao_flows.qe.parse` - ``pw.out`` -> energies, forces, stress, convergence;
* :mod:`~dao_flows.qe.run` - :func:`run_pw`, the pure runner (never raises for
  calculation problems: they come back as ``success=False`` with a ``failure_reason``);
* :mod:`~dao_flows.qe.schemas` - :class:`QEVerificationDoc`, the result;
* :mod:`~dao_flows.qe.jobs` - :class:`PWMaker` (atomate2-style jobflow Maker) and
  :func:`qe_verification_flow` (one job per candidate structure).
"""

from dao_flows.qe.inputs import ENV_PW_COMMAND, PWSettings, kpoint_grid
from dao_flows.qe.jobs import PWMaker, qe_verification_flow
from dao_flows.qe.pseudos import ENV_PSEUDO_DIR
from dao_flows.qe.run import run_pw
from dao_flows.qe.schemas import QEVerificationDoc

__all__ = [
    "ENV_PSEUDO_DIR",
    "ENV_PW_COMMAND",
    "PWMaker",
    "PWSettings",
    "QEVerificationDoc",
    "kpoint_grid",
    "qe_verification_flow",
    "run_pw",
]
