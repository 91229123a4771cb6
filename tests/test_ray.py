"""The Ray executor on a real local Ray: contract, determinism against in-process, scale."""

from __future__ import annotations

import numpy as np
import pytest

from clusters import InProcessExecutor, PartyContext
from orchestrator import run

from .conftest import tiny

pytestmark = pytest.mark.ray


def _tagged(ctx: PartyContext, payload):
    import os

    ctx.state["calls"] = ctx.state.get("calls", 0) + 1
    return {
        "pid": ctx.party_id,
        "value": ctx.data * payload,
        "calls": ctx.state["calls"],
        "os_pid": os.getpid(),
    }


def _sum(ctx: PartyContext, payload):
    return np.array([ctx.data * payload, 1.0])


def test_ray_executor_contract(ray_session):
    from clusters import RayExecutor

    with RayExecutor(num_workers=2) as ex:
        assert ex.num_workers == 2
        ex.load({i: float(i) for i in range(10)}, sizes={i: 1 for i in range(10)})
        out = ex.map(_tagged, [7, 2, 5], 3.0)
        assert [o["pid"] for o in out] == [7, 2, 5]  # results in the order asked
        assert [o["value"] for o in out] == [21.0, 6.0, 15.0]
        assert len({o["os_pid"] for o in ex.map(_tagged, list(range(10)), 1.0)}) == 2  # both actors
        assert ex.map(_tagged, [7], 1.0)[0]["calls"] == 3  # party state persisted on its actor
        total = ex.map(_sum, list(range(10)), 2.0, reduce=np.add)
        np.testing.assert_array_equal(total, [90.0, 10.0])  # pre-aggregated per actor, then here
        assert ex.map(_sum, [], 1.0, reduce=np.add) is None
        with pytest.raises(KeyError):
            ex.map(_sum, [42], 1.0)


def _boom(ctx: PartyContext, payload):
    raise ValueError(f"party {ctx.party_id} sent garbage")


def test_party_errors_reach_the_driver(ray_session):
    from clusters import RayExecutor

    with RayExecutor(num_workers=1) as ex:
        ex.load({0: 1.0})
        with pytest.raises(ValueError, match="party 0 sent garbage"):
            ex.map(_boom, [0], None)


def test_one_call_per_actor_per_round(ray_session, monkeypatch):
    from clusters import RayExecutor

    with RayExecutor(num_workers=2) as ex:
        ex.load({i: float(i) for i in range(50)})
        calls = []
        real = type(ex._hosts[0].run).remote

        def counting(self, *args, **kwargs):
            calls.append(len(args[1]))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(type(ex._hosts[0].run), "remote", counting)
        ex.map(_sum, list(range(50)), 1.0, reduce=np.add)
        assert sorted(calls) == [25, 25]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"trainer__name": "fedprox", "partition__name": "dirichlet", "trainer__fraction": 0.5},
        # the server optimizers' moments, and differential privacy's sampling and noise
        {"trainer__server": {"optimizer": "adam"}, "trainer__aggregator": {"name": "median"}},
        {"trainer__privacy": {"mode": "central", "noise": 0.5}, "trainer__fraction": 0.5},
        {"trainer__name": "scaffold", "partition__name": "dirichlet", "trainer__fraction": 0.5},
        {"trainer__name": "fednova", "trainer__fednova": {"epochs": [1, 3]}},
    ],
)
def test_same_metrics_in_process_and_on_ray(ray_session, overrides):
    strip = lambda r: [{k: v for k, v in h.items() if not k.endswith("_s")} for h in r.history]  # noqa: E731 - timings differ
    local = run(tiny(**overrides))
    on_ray = run(tiny(runtime__executor="ray", **overrides))
    assert strip(local) == strip(on_ray)


def test_thousand_parties_on_ray(ray_session):
    cfg = tiny(
        data={"name": "synthetic", "n_samples": 12_000, "n_features": 20, "n_classes": 4},
        partition={"name": "iid", "num_parties": 1000},
        runtime={"executor": "ray"},
        trainer={
            "name": "fedavg",
            "rounds": 3,
            "fraction": 0.5,
            "batch_size": 4,
            "lr": 0.2,
            "local_epochs": 2,
        },
    )
    result = run(cfg)
    assert [h["parties"] for h in result.history] == [500, 500, 500]
    losses = [h["test_loss"] for h in result.history]
    assert losses == sorted(losses, reverse=True)  # learning, round after round
    assert result.metrics["test_accuracy"] > 0.38  # 4 classes: chance is 0.25


def test_reused_pool_serves_several_runs(ray_session):
    from clusters import RayExecutor

    with RayExecutor(num_workers=2) as pool:
        a = run(tiny(runtime__executor="ray"), executor=pool)
        b = run(tiny(runtime__executor="ray", partition__num_parties=3), executor=pool)
    assert a.history[-1]["parties"] == 6 and b.history[-1]["parties"] == 3
    assert (
        run(tiny(), executor=InProcessExecutor()).metrics["test_accuracy"]
        == a.metrics["test_accuracy"]
    )
