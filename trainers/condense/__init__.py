"""Dataset distillation (gradient and distribution matching) and the backdoors planted
through it (NaiveAttack, DoorPing), centrally and as federated uploads."""

from trainers.condense.backdoor import Poisoned, Trigger, attack_success_rate, poison
from trainers.condense.distil import Distiller, SyntheticSet, match_distance, train_fresh
from trainers.condense.trainers import Condense, FedCondense

__all__ = [
    "Condense",
    "Distiller",
    "FedCondense",
    "Poisoned",
    "SyntheticSet",
    "Trigger",
    "attack_success_rate",
    "match_distance",
    "poison",
    "train_fresh",
]
