"""Checkpoints: a folder with ``config.json`` (model kind, Crysformer config, energy label,
training record) and ``model.safetensors``; identified by the SHA-256 of the weights file.

Bundled models live in ``dao_core/weights/<name>/`` and load by name (``dao-g-base``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dao_core.dao import DAOModel, EnergyLabel
from dao_core.diffusion import SamplerSettings
from dao_core.errors import DAOInputError
from dao_core.model import CrysformerConfig

BUNDLED_DIR = Path(__file__).parent / "weights"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def bundled_models() -> list[str]:
    """Names of the models shipped inside the package."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / WEIGHTS_FILE).is_file())


def resolve(name_or_path: str | Path) -> Path:
    """Folder of a bundled name or a user path (folder, or its model.safetensors)."""
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.name == WEIGHTS_FILE:
        path = path.parent
    if (path / WEIGHTS_FILE).is_file():
        return path
    if (BUNDLED_DIR / str(name_or_path) / WEIGHTS_FILE).is_file():
        return BUNDLED_DIR / str(name_or_path)
    raise DAOInputError(
        f"model {str(name_or_path)!r} is neither a checkpoint folder (config.json + "
        f"model.safetensors) nor a bundled model; bundled: {bundled_models() or 'none'}"
    )


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_weights(
    state: dict[str, torch.Tensor], folder: Path, dtype: torch.dtype = torch.float32
) -> str:
    """``folder/model.safetensors`` with floating tensors in ``dtype``; returns its hash."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = {
        k: v.detach().cpu().to(dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in state.items()
    }
    save_file(weights, folder / WEIGHTS_FILE)
    return file_hash(folder / WEIGHTS_FILE)


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``folder/model.safetensors``, floating ones as float32."""
    return {k: v.float() if v.is_floating_point() else v
            for k, v in load_file(folder / WEIGHTS_FILE).items()}  # fmt: skip


def save_model(
    model: DAOModel,
    folder: str | Path,
    record: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> str:
    """Write config + weights; returns the content hash. ``record`` is free-form provenance.

    ``dtype=torch.float16`` halves the file for shipping; loading casts back to float32.
    """
    folder = Path(folder)
    digest = write_weights(model.net.state_dict(), folder, dtype)
    config = {
        "kind": model.kind,
        "crysformer": model.config.to_dict(),
        "diffusion_steps": model.schedule.steps,
        "energy_label": asdict(model.label),
        "sampling": asdict(model.sampling),
        "sha256": digest,
        "record": record or {},
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return digest


def read_config(name_or_path: str | Path) -> dict[str, Any]:
    return json.loads((resolve(name_or_path) / CONFIG_FILE).read_text())


def load_model(name_or_path: str | Path | DAOModel, device: str | None = None) -> DAOModel:
    """Load a checkpoint (bundled name or path) in eval mode on ``device`` (default: best).
    A model already loaded stays where it is unless ``device`` is given."""
    if isinstance(name_or_path, DAOModel):
        return name_or_path if device is None else name_or_path.to(device)
    folder = resolve(name_or_path)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
        if config.get("kind") == "property":
            raise DAOInputError(
                f"{name_or_path} is a property model: load it with "
                "dao_core.properties.load_property_model (or dao predict)"
            )
        model = DAOModel(
            config["kind"],
            CrysformerConfig(**config["crysformer"]),
            EnergyLabel(**config["energy_label"]),
            steps=config["diffusion_steps"],
            sampling=SamplerSettings(**config.get("sampling", {})),
        )
        model.net.load_state_dict(read_weights(folder))
    except (KeyError, TypeError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        raise DAOInputError(f"checkpoint {folder} is unreadable: {exc}") from exc
    model.name = str(name_or_path)
    model.content_hash = file_hash(folder / WEIGHTS_FILE)
    return model.to(default_device(device)).eval()


def default_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
