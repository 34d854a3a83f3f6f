"""DAO core: Crysformer backbone, DAO-G diffusion, DAO-P energy model, data, training, metrics.

This package never imports jobflow; workflow code lives in ``dao_flows``.
"""

from dao_core.errors import DAOInputError

__all__ = ["DAOInputError"]
__version__ = "0.1.0"
