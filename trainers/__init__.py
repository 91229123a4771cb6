"""The science: what parties, nodes and committee members compute, in plain PyTorch/NumPy."""

from trainers.base import (
    FederatedData,
    PartyData,
    Reporter,
    StopTraining,
    Trainer,
    TrainResult,
    derive_seed,
)
from trainers.fedavg import TRAINERS, Centralized, FedAvg, FedProx, FedProxConfig, TrainerConfig
from trainers.models import MODELS, ModelConfig, ModelSpec, build_model
from trainers.registry import Registry, UnknownNameError

__all__ = [
    "MODELS",
    "TRAINERS",
    "Centralized",
    "FedAvg",
    "FedProx",
    "FedProxConfig",
    "FederatedData",
    "ModelConfig",
    "ModelSpec",
    "PartyData",
    "Registry",
    "Reporter",
    "StopTraining",
    "TrainResult",
    "Trainer",
    "TrainerConfig",
    "UnknownNameError",
    "build_model",
    "derive_seed",
]
