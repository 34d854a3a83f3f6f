"""SevenNet for torch-sim with one neighbour list and one graph per batch.

torch-sim 0.3.0's ``SevenNetModel.forward`` loops over the systems in Python: a vesin
neighbour list, an ``AtomGraphData`` and several host syncs per system, then a torch_geometric
collate. On an H100 a relaxation step of 20 CsV3Sb5 candidates took ~0.2 s that way and 200 did
not finish in 180 s (docs/performance.md): the GPU waited for the loop. Here the whole batch
gets one linked-cell neighbour list (torch-sim's own, batched by ``system_idx``) and one graph,
the layout torch_geometric's collate would have produced, so a step is a fixed number of
kernels however many candidates it holds.
"""

from __future__ import annotations

import sevenn.calculator
import torch
import torch_sim as ts
from sevenn import _keys as key
from sevenn.atom_graph_data import AtomGraphData
from torch_sim.elastic import voigt_6_to_full_3x3_stress
from torch_sim.neighbors import torch_nl_linked_cell
from torch_sim.transforms import compute_cell_shifts, pbc_wrap_batched

# torch-sim 0.3 imports this name, which sevenn 0.13 dropped (without it SevenNetModel is a
# placeholder); it only tests for TorchScript-deployed models, and the wheel's are not.
if not hasattr(sevenn.calculator, "torch_script_type"):
    sevenn.calculator.torch_script_type = torch.jit.ScriptModule
from torch_sim.models.sevennet import SevenNetModel  # noqa: E402


class BatchedSevenNetModel(SevenNetModel):
    """torch-sim's ``SevenNetModel`` (same weights, cutoff and outputs) with a batched
    ``forward``: energies (S,), forces (N, 3) and stresses (S, 3, 3) in torch-sim's units."""

    def forward(self, state: ts.SimState | dict) -> dict[str, torch.Tensor]:
        if isinstance(state, dict):
            state = ts.SimState(**state, masses=torch.ones_like(state["positions"]))
        state = state.to(self._device)
        cell = state.row_vector_cell  # (S, 3, 3), lattice vectors as rows
        system = state.system_idx
        n_systems = cell.shape[0]
        # The linked-cell search wants positions inside their cells; wrapping moves atoms by
        # lattice vectors, which changes no energy, force or stress.
        pos = pbc_wrap_batched(state.positions, state.cell, system)
        pbc = torch.as_tensor(state.pbc, device=pos.device).expand(n_systems, 3)
        edges, edge_system, shift_idx = torch_nl_linked_cell(
            self.cutoff, pos, cell.reshape(-1, 3), pbc, system
        )
        shift_idx = shift_idx.to(pos.dtype)
        edge_vec = pos[edges[1]] - pos[edges[0]] + compute_cell_shifts(cell, shift_idx, edge_system)
        numbers = state.atomic_numbers
        counts = torch.bincount(system, minlength=n_systems)
        graph = AtomGraphData(
            x=numbers,
            atomic_numbers=numbers.to(torch.int64),
            pos=pos,
            edge_index=edges,
            edge_vec=edge_vec,
            pbc_shift=shift_idx,
            cell_lattice_vectors=cell.reshape(-1, 3),
            cell_volume=torch.det(cell),
            num_atoms=counts,
            batch=system,
            ptr=torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
            data_info={},
        )
        graph[key.DATA_MODALITY] = self.modal
        output = self.model(graph)
        # SevenNet's Voigt order is (xx, yy, zz, xy, yz, zx); torch-sim's helper wants
        # (xx, yy, zz, yz, zx, xy), and SevenNet reports the negative of the stress.
        stress = output[key.PRED_STRESS].detach()[..., [0, 1, 2, 4, 5, 3]]
        return {
            "energy": output[key.PRED_TOTAL_ENERGY].detach(),
            "forces": output[key.PRED_FORCE].detach(),
            "stress": -voigt_6_to_full_3x3_stress(stress),
        }
