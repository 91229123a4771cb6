"""The server's optimizer: what the server does with a round's aggregate.

FedAvg sets the global weights to the aggregate. Reddi et al. ("Adaptive Federated
Optimization", ICLR 2021, Algorithm 2) read the aggregate a_t as a step instead: the
pseudo-gradient d_t = a_t - x_t is fed to a server optimizer,

    m_t = beta1 m_{t-1} + (1 - beta1) d_t
    v_t = v_{t-1} + d_t^2                                        (FedAdagrad)
    v_t = beta2 v_{t-1} + (1 - beta2) d_t^2                      (FedAdam)
    v_t = v_{t-1} - (1 - beta2) d_t^2 sign(v_{t-1} - d_t^2)      (FedYogi)
    x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau)

elementwise, with m_{-1} = 0, v_{-1} = tau^2 and no bias correction. FedAvgM (Hsu et al. 2019)
is m_t = beta m_{t-1} + d_t, x_{t+1} = x_t + eta m_t; plain FedAvg is x_{t+1} = x_t + eta d_t
with eta 1, i.e. the aggregate itself.

The aggregate is whatever the round's aggregator made (the weighted mean, or a robust
aggregate), so every aggregator composes with every server optimizer. The optimizer's
moments are :class:`ServerState`, part of the trainer's state: kept across rounds and in
every checkpoint. The arithmetic is float64; the global weights stay float32.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from trainers.config import ServerConfig, ServerOptimizer

__all__ = ["ServerState", "ServerStep", "build_server_step"]

_ADAPTIVE_LR = 0.01
"""The server learning rate of the adaptive optimizers when none is configured."""


@dataclass
class ServerState:
    """The server optimizer's moments (None until its first step)."""

    m: np.ndarray | None = None
    v: np.ndarray | None = None
    steps: int = 0


class ServerStep(ABC):
    """One rule for x_{t+1} from x_t and the round's aggregate, updating ``state``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.lr = float(config.lr) if config.lr is not None else self.default_lr

    default_lr = 1.0

    def __call__(self, x: np.ndarray, aggregate: np.ndarray, state: ServerState) -> np.ndarray:
        """The new global weights (float32), the moments in ``state`` moved on."""
        d = aggregate.astype(np.float64) - x.astype(np.float64)
        step = self.step(d, state)
        state.steps += 1
        return (x.astype(np.float64) + step).astype(np.float32)

    @abstractmethod
    def step(self, d: np.ndarray, state: ServerState) -> np.ndarray:
        """The change to the global weights for pseudo-gradient ``d``."""


class Plain(ServerStep):
    """x + eta d; with eta 1 it is FedAvg (the aggregate, not recomputed)."""

    def __call__(self, x: np.ndarray, aggregate: np.ndarray, state: ServerState) -> np.ndarray:
        if self.lr == 1.0:
            state.steps += 1
            return aggregate.astype(np.float32)
        return super().__call__(x, aggregate, state)

    def step(self, d: np.ndarray, state: ServerState) -> np.ndarray:
        return self.lr * d


class Momentum(ServerStep):
    """FedAvgM: m <- beta m + d, x <- x + eta m."""

    def step(self, d: np.ndarray, state: ServerState) -> np.ndarray:
        beta = self.config.momentum
        state.m = d.copy() if state.m is None else beta * state.m + d
        return self.lr * state.m


class Adaptive(ServerStep):
    """FedAdagrad, FedAdam and FedYogi: they differ in the second moment only."""

    default_lr = _ADAPTIVE_LR

    def step(self, d: np.ndarray, state: ServerState) -> np.ndarray:
        c = self.config
        m = np.zeros_like(d) if state.m is None else state.m
        v = np.full_like(d, c.tau**2) if state.v is None else state.v
        state.m = c.beta1 * m + (1.0 - c.beta1) * d
        state.v = self.second_moment(v, d * d)
        return self.lr * state.m / (np.sqrt(state.v) + c.tau)

    @abstractmethod
    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray: ...


class Adagrad(Adaptive):
    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return v + d2


class Adam(Adaptive):
    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        b2 = self.config.beta2
        return b2 * v + (1.0 - b2) * d2


class Yogi(Adaptive):
    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.config.beta2) * d2 * np.sign(v - d2)


_STEPS: dict[ServerOptimizer, type[ServerStep]] = {
    ServerOptimizer.none: Plain,
    ServerOptimizer.momentum: Momentum,
    ServerOptimizer.adagrad: Adagrad,
    ServerOptimizer.adam: Adam,
    ServerOptimizer.yogi: Yogi,
}


def build_server_step(config: ServerConfig) -> ServerStep:
    """The configured server optimizer."""
    return _STEPS[ServerOptimizer(config.optimizer)](config)
