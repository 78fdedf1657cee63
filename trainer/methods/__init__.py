"""The method registry: every method the trainer can run, by config name (`method.name`)."""

from trainer.methods.barlow_twins import BarlowTwins
from trainer.methods.byol import BYOL
from trainer.methods.dino import DINO
from trainer.methods.mae import MAE
from trainer.methods.mocov3 import MoCoV3
from trainer.methods.rotnet import RotNet
from trainer.methods.simclr import SimCLR
from trainer.methods.simsiam import SimSiam
from trainer.methods.vicreg import VICReg

METHODS: dict[str, type] = {"simclr": SimCLR, "byol": BYOL, "vicreg": VICReg, "rotnet": RotNet,
                            "barlow_twins": BarlowTwins, "simsiam": SimSiam, "mocov3": MoCoV3, "dino": DINO,
                            "mae": MAE}
