"""One job decorator per job family, as atomate2's ``forcefield_job``: each fixes the document
type its jobs return (``output_schema``) and which of its fields go to the additional ``data``
store (large per-step arrays stay out of the main documents: MongoDB's 16 MB limit)."""

from __future__ import annotations

from jobflow import job
from jobflow.core.job import JobConfig
from jobflow.core.reference import OnMissing

from dao_flows.schemas import BatchedRelaxDoc, CSPResultDoc, GenerationDoc

generation_job = job(output_schema=GenerationDoc)
batched_relax_job = job(output_schema=BatchedRelaxDoc, data=["energies"])
# Failed relaxations reach the ranking as None instead of cancelling it.
ranking_job = job(
    output_schema=CSPResultDoc, config=JobConfig(on_missing_references=OnMissing.NONE)
)
