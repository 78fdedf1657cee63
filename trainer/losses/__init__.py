"""Loss functions: shapes, paper and distributed semantics in each docstring."""

from trainer.losses.byol import byol_loss
from trainer.losses.nt_xent import fused_ce_torch, nt_xent_loss
from trainer.losses.rotation import rotation_loss
from trainer.losses.vicreg import VICRegTerms, vicreg_loss

__all__ = ["VICRegTerms", "byol_loss", "fused_ce_torch", "nt_xent_loss", "rotation_loss", "vicreg_loss"]
