"""The method registry: every method the trainer can run, by config name (`method.name`)."""

from trainer.methods.byol import BYOL
from trainer.methods.rotnet import RotNet
from trainer.methods.simclr import SimCLR
from trainer.methods.vicreg import VICReg

METHODS: dict[str, type] = {"simclr": SimCLR, "byol": BYOL, "vicreg": VICReg, "rotnet": RotNet}
