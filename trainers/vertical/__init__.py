"""Vertical federated learning: parties hold different features of the same samples.

Split learning (VLR, VHNN, VSNN) with Kang et al.'s attacks and defenses on its messages, and
FedHSSL with its self-supervised baselines.
"""

from trainers.vertical.attacks import LABEL_ATTACKS
from trainers.vertical.data import ACTIVE, VerticalData, VerticalParty
from trainers.vertical.defenses import DEFENSES, Defense
from trainers.vertical.fedhssl import FedCSSL, FedGSSL, FedHSSL, SupervisedVFL
from trainers.vertical.split import VHNN, VLR, VSNN, SplitLearning

__all__ = [
    "ACTIVE",
    "DEFENSES",
    "LABEL_ATTACKS",
    "VHNN",
    "VLR",
    "VSNN",
    "Defense",
    "FedCSSL",
    "FedGSSL",
    "FedHSSL",
    "SupervisedVFL",
    "SplitLearning",
    "VerticalData",
    "VerticalParty",
]
