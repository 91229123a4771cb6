"""The aggregation arithmetic, party sampling, and the executor contract in-process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clusters import InProcessExecutor, PartyContext, assign_parties
from trainers import FedAvg, ModelConfig, TrainerConfig
from trainers.local import LocalTraining, PartyUpdate, RoundPayload, _SGDStep
from trainers.models import ModelSpec, build_model, get_flat, set_flat


def update(w, n, loss=0.0):
    return PartyUpdate(np.asarray(w, dtype=np.float64) * n, n, loss * n, 1)


def test_weighted_average_by_hand():
    # parties with 1, 3 and 4 samples upload [1, 0], [0, 2], [1, 1]:
    # (1*[1,0] + 3*[0,2] + 4*[1,1]) / 8 = [5/8, 10/8]
    merged = PartyUpdate.merge(
        PartyUpdate.merge(update([1, 0], 1, 2.0), update([0, 2], 3, 1.0)), update([1, 1], 4, 0.5)
    )
    np.testing.assert_allclose(merged.average(), [0.625, 1.25])
    assert merged.n_samples == 8 and merged.n_parties == 3
    assert merged.loss_sum / merged.n_samples == pytest.approx((2 + 3 + 2) / 8)


def test_merge_does_not_depend_on_grouping():
    rng = np.random.default_rng(0)
    ups = [
        update(rng.normal(size=1000).astype(np.float32), int(rng.integers(1, 600)))
        for _ in range(40)
    ]

    def fold(items):
        acc = items[0]
        for u in items[1:]:
            acc = PartyUpdate.merge(acc, u)
        return acc

    flat = fold(ups)
    grouped = PartyUpdate.merge(fold(ups[::2]), fold(ups[1::2]))
    np.testing.assert_array_equal(flat.average(), grouped.average())


def test_merge_leaves_inputs_untouched():
    a, b = update([1.0], 1), update([2.0], 1)
    PartyUpdate.merge(a, b)
    assert a.weighted_sum[0] == 1.0


def test_sampling_fraction_count_and_seed():
    ids = list(range(100))
    trainer = FedAvg(TrainerConfig(fraction=0.1), ModelConfig())
    picked = trainer.sample(ids, 0, seed=1)
    assert len(picked) == 10 and picked == sorted(set(picked))
    assert picked == trainer.sample(ids, 0, seed=1)
    assert picked != trainer.sample(ids, 1, seed=1)
    assert (
        len(
            FedAvg(TrainerConfig(parties_per_round=7, fraction=0.5), ModelConfig()).sample(
                ids, 0, 1
            )
        )
        == 7
    )
    assert FedAvg(TrainerConfig(fraction=1.0), ModelConfig()).sample(ids, 0, 1) == ids


def test_assign_parties_balances_sizes():
    sizes = {0: 100, 1: 90, 2: 10, 3: 10, 4: 5, 5: 85}
    owner = assign_parties(sizes, 2)
    loads = [sum(s for p, s in sizes.items() if owner[p] == w) for w in range(2)]
    # largest first onto the lighter worker: 100->0, 90->1, 85->1, 10->0, 10->0, 5->0
    assert loads == [125, 175]
    assert max(loads) <= 4 / 3 * sum(sizes.values()) / 2  # LPT's bound
    assert assign_parties(sizes, 2) == owner


def _square(ctx: PartyContext, payload):
    ctx.state["calls"] = ctx.state.get("calls", 0) + 1
    return np.array([ctx.data * payload, ctx.state["calls"]], dtype=np.float64)


def test_inprocess_executor_contract():
    ex = InProcessExecutor()
    ex.load({i: float(i) for i in range(5)})
    assert [r[0] for r in ex.map(_square, [4, 1], 2.0)] == [8.0, 2.0]
    total = ex.map(_square, [0, 1, 2, 3, 4], 1.0, reduce=np.add)
    assert total[0] == 10.0
    assert ex.map(_square, [1], 1.0)[0][1] == 3  # party 1's state persisted across calls
    with pytest.raises(KeyError):
        ex.map(_square, [99], 1.0)
    ex.load({0: 5.0})  # loading replaces the hosted parties
    with pytest.raises(KeyError):
        ex.map(_square, [1], 1.0)


def test_fast_sgd_step_matches_torch_optim():
    spec = ModelSpec("mlp", 6, 3, hidden=(5,))
    ours, ref = build_model(spec, 0), build_model(spec, 0)
    params = list(ours.parameters())
    cfg = LocalTraining(spec, seed=0, lr=0.1, momentum=0.9, weight_decay=0.01)
    step = _SGDStep(params, cfg)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, y = torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)
        loss = torch.nn.functional.cross_entropy(ours(x), y)
        step(list(torch.autograd.grad(loss, params)))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        opt.step()
    np.testing.assert_allclose(get_flat(ours), get_flat(ref), rtol=1e-6, atol=1e-7)


def test_set_flat_copies():
    model = build_model(ModelSpec("logreg", 3, 2), 0)
    flat = np.zeros(8, dtype=np.float32)
    set_flat(model, flat)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert flat.sum() == 0.0  # training must never write into the caller's array
    with pytest.raises(ValueError):
        set_flat(model, np.zeros(5, dtype=np.float32))


def test_local_training_is_deterministic_per_party_and_round():
    spec = ModelSpec("mlp", 4, 2, hidden=(3,))
    rng = np.random.default_rng(0)
    from trainers.base import PartyData

    data = PartyData(rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 2, 40))
    task = LocalTraining(spec, seed=3, batch_size=8)
    w = get_flat(build_model(spec, 1))
    run = lambda pid, r: task(PartyContext(pid, data, {}, {}), RoundPayload(r, w)).weighted_sum  # noqa: E731
    np.testing.assert_array_equal(run(0, 0), run(0, 0))
    assert not np.array_equal(run(0, 0), run(0, 1))
    assert not np.array_equal(run(0, 0), run(1, 0))
