"""Graph federated learning: clients holding subgraphs of one graph (FedEgo, GFL and the
local, FedAvg and centralized GNN baselines)."""

from trainers.graph.baselines import GraphCentralized, GraphFedAvg, GraphFedProx, GraphLocal
from trainers.graph.data import External, GraphClient, GraphData, Subgraph
from trainers.graph.fedego import FedEgo
from trainers.graph.gfl import GFL
from trainers.graph.models import GRAPH_MODELS, GraphNet

__all__ = [
    "GFL",
    "GRAPH_MODELS",
    "External",
    "FedEgo",
    "GraphCentralized",
    "GraphClient",
    "GraphData",
    "GraphFedAvg",
    "GraphFedProx",
    "GraphLocal",
    "GraphNet",
    "Subgraph",
]
