"""DAO workflows for jobflow/atomate2: generation -> ML relaxation -> ranking (-> DFT).

Public API (imported lazily, so ``import dao_flows`` stays cheap)::

    from dao_flows import dao_csp_flow, get_store
    from jobflow import run_locally
    run_locally(dao_csp_flow("CsV3Sb5"), store=get_store())
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "dao_csp_flow": "dao_flows.flows",
    "dao_csp_batch_flow": "dao_flows.flows",
    "DAOCSPMaker": "dao_flows.flows",
    "DAOGenerationMaker": "dao_flows.generation",
    "BatchedRelaxMaker": "dao_flows.relax",
    "batched_fire_relax": "dao_flows.relax",
    "default_relax_maker": "dao_flows.relax",
    "RankingMaker": "dao_flows.ranking",
    "CSPResultDoc": "dao_flows.schemas",
    "GenerationDoc": "dao_flows.schemas",
    "BatchedRelaxDoc": "dao_flows.schemas",
    "get_store": "dao_flows.stores",
    "list_runs": "dao_flows.queries",
    "get_result": "dao_flows.queries",
    "ranked_structures": "dao_flows.queries",
    "export_structures": "dao_flows.queries",
    "submit_flow": "dao_flows.fireworks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dao_flows' has no attribute {name!r}")
