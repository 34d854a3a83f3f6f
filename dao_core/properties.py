"""Property models on DAO-P (method doc section 6): an MLP head on the backbone's mean-pooled
crystal features at the clean noise step, one member per cross-validation fold.

A property model is a checkpoint folder like the others (``config.json`` + ``model.safetensors``,
``kind: "property"``). With a frozen backbone only the heads are stored and the backbone is a
reference (name and SHA-256) to a DAO-P checkpoint, checked on loading; a fully fine-tuned model
stores its own backbone per fold. Predictions are the members' mean and spread in the
property's units.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dao_core.checkpoint import (
    BUNDLED_DIR,
    CONFIG_FILE,
    default_device,
    load_model,
    read_weights,
    resolve,
    write_weights,
)
from dao_core.dao import CLEAN_STEP
from dao_core.data import CrystalBatch, CrystalRecord
from dao_core.errors import DAOInputError
from dao_core.model import Crysformer, CrysformerConfig

# Target transforms: forward (physical -> trained target) and inverse. log1p keeps Tc = 0 K
# (reported non-superconducting) at exactly 0 without an arbitrary offset.
TRANSFORMS = {
    "identity": (lambda y: y, lambda z: z),
    "log1p": (np.log1p, np.expm1),
}


@dataclass
class PropertySpec:
    """What a property model predicts: a data column, its unit and the trained transform."""

    name: str
    unit: str = ""
    transform: str = "identity"

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise DAOInputError(
                f"unknown target transform {self.transform!r}; choose from {sorted(TRANSFORMS)}"
            )

    def forward(self, y: np.ndarray) -> np.ndarray:
        return TRANSFORMS[self.transform][0](np.asarray(y, dtype=np.float64))

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return TRANSFORMS[self.transform][1](np.asarray(z, dtype=np.float64))


class PropertyHead(nn.Module):
    """Standardised pooled features -> MLP -> transformed target.

    The feature and target statistics of the member's training fold are buffers, so a head
    is self-contained and its raw output (:meth:`standardised`) is what the L1 loss sees.
    """

    def __init__(self, features: int, width: int) -> None:
        super().__init__()
        self.register_buffer("x_mean", torch.zeros(features))
        self.register_buffer("x_std", torch.ones(features))
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))
        self.mlp = nn.Sequential(nn.Linear(features, width), nn.SiLU(), nn.Linear(width, 1))

    def set_statistics(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x_mean.copy_(x.mean(0))
        self.x_std.copy_(x.std(0).clamp(min=1e-6))
        self.y_mean.copy_(y.mean())
        self.y_std.copy_(y.std().clamp(min=1e-6))

    def standardised(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.mlp((pooled - self.x_mean) / self.x_std).squeeze(-1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.standardised(pooled) * self.y_std + self.y_mean


def pooled(net: Crysformer, batch: CrystalBatch) -> torch.Tensor:
    """Mean-pooled crystal features (B, H) of ``batch`` at the clean step."""
    t = torch.full((batch.batch_size,), CLEAN_STEP, dtype=torch.long, device=batch.mask.device)
    return net.encode(batch, t)[1]


def features(
    net: Crysformer,
    records: Sequence[CrystalRecord],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Pooled clean-step features (len(records), H), in size-sorted batches (little padding)."""
    out = torch.zeros(len(records), net.cfg.hidden)
    order = np.argsort([r.num_atoms for r in records], kind="stable")
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = CrystalBatch.from_records([records[i] for i in idx]).to(device)
            out[torch.from_numpy(idx)] = pooled(net, batch).float().cpu()
    return out


class PropertyModel(nn.Module):
    """One head per fold on one shared (frozen) backbone, or on one fine-tuned backbone each."""

    def __init__(
        self,
        spec: PropertySpec,
        config: CrysformerConfig,
        members: int,
        width: int = 256,
        shared_backbone: bool = True,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.config = config
        self.width = width
        n_backbones = 1 if shared_backbone else members
        self.backbones = nn.ModuleList(Crysformer(config) for _ in range(n_backbones))
        self.heads = nn.ModuleList(PropertyHead(config.hidden, width) for _ in range(members))
        self.backbone_ref: dict[str, str] = {}  # name + sha256 of the DAO-P the heads sit on
        self.record: dict[str, Any] = {}  # data, folds, CV metrics: written to config.json
        self.name = ""

    @property
    def shared_backbone(self) -> bool:
        return len(self.backbones) == 1

    @property
    def members(self) -> int:
        return len(self.heads)

    def backbone(self, member: int) -> Crysformer:
        return self.backbones[0 if self.shared_backbone else member]  # type: ignore[return-value]

    @torch.no_grad()
    def predict_records(self, records: list[CrystalRecord], batch_size: int = 64) -> np.ndarray:
        """Per-member predictions in physical units (members, len(records))."""
        device = next(self.parameters()).device
        x = [features(net, records, batch_size, device).to(device) for net in self.backbones]
        out = torch.stack(
            [head(x[0 if self.shared_backbone else k]) for k, head in enumerate(self.heads)]
        )
        return self.spec.inverse(out.double().cpu().numpy())


def save_property_model(
    model: PropertyModel, folder: str | Path, dtype: torch.dtype = torch.float32
) -> str:
    """Write config + weights (heads, and backbones unless shared); returns the content hash."""
    folder = Path(folder)
    state = model.state_dict()
    if model.shared_backbone:  # the backbone is a reference, never a copy
        state = {k: v for k, v in state.items() if not k.startswith("backbones.")}
    digest = write_weights(state, folder, dtype)
    config = {
        "kind": "property",
        "property": asdict(model.spec),
        "crysformer": model.config.to_dict(),
        "members": model.members,
        "head_width": model.width,
        "noise_step": CLEAN_STEP,
        "backbone": {**model.backbone_ref, "stored": not model.shared_backbone},
        "sha256": digest,
        "record": model.record,
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return digest


def backbone_reference(name_or_path: str | Path) -> str:
    """How a backbone is referred to in a property model: a bundled name stays a name, a user
    checkpoint becomes its absolute folder."""
    folder = resolve(name_or_path)
    return folder.name if folder.parent == BUNDLED_DIR else str(folder.resolve())


def load_property_model(name_or_path: str | Path, device: str | None = None) -> PropertyModel:
    """Load a property model (bundled name or folder) in eval mode.

    A heads-only model loads its backbone by reference and refuses one whose weights changed
    since the heads were trained: the features, hence the predictions, would silently differ.
    """
    folder = resolve(name_or_path)
    config = json.loads((folder / CONFIG_FILE).read_text())
    if config.get("kind") != "property":
        raise DAOInputError(
            f"{name_or_path} is a {config.get('kind')} model, not a property model "
            "(train one with dao finetune-property)"
        )
    ref = config["backbone"]
    model = PropertyModel(
        PropertySpec(**config["property"]),
        CrysformerConfig(**config["crysformer"]),
        config["members"],
        config["head_width"],
        shared_backbone=not ref["stored"],
    )
    weights = read_weights(folder)
    if not ref["stored"]:
        dao_p = load_model(ref["name"], device="cpu")
        if dao_p.content_hash != ref["sha256"]:
            raise DAOInputError(
                f"property model {name_or_path} was trained on backbone {ref['name']} with "
                f"sha256 {ref['sha256'][:12]}, but {ref['name']} now has "
                f"{dao_p.content_hash[:12]}; retrain its heads on the new backbone "
                f"(command in its config.json, record.command)"
            )
        weights |= {f"backbones.0.{k}": v for k, v in dao_p.net.state_dict().items()}
    model.load_state_dict(weights)
    model.backbone_ref = {"name": ref["name"], "sha256": ref["sha256"]}
    model.record = config.get("record", {})
    model.name = str(name_or_path)
    return model.to(default_device(device)).eval()
