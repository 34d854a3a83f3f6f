"""The DAO crystal-structure-prediction workflow: generate -> relax -> rank (-> verify).

``dao_csp_flow("CsV3Sb5")`` is the one-line entry point::

    from jobflow import run_locally
    from dao_flows import dao_csp_flow, get_store

    run_locally(dao_csp_flow("CsV3Sb5", n=20, n_random=10), store=get_store())
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from jobflow import Flow, Job, Maker
from jobflow.utils import suid

from dao_flows.generation import (
    DAOGenerationMaker,
    template_library,
    user_structures,
    validate_request,
)
from dao_flows.ranking import RankingMaker
from dao_flows.refine import RefineMaker
from dao_flows.relax import BatchedRelaxMaker, default_relax_maker

RelaxMode = Literal["per-candidate", "batched"]

# The options of dao_csp_flow / DAOCSPMaker.from_options, by the Maker that owns each default.
GENERATION_OPTIONS = ("n", "n_random", "n_template", "templates", "structures", "steps",
                      "scale", "formula_units", "seed", "model", "guidance")  # fmt: skip
RELAX_OPTIONS = {"force_field": "force_field_name", "fmax": "fmax", "relax_steps": "steps"}
OPTIONS = (*GENERATION_OPTIONS, *RELAX_OPTIONS, "relax", "relax_maker", "device", "symprec",
           "score_model", "verify_top", "dft_maker", "refine_top")  # fmt: skip


def add_option_arguments(parser: argparse.ArgumentParser, relax: str | None = None) -> None:
    """The CSP options the workflows/ scripts take on their command line; ``relax`` is the
    script's relaxation mode when none is given (None: the Makers' default)."""
    parser.add_argument("--n", type=int, help="DAO-G candidates")
    parser.add_argument("--n-random", type=int, help="extra pyxtal candidates")
    parser.add_argument("--n-template", type=int, help="template substitutions")
    parser.add_argument("--steps", type=int, help="diffusion steps (default: the model's own)")
    parser.add_argument("--formula-units", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--relax", choices=["per-candidate", "batched"], default=relax)
    parser.add_argument("--relax-steps", type=int)
    parser.add_argument("--fmax", type=float)
    parser.add_argument("--refine-top", type=int, help="re-rank the K best with SevenNet (0: off)")


def given_options(given: argparse.Namespace | dict[str, Any]) -> dict[str, Any]:
    """The CSP options a user gave (None or [] = not given), from keyword arguments or an
    argparse namespace (its other arguments ignored): the rest stay the Makers' defaults.
    Guidance "none" turns guidance off; structure paths become strings."""
    if isinstance(given, argparse.Namespace):
        given = {k: v for k, v in vars(given).items() if k in OPTIONS}
    options = {k: v for k, v in given.items() if v is not None and v != []}
    if str(options.get("guidance", "")).lower() == "none":
        options["guidance"] = None
    if "structures" in options:
        options["structures"] = [str(path) for path in options["structures"]]
    return options


def candidate_ids(n: int, n_random: int, n_template: int = 0, n_user: int = 0) -> list[str]:
    """Ids the generation job gives its candidates, known before it runs (for job names)."""
    counts = {"dao-g": n, "pyxtal": n_random, "template": n_template, "user": n_user}
    return [f"{source}-{i:03d}" for source, k in counts.items() for i in range(k)]


def _relax_settings(maker: Any) -> dict[str, Any]:
    """A JSON-able summary of a relaxation maker for the result's provenance."""
    keys = ("name", "force_field_name", "fmax", "steps", "relax_cell", "relax_kwargs", "device")
    out = {k: getattr(maker, k) for k in keys if hasattr(maker, k)}
    out["maker"] = f"{type(maker).__module__}.{type(maker).__name__}"
    if "force_field_name" in out:  # atomate2 stores "MLFF.CHGNet"
        out["force_field_name"] = str(out["force_field_name"]).split("MLFF.")[-1]
    return {
        k: (str(v) if not isinstance(v, int | float | str | bool | dict | None) else v)
        for k, v in out.items()
    }


@dataclass
class DAOCSPMaker(Maker):
    """Generation (DAO-G [+ pyxtal]) -> ML relaxation -> ranking, as one jobflow Flow.

    Parameters
    ----------
    generation_maker
        Makes the candidates; its ``n``/``n_random`` fix the number of relaxation jobs.
    relax_mode
        ``"per-candidate"``: one ``relax_maker`` job per candidate (spreads over FireWorks
        workers); ``"batched"``: one :class:`BatchedRelaxMaker` job for all of them.
    relax_maker
        Any atomate2-style maker whose ``make(structure)`` returns a task document with a
        final structure and energy; default: atomate2's ``ForceFieldRelaxMaker`` with the
        force field, ``fmax``, steps and device of ``batched_relax_maker``, so both routes
        relax alike.
    refine_maker
        Re-ranks the ``refine_maker.top`` best polymorphs with a second potential
        (SevenNet-l3i5 on the best 5 by default; ``top = 0`` skips it).
    verify_top, dft_maker
        Hook for DFT verification of the ``verify_top`` best polymorphs:
        ``dft_maker.make(structure)`` jobs are added after the ranking. With ``verify_top > 0``
        and no ``dft_maker``, ``dao_flows.qe.PWMaker()`` (Quantum ESPRESSO) is used.
    """

    name: str = "dao csp"
    generation_maker: DAOGenerationMaker = field(default_factory=DAOGenerationMaker)
    relax_mode: RelaxMode = "batched"
    relax_maker: Maker | None = None  # None: atomate2's, with batched_relax_maker's settings
    batched_relax_maker: BatchedRelaxMaker = field(default_factory=BatchedRelaxMaker)
    ranking_maker: RankingMaker = field(default_factory=RankingMaker)
    refine_maker: RefineMaker = field(default_factory=RefineMaker)
    verify_top: int = 0
    dft_maker: Maker | None = None

    @classmethod
    def from_options(cls, **options: Any) -> DAOCSPMaker:
        """The CSP maker with the named options changed; everything else keeps the nested
        Makers' own defaults (the one place they are stated). Options: see ``OPTIONS``.

        ``device`` goes to every stage; ``relax``, ``force_field``, ``fmax`` and
        ``relax_steps`` set the relaxation (both routes); ``score_model`` defaults to the
        guidance model, or none when ``guidance=None``.
        """
        from dao_core.errors import DAOInputError

        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise DAOInputError(f"unknown CSP option(s) {unknown}; known: {', '.join(OPTIONS)}")
        device = {"device": options["device"]} if "device" in options else {}
        generation = {k: options[k] for k in GENERATION_OPTIONS if k in options}
        relax = {RELAX_OPTIONS[k]: options[k] for k in RELAX_OPTIONS if k in options}
        ranking = {k: options[k] for k in ("symprec", "score_model") if k in options}
        refine = {"top": options["refine_top"]} if "refine_top" in options else {}
        guidance = options.get("guidance", "default")
        if "score_model" not in options and guidance != "default":
            ranking["score_model"] = guidance  # score with the guiding model, or not at all
        flow_level = {k: options[k] for k in ("relax_maker", "verify_top", "dft_maker")
                      if k in options}  # fmt: skip
        if "relax" in options:
            flow_level["relax_mode"] = options["relax"]
        return cls(
            generation_maker=DAOGenerationMaker(**generation, **device),
            batched_relax_maker=BatchedRelaxMaker(**relax, **device),
            ranking_maker=RankingMaker(**ranking, **device),
            refine_maker=RefineMaker(**refine, **device),
            **flow_level,
        )

    def make(self, formula: str, formula_units: int | None = None) -> Flow:
        """The CSP flow for one composition; its output is the :class:`CSPResultDoc`.

        Raises :class:`dao_core.errors.DAOInputError` before creating any job if the formula,
        an element, the atom count or the number of candidates is invalid.
        """
        from dao_core.errors import DAOInputError

        gen_maker = self.generation_maker
        formula_units = formula_units if formula_units is not None else gen_maker.formula_units
        atoms = validate_request(
            formula, gen_maker.n, gen_maker.n_random, formula_units, gen_maker.n_template
        )
        if gen_maker.n_template:  # only as many template slots as templates fit
            fits = template_library(gen_maker.templates).candidates(atoms, gen_maker.n_template)
            gen_maker = replace(gen_maker, n_template=len(fits))
        # Read (and check) the user's files once, now: the job then carries the structures.
        users = [s for s, _ in user_structures(formula, gen_maker.structures)]
        gen_maker = replace(gen_maker, structures=users)
        if self.relax_mode not in ("per-candidate", "batched"):
            raise DAOInputError(
                f"relax mode must be 'per-candidate' or 'batched', got {self.relax_mode!r}"
            )
        if self.relax_mode == "batched":
            self.batched_relax_maker.check_force_field()
        from dao_core.checkpoint import read_config, resolve
        from dao_core.dao import check_sampling_steps

        for ckpt in (gen_maker.model, gen_maker.guidance, self.ranking_maker.score_model):
            if ckpt:
                resolve(ckpt)  # unknown checkpoint name/path: DAOInputError now, not in a job
        if gen_maker.steps is not None:
            trained = read_config(gen_maker.model)["diffusion_steps"]
            check_sampling_steps(gen_maker.steps, trained, gen_maker.model)
        if self.verify_top < 0:
            raise DAOInputError(f"verify_top must be >= 0, got {self.verify_top}")
        dft_maker = self.dft_maker
        if self.verify_top > 0 and dft_maker is None:
            from dao_flows.qe import PWMaker  # lazy: QE support is optional

            dft_maker = PWMaker()

        run_uuid = suid()
        gen = gen_maker.make(formula, formula_units)
        jobs: list[Job] = [gen]
        relax_jobs: list[dict[str, str]] = []
        if self.relax_mode == "batched":
            batch = self.batched_relax_maker.make(gen.output)
            jobs.append(batch)
            relaxations: Any = batch.output
            settings = _relax_settings(self.batched_relax_maker)
        else:
            batched = self.batched_relax_maker  # its settings serve both routes
            relax_maker = self.relax_maker or default_relax_maker(
                batched.force_field_name, batched.fmax, batched.steps, device=batched.device
            )
            outputs = []
            ids = candidate_ids(
                gen_maker.n, gen_maker.n_random, gen_maker.n_template, len(gen_maker.structures)
            )
            for i, cid in enumerate(ids):
                # A reference into the generation document: static fan-out, so the whole
                # graph (and every FireWorks firework) exists before anything runs.
                relax = relax_maker.make(gen.output.candidates[i].structure)
                relax.name = f"{relax_maker.name} {cid}"
                jobs.append(relax)
                outputs.append(relax.output)
                relax_jobs.append({"uuid": relax.uuid, "name": relax.name})
            relaxations = outputs
            settings = _relax_settings(relax_maker)

        refining = self.refine_maker.top > 0
        verify = dict(verify_top=self.verify_top,
                      dft_maker=dft_maker if self.verify_top > 0 else None)  # fmt: skip
        rank = self.ranking_maker.make(
            gen.output,
            relaxations,
            run_uuid=run_uuid,
            relax_mode=self.relax_mode,
            relax_jobs=relax_jobs,
            relax_settings=settings,
            **({} if refining else verify),
        )
        jobs.append(rank)  # ranking_job: failed relaxations reach it as None
        output = rank.output
        if refining:  # DFT checks the final order, so the re-ranking job adds them
            refine = self.refine_maker.make(rank.output, **verify)
            jobs.append(refine)
            output = refine.output
        flow = Flow(jobs, output=output, name=f"{self.name} {formula}", uuid=run_uuid)
        flow.update_metadata({"dao_run": run_uuid, "formula": formula})
        return flow


def default_options(maker: DAOCSPMaker) -> dict[str, tuple[Any, str]]:
    """Each option of :meth:`DAOCSPMaker.from_options` -> (its value in ``maker``, the Maker
    attribute that holds it)."""
    out: dict[str, tuple[Any, str]] = {}
    for option in GENERATION_OPTIONS:
        out[option] = (getattr(maker.generation_maker, option), "generation_maker")
    for option, attr in RELAX_OPTIONS.items():
        out[option] = (getattr(maker.batched_relax_maker, attr), f"batched_relax_maker.{attr}")
    out["relax"] = (maker.relax_mode, "relax_mode")
    for option in ("symprec", "score_model"):
        out[option] = (getattr(maker.ranking_maker, option), "ranking_maker")
    out["device"] = (maker.generation_maker.device, "every stage")
    out["verify_top"] = (maker.verify_top, "verify_top")
    out["refine_top"] = (maker.refine_maker.top, "refine_maker.top")
    return out


def dao_csp_flow(composition: str, **options: Any) -> Flow:
    """One-line CSP workflow for ``composition``: ``DAOCSPMaker.from_options(**options)``.

    Options (any subset; the rest are the Makers' own defaults, see
    :meth:`DAOCSPMaker.from_options`): ``n`` DAO-G samples (``steps`` diffusion steps, default
    the model's own; DAO-P guidance at ``scale``), ``n_random`` pyxtal structures,
    ``n_template`` template substitutions (from ``templates``, default the bundled library)
    and the user's ``structures`` (pymatgen objects or CIF/POSCAR paths of the same
    composition) are relaxed (``relax="batched"`` in one job or ``"per-candidate"`` jobs;
    ``force_field``, ``fmax``, ``relax_steps``) and ranked. ``model``, ``guidance``,
    ``score_model`` accept bundled names or checkpoint paths; ``guidance=None`` samples
    unguided and (unless ``score_model`` is given) skips DAO-P scores.
    """
    return DAOCSPMaker.from_options(**options).make(composition)


def dao_csp_batch_flow(formulas: list[str], **options: Any) -> Flow:
    """Several compositions in one flow (one CSP sub-flow each, run independently).

    Every formula is validated before any job is created.
    """
    from dao_core.errors import DAOInputError

    if not formulas:
        raise DAOInputError("no formulas given")
    # Each dao_csp_flow validates its formula before creating a job, and nothing runs
    # before this returns, so a bad formula anywhere leaves nothing behind.
    subflows = [dao_csp_flow(f, **options) for f in formulas]
    return Flow(
        subflows, output=[f.output for f in subflows], name=f"dao csp batch ({len(formulas)})"
    )
