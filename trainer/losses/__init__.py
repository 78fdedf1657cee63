"""Loss functions: shapes, paper and distributed semantics in each docstring."""

from trainer.losses.barlow_twins import BarlowTwinsTerms, barlow_twins_loss
from trainer.losses.byol import byol_loss
from trainer.losses.dino import DINOTerms, dino_loss
from trainer.losses.moco_v3 import moco_v3_loss
from trainer.losses.nt_xent import fused_ce, fused_ce_torch, nt_xent_loss
from trainer.losses.rotation import rotation_loss
from trainer.losses.simsiam import negative_cosine
from trainer.losses.vicreg import VICRegTerms, vicreg_loss

__all__ = ["BarlowTwinsTerms", "DINOTerms", "VICRegTerms", "barlow_twins_loss", "byol_loss", "dino_loss",
           "fused_ce", "fused_ce_torch", "moco_v3_loss", "negative_cosine", "nt_xent_loss", "rotation_loss",
           "vicreg_loss"]
