"""The science: what parties, nodes and committee members compute, in plain PyTorch/NumPy."""

from trainers.aggregators import AGGREGATORS, Aggregate, Aggregator, AggregatorError
from trainers.attacks import ATTACKS, Adversary, Attack
from trainers.base import (
    TRAINERS,
    FederatedData,
    PartyData,
    Reporter,
    StopTraining,
    Trainer,
    TrainResult,
    derive_seed,
)
from trainers.cmfl import CMFL
from trainers.condense import Condense, FedCondense
from trainers.config import (
    AggregatorConfig,
    AttackConfig,
    CMFLConfig,
    DecentralizedConfig,
    DistillConfig,
    FedProxConfig,
    TrainerConfig,
)
from trainers.decentralized import DPSVRG, DSGD, DSPG
from trainers.distill import Distillation
from trainers.fedavg import Centralized, FedAvg, FedProx
from trainers.graph import GFL, FedEgo, GraphData
from trainers.models import MODELS, ModelConfig, ModelSpec, build_model
from trainers.registry import Registry, UnknownNameError
from trainers.vertical import DEFENSES, VHNN, VLR, VSNN, VerticalData

__all__ = [
    "AGGREGATORS",
    "ATTACKS",
    "CMFL",
    "DEFENSES",
    "DPSVRG",
    "DSGD",
    "DSPG",
    "MODELS",
    "TRAINERS",
    "Adversary",
    "Aggregate",
    "Aggregator",
    "AggregatorConfig",
    "AggregatorError",
    "Attack",
    "AttackConfig",
    "CMFLConfig",
    "Centralized",
    "Condense",
    "DecentralizedConfig",
    "DistillConfig",
    "Distillation",
    "FedAvg",
    "FedCondense",
    "FedEgo",
    "GFL",
    "GraphData",
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
    "VHNN",
    "VLR",
    "VSNN",
    "VerticalData",
    "build_model",
    "derive_seed",
]
