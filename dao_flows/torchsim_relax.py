"""Batched CHGNet relaxation through torch-sim (issue 13).

torch-sim (PyPI ``torch-sim-atomistic``) supplies the batched optimiser (``frechet_cell_fire`` /
``unit_cell_fire`` / ``fire`` with ``md_flavor="ase_fire"``, i.e. ASE's FIRE constants and
update; the Fréchet step through :mod:`dao_flows.frechet_fire`, whose cell forces are batched
where torch-sim 0.3 loops over systems), its force-based convergence test and the
``InFlightAutoBatcher`` that swaps converged systems out of the batch and new ones in. CHGNet
is reached only through its public API (``CHGNet.load``, ``CHGNet.graph_converter``,
``CHGNet.forward(graphs, task="efs")``), wrapped in :class:`CHGNetTorchSimModel`; torch-sim
0.3.0 ships no CHGNet interface of its own.

Units: torch-sim works in eV, Å and eV/Å^3 with ASE's stress sign (virial = -V * stress);
CHGNet returns energy per atom (eV/atom) and stress in GPa, converted with ``ase.units.GPa``.

:func:`torchsim_relax` is a drop-in for :func:`dao_flows.batched_fire.batched_fire_relax`
(the same ``structures, model`` and keyword-only ``fmax``/``steps``/``relax_cell``/``device``,
the same results type), chosen by ``BatchedRelaxMaker(optimizer="torch-sim")``; the
hand-written FIRE stays the default because it lands closer to atomate2's route and runs
faster on the CPU (docs/performance.md, ``benchmarks/torchsim_vs_ase.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
from ase import units
from pymatgen.core import Lattice, Structure
from torch_sim.models.interface import ModelInterface

from dao_core.checkpoint import default_device
from dao_core.data import right_handed_structure
from dao_flows.batched_fire import (
    ISOLATED_ATOMS,
    SEVENNET_MODEL,
    BatchRelaxResult,
    load_chgnet,
)
from dao_flows.frechet_fire import frechet_cell_fire

CellFilter = Literal["frechet", "unit"]

# Inputs up to this many atoms relax as one batch on a GPU too (a few GB for CHGNet). torch-sim's
# memory estimate probes ever larger batches, and this adapter builds every probe's CHGNet
# graphs on the CPU: on an H100 that probing alone outran 150 s for 200 CsV3Sb5 candidates.
ONE_BATCH_ATOMS = 10_000


@contextmanager
def _isolated_atom_policy(model: Any, response: str) -> Iterator[None]:
    """Apply ``response`` to CHGNet's graph converter for the duration, then restore it (a
    shared model may be used by a CHGNetCalculator too, which sets "warn")."""
    conv = model.graph_converter
    previous = conv.on_isolated_atoms
    conv.set_isolated_atom_response(response)
    try:
        yield
    finally:
        conv.set_isolated_atom_response(previous)


class CHGNetTorchSimModel(ModelInterface):
    """torch-sim ``ModelInterface`` around CHGNet's public API.

    ``forward(state)`` returns total ``energy`` [n_systems] (eV), ``forces`` [n_atoms, 3]
    (eV/Å) and ``stress`` [n_systems, 3, 3] (eV/Å^3). A system whose graph or prediction fails
    gets energy NaN, zero forces/stress (so it stands still instead of poisoning the batch) and
    its reason in :attr:`last_errors` (keyed by its position in the state just evaluated).
    ``on_isolated_atoms`` defaults to the shared :data:`~dao_flows.batched_fire.ISOLATED_ATOMS`
    ("warn"), so both batched routes treat a candidate alike; ``"error"`` turns isolated atoms
    into such failures.
    """

    def __init__(
        self,
        model: Any = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float64,
        compute_stress: bool = True,
        on_isolated_atoms: str = ISOLATED_ATOMS,
    ) -> None:
        super().__init__()
        if model is None:
            model = load_chgnet(None if device is None else str(device))
        self.model = model
        self.model.eval()
        self._model_device = next(self.model.parameters()).device
        self._device = torch.device(device) if device is not None else self._model_device
        self._dtype = dtype
        self._compute_stress = compute_stress
        self._compute_forces = True
        self._memory_scales_with = "n_atoms_x_density"  # CHGNet: radial cutoffs
        self.on_isolated_atoms = on_isolated_atoms
        self.calls = 0  # forward() invocations
        self.graphs_evaluated = 0
        self.last_errors: dict[int, str] = {}

    def _predict(self, graphs: list) -> dict[str, Any]:
        task = "efs" if self._compute_stress else "ef"
        with torch.enable_grad():
            return self.model.forward([g.to(self._model_device) for g in graphs], task=task)

    def graph(self, structure: Structure, graph_id: str | None = None) -> Any:
        """CHGNet's CrystalGraph for ``structure`` under this adapter's isolated-atom policy."""
        with _isolated_atom_policy(self.model, self.on_isolated_atoms):
            return self.model.graph_converter(structure, graph_id=graph_id)

    def forward(self, state: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Energies, forces and stresses for every system of ``state`` in one CHGNet call."""
        from torch_sim.state import SimState

        if not isinstance(state, SimState):
            state = SimState(**state)
        self.calls += 1
        n_sys = state.n_systems
        pos = state.positions.detach().cpu().numpy().astype(np.float64)
        cells = state.row_vector_cell.detach().cpu().numpy().astype(np.float64)
        numbers = state.atomic_numbers.detach().cpu().numpy()
        sys_idx = state.system_idx.detach().cpu().numpy()
        energy = torch.full((n_sys,), float("nan"), dtype=self._dtype)
        forces = torch.zeros((len(pos), 3), dtype=self._dtype)
        stress = torch.zeros((n_sys, 3, 3), dtype=self._dtype)
        errors: dict[int, str] = {}

        graphs, ok = [], []
        for i in range(n_sys):
            mask = sys_idx == i
            try:
                s = Structure(
                    Lattice(cells[i]), numbers[mask], pos[mask], coords_are_cartesian=True
                )
                graphs.append(self.graph(s, graph_id=str(i)))
                ok.append(i)
            except Exception as exc:  # noqa: BLE001 - any failure is this system's only
                errors[i] = f"CHGNet graph: {type(exc).__name__}: {exc}"
        preds: list[tuple[int, dict[str, Any]]] = []
        if graphs:
            try:
                preds = [(-1, self._predict(graphs))]
            except Exception:  # noqa: BLE001 - isolate the culprit one graph at a time
                preds = []
                for i, g in zip(ok, graphs, strict=True):
                    try:
                        preds.append((i, self._predict([g])))
                    except Exception as exc:  # noqa: BLE001
                        errors[i] = f"CHGNet forward: {type(exc).__name__}: {exc}"
        self.graphs_evaluated += len(graphs)
        for where, pred in preds:
            members = ok if where < 0 else [where]
            for k, i in enumerate(members):
                n_at = int((sys_idx == i).sum())
                e = pred["e"][k].detach().to("cpu", self._dtype) * n_at  # eV/atom -> eV
                f = pred["f"][k].detach().to("cpu", self._dtype)
                s = (
                    pred["s"][k].detach().to("cpu", self._dtype) * units.GPa  # GPa -> eV/Å^3
                    if self._compute_stress
                    else torch.zeros(3, 3, dtype=self._dtype)
                )
                if not (torch.isfinite(e) and torch.isfinite(f).all() and torch.isfinite(s).all()):
                    errors[i] = "CHGNet returned non-finite energy/forces/stress"
                    continue
                energy[i] = e
                forces[torch.as_tensor(sys_idx == i)] = f
                stress[i] = s
        self.last_errors = errors
        out = {"energy": energy.to(self._device), "forces": forces.to(self._device)}
        if self._compute_stress:
            out["stress"] = stress.to(self._device)
        return out


def torchsim_model(
    force_field_name: str = "CHGNet", device: str | None = None, model: str = SEVENNET_MODEL
) -> ModelInterface:
    """A torch-sim model for an atomate2 force-field name: ``"CHGNet"`` through
    :class:`CHGNetTorchSimModel` (its graphs are built on the CPU, one structure at a time),
    ``"SevenNet"`` (``model``: a pretrained name from the sevenn wheel) through torch-sim's
    ``SevenNetModel`` with one neighbour list and graph per batch (``BatchedSevenNetModel``).
    Names are matched without regard to case, as atomate2 does."""
    name = force_field_name.lower()
    if name == "chgnet":
        return CHGNetTorchSimModel(device=device)
    if name == "sevennet":
        from sevenn.util import load_checkpoint

        from dao_flows.sevennet_batched import BatchedSevenNetModel

        return BatchedSevenNetModel(
            model=load_checkpoint(model).build_model(), device=str(default_device(device))
        )
    raise ValueError(f"no torch-sim model for {force_field_name!r}; use 'CHGNet' or 'SevenNet'")


def _optimizer(model: ModelInterface, relax_cell: bool, cell_filter: CellFilter) -> tuple:
    import torch_sim as ts

    if not relax_cell:
        return ts.optimizers.fire(model=model, md_flavor="ase_fire")
    if cell_filter == "frechet":  # torch-sim's, with the cell forces batched (frechet_fire.py)
        return frechet_cell_fire(model)
    if cell_filter == "unit":
        return ts.unit_cell_fire(model=model, md_flavor="ase_fire")
    raise ValueError(f"unknown {cell_filter=}, expected 'frechet' or 'unit'")


def torchsim_relax(
    structures: Sequence[Structure],
    model: Any = None,
    *,
    fmax: float,
    steps: int,
    relax_cell: bool = True,
    device: str | None = None,
    cell_filter: CellFilter = "frechet",
    max_memory_scaler: float | None = None,
) -> tuple[list[BatchRelaxResult], dict[str, Any]]:
    """Relax ``structures`` together with torch-sim's FIRE (positions, and the cell through a
    Fréchet or unit cell filter when ``relax_cell``) on ``model``: a torch-sim
    ``ModelInterface`` (:func:`torchsim_model`), or a CHGNet, or None for the bundled CHGNet.

    Converged means torch-sim's ``generate_force_convergence_fn(fmax)``: every atomic force
    norm < fmax and, with the cell relaxed, every row of the filter's cell forces < fmax; it is
    checked before every step, as ASE does, and a system stops after ``steps`` steps. A
    structure CHGNet cannot evaluate (isolated atom, non-finite output) is returned failed with
    the reason; the others carry on. ``max_memory_scaler`` caps the autobatcher's batch size
    (``n_atoms_x_density`` units); unset, everything is one batch on the CPU or when the input
    has at most :data:`ONE_BATCH_ATOMS` atoms, and torch-sim estimates the cap otherwise.

    ``fmax`` and ``steps`` are required and keyword-only, as in ``batched_fire_relax`` (the
    Makers own the defaults). Returns one :class:`BatchRelaxResult` per input (same order)
    and run statistics (``model_calls``: the adapter's batched ``forward`` calls).
    """
    import torch_sim as ts
    from torch_sim.autobatching import InFlightAutoBatcher

    started = time.perf_counter()
    device = str(default_device(device))
    if isinstance(model, ModelInterface):
        adapter = model
    else:
        adapter = CHGNetTorchSimModel(model, device=device)  # loads CHGNet when model is None
    chgnet = isinstance(adapter, CHGNetTorchSimModel)
    calls0, graphs0 = (adapter.calls, adapter.graphs_evaluated) if chgnet else (0, 0)
    # CHGNet's stress changes sign with the cell's handedness: relax right-handed cells only.
    structures = [right_handed_structure(s) for s in structures]
    results: list[BatchRelaxResult | None] = [None] * len(structures)

    # Screen each structure alone first, so one bad input cannot fail the batched init.
    good: list[int] = []
    for i, s in enumerate(structures):
        if not (np.isfinite(s.lattice.matrix).all() and np.isfinite(s.cart_coords).all()):
            results[i] = BatchRelaxResult(None, None, False, 0, None, "non-finite input")
            continue
        try:
            if chgnet:  # CHGNet's own screen: e.g. isolated atoms
                adapter.graph(s)
            good.append(i)
        except Exception as exc:  # noqa: BLE001
            reason = f"CHGNet graph: {type(exc).__name__}: {exc}"
            results[i] = BatchRelaxResult(None, None, False, 0, None, reason)

    converge = ts.generate_force_convergence_fn(fmax, include_cell_forces=relax_cell)
    init_fn, update_fn = _optimizer(adapter, relax_cell, cell_filter)
    n_steps = [0] * len(good)
    errors: dict[int, str] = {}  # position in ``good`` -> reason
    batches = 0
    if good:
        state = init_fn(
            ts.io.structures_to_state([structures[i] for i in good], adapter.device, adapter.dtype)
        )
        for pos, msg in getattr(adapter, "last_errors", {}).items():
            errors[pos] = msg
        n_atoms = sum(len(structures[i]) for i in good)
        if max_memory_scaler is None and (
            adapter.device.type == "cpu" or n_atoms <= ONE_BATCH_ATOMS
        ):
            max_memory_scaler = float("inf")
        batcher = InFlightAutoBatcher(
            model=adapter,
            memory_scales_with=adapter.memory_scales_with,
            max_memory_scaler=max_memory_scaler,
            max_atoms_to_try=n_atoms,  # the estimate never needs a batch beyond the input
            return_indices=True,
        )
        systems = state.split()
        batcher.load_states(systems)
        done_states: list = []
        batch, _, idx = batcher.next_batch(None, None)
        idx = list(idx)
        seen: set[int] = set()  # systems checked at least once
        while batch is not None:
            batches += 1
            seen.update(idx)
            # Check before stepping (ASE's order): converged, failed or out of steps -> out.
            finished = converge(batch, None) | ~torch.isfinite(batch.energy)
            finished |= torch.tensor([n_steps[j] >= steps for j in idx], device=batch.device)
            batch, completed, idx = batcher.next_batch(batch, finished)
            done_states.extend(completed)
            if batch is None:
                break
            idx = list(idx)
            if not seen.issuperset(idx):
                continue  # fresh systems were swapped in: check them before any step
            batch = update_fn(batch)
            for pos, msg in getattr(adapter, "last_errors", {}).items():
                errors.setdefault(idx[pos], msg)
            for j in idx:
                n_steps[j] += 1
        final = ts.concatenate_states(batcher.restore_original_order(done_states))
        conv = converge(final, None).cpu().tolist()
        fmax_now = ts.quantities.systemwise_max_force(final).cpu().tolist()
        energies = final.energy.detach().cpu().tolist()
        relaxed = ts.io.state_to_structures(final)
        for j, i in enumerate(good):
            n_at = len(structures[i])
            if j in errors or not np.isfinite(energies[j]):
                reason = errors.get(j, "non-finite energy")
                results[i] = BatchRelaxResult(None, None, False, n_steps[j], None, reason)
                continue
            results[i] = BatchRelaxResult(
                relaxed[j], energies[j] / n_at, bool(conv[j]), n_steps[j], fmax_now[j]
            )

    stats = {
        "elapsed_s": time.perf_counter() - started,
        "model_calls": adapter.calls - calls0 if chgnet else None,  # batched forward() calls
        "graphs_evaluated": adapter.graphs_evaluated - graphs0 if chgnet else None,
        "batcher_iterations": batches,  # next_batch() rounds (convergence checks)
        "device": str(adapter.device),
        "cell_filter": cell_filter if relax_cell else None,
        "torch_sim_version": _torch_sim_version(),
    }
    return [r for r in results if r is not None], stats


def _torch_sim_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch-sim-atomistic")
    except PackageNotFoundError:
        return "unknown"
