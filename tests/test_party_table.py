"""Parties as slices of one table: made only when sampled, shipped to Ray once, whole."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from clusters import InProcessExecutor, PartyContext, assign_parties
from clusters.base import PartyHost, assign_workers
from orchestrator import run
from orchestrator.config import load_config
from orchestrator.data import PARTITIONERS, Cut, partition_stats, prepare
from trainers.base import FederatedData, PartyData, PartyRows, party_sizes

from .conftest import tiny


def _rows(sizes=(3, 0, 2, 4)) -> tuple[PartyRows, list[np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n = sum(sizes) + 5
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = rng.integers(0, 4, n)
    perm = rng.permutation(n)
    parts, at = [], 0
    for s in sizes:
        parts.append(np.sort(perm[at : at + s]))
        at += s
    return PartyRows.gather(x, y, parts), parts, x, y


def test_party_rows_are_views_of_one_table_in_party_order():
    table, parts, x, y = _rows()
    assert list(table) == [0, 2, 3]  # the empty party 1 holds nothing and is left out
    assert len(table) == 3 and 1 not in table and 2 in table and "2" not in table
    assert party_sizes(table) == {0: 3, 2: 2, 3: 4}
    for pid in table:
        party = table[pid]
        np.testing.assert_array_equal(party.x, x[parts[pid]])
        np.testing.assert_array_equal(party.y, y[parts[pid]])
        assert np.shares_memory(party.x, table.x) and party.x.flags.c_contiguous
    with pytest.raises(KeyError):
        table[1]
    with pytest.raises(KeyError):
        table[99]
    # the centralized baseline's pool is the table itself, as the concatenation would be
    pooled = FederatedData(table, x[:1], y[:1], 3, 4).pooled()
    as_dict = FederatedData({p: table[p] for p in table}, x[:1], y[:1], 3, 4).pooled()
    np.testing.assert_array_equal(pooled.x, as_dict.x)
    np.testing.assert_array_equal(pooled.y, as_dict.y)
    # pickles whole (what Ray's object store holds)
    again = pickle.loads(pickle.dumps(table))
    np.testing.assert_array_equal(again[3].x, table[3].x)


def test_partition_stats_of_a_table_match_the_per_party_count():
    table, *_ = _rows()
    fast = partition_stats(table, 4)
    slow = partition_stats({p: table[p] for p in table}, 4)
    assert fast.equals(slow)
    assert fast.column("n_samples").to_pylist() == [3, 2, 4]


def test_iid_cut_is_numpys_array_split_with_each_part_sorted():
    y = np.random.default_rng(3).integers(0, 10, 1003)
    cfg = load_config(None, ["partition.num_parties=7"])
    parts = PARTITIONERS.get("iid")(y, cfg.partition, 10, np.random.default_rng(5))
    perm = np.random.default_rng(5).permutation(len(y))
    expected = [np.sort(p) for p in np.array_split(perm, 7)]
    assert isinstance(parts, Cut) and len(parts) == 7
    for got, want in zip(parts, expected):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(parts[-1], expected[-1])
    with pytest.raises(IndexError):
        parts[7]


def _greedy(sizes: dict[int, int], workers: int) -> dict[int, int]:
    """The assignment rule as first written: largest first onto the least-loaded worker."""
    loads, owner = [0] * workers, {}
    for pid in sorted(sizes, key=lambda p: (-sizes[p], p)):
        w = min(range(workers), key=lambda i: (loads[i], i))
        owner[pid] = w
        loads[w] += max(1, sizes[pid])
    return owner


@pytest.mark.parametrize("equal", [True, False])
def test_assignment_matches_the_greedy_rule(equal):
    rng = np.random.default_rng(1)
    ids = rng.choice(10_000, size=500, replace=False)
    sizes = {int(p): 5 if equal else int(rng.integers(0, 40)) for p in ids}
    assert assign_parties(sizes, 3) == _greedy(sizes, 3)
    owner = assign_workers(np.array(list(sizes)), np.array(list(sizes.values())), 3)
    assert dict(zip(sizes, owner.tolist())) == _greedy(sizes, 3)


def _note(ctx: PartyContext, keep: bool):
    if keep:
        ctx.state["seen"] = ctx.state.get("seen", 0) + 1
    return (ctx.party_id, int(ctx.data.x.__array_interface__["data"][0]))


def test_a_host_makes_party_records_only_for_the_parties_that_work():
    table, *_ = _rows((2,) * 50)
    host = PartyHost(max_live=10)
    assert host.load(table) == 50 and host.live == 0
    host.run(_note, [0, 1, 2], True, None)  # stateful: kept
    assert host.live == 3
    host.run(_note, list(range(10, 25)), False, None)  # 18 records, more than 10: stateless dropped
    assert host.live == 18  # ... but only those not in this call: the call's parties stay
    host.run(_note, [30], False, None)
    assert host.live == 4 and set(host.states()) == {0, 1, 2}
    host.run(_note, [0], True, None)
    assert host.states()[0] == {"seen": 2}  # state survives the dropping of the others
    host.restore({5: {"seen": 7}, 999: {"seen": 1}})  # a party not hosted is ignored
    assert host.states() == {5: {"seen": 7}} and host.live == 1
    with pytest.raises(KeyError, match="never loaded"):
        host.run(_note, [999], False, None)


def test_a_host_of_a_share_hosts_only_its_parties():
    table, *_ = _rows((2,) * 10)
    host = PartyHost()
    assert host.load(table, ids=[1, 3, 5]) == 3
    assert host.hosts(3) and not host.hosts(2)
    with pytest.raises(KeyError):
        host.run(_note, [2], False, None)


def test_a_table_run_equals_the_per_party_run():
    """The same federation, loaded as a table and as a dict of per-party copies."""
    from trainers.fedavg import FedAvg

    cfg = load_config(tiny(trainer__rounds=2, trainer__fraction=0.5))
    data = prepare(cfg).data
    assert isinstance(data.parties, PartyRows)
    copied = FederatedData(
        {p: PartyData(d.x.copy(), d.y.copy()) for p, d in data.parties.items()},
        data.x_test,
        data.y_test,
        data.n_features,
        data.n_classes,
    )

    class Quiet:
        def report(self, step, metrics):
            pass

    def fit(d):
        trainer = FedAvg(cfg.trainer, cfg.model)
        return trainer.fit(d, InProcessExecutor(), Quiet(), cfg.seed).history

    strip = lambda h: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in h]  # noqa: E731
    assert strip(fit(data)) == strip(fit(copied))


@pytest.mark.ray
def test_ray_ships_the_table_once_and_parties_read_it_in_place(ray_session):
    from clusters import RayExecutor

    table, *_ = _rows((2,) * 40)
    with RayExecutor(num_workers=2) as ex:
        ex.load(table)
        out = ex.map(_note, list(range(40)), False)
        assert [pid for pid, _ in out] == list(range(40))
        # every party's rows sit where one shared copy of the table puts them, on each actor
        row_bytes = table.x.strides[0]
        for worker_ids in (ex._owner.hosted_by(0), ex._owner.hosted_by(1)):
            addresses = {pid: address for pid, address in out if pid in set(worker_ids.tolist())}
            first = int(worker_ids[0])
            base = addresses[first] - int(table.offsets[table.position(first)]) * row_bytes
            for pid, address in addresses.items():
                assert address == base + int(table.offsets[table.position(pid)]) * row_bytes
            assert len(set(addresses.values())) == len(addresses)  # no two parties share rows


@pytest.mark.ray
def test_after_shipping_the_driver_reads_the_stores_copy(ray_session):
    """The data is in memory once: the driver's own matrix is dropped for the stored one."""
    import gc
    import weakref

    from clusters import RayExecutor

    table, *_ = _rows((3,) * 20)
    before = table.x.copy()
    own = weakref.ref(table.x)
    with RayExecutor(num_workers=2) as ex:
        ex.load(table)
        gc.collect()
        assert own() is None  # the driver's copy is gone
        assert not table.x.flags.writeable  # a view of Ray's object store
        np.testing.assert_array_equal(table.x, before)
        assert [pid for pid, _ in ex.map(_note, list(range(20)), False)] == list(range(20))


@pytest.mark.ray
def test_many_sampled_parties_on_ray_match_in_process(ray_session):
    def cfg(executor: str) -> dict:
        return tiny(
            data={
                "name": "synthetic",
                "n_samples": 6_000,
                "n_features": 8,
                "n_informative": 4,
                "n_classes": 3,
            },
            partition={"name": "iid", "num_parties": 2_000},
            trainer={"name": "fedavg", "rounds": 3, "parties_per_round": 50, "batch_size": 3},
            runtime__executor=executor,
        )

    strip = lambda r: [{k: v for k, v in h.items() if not k.endswith("_s")} for h in r.history]  # noqa: E731
    local, on_ray = run(cfg("local")), run(cfg("ray"))
    assert [h["parties"] for h in on_ray.history] == [50, 50, 50]
    assert strip(local) == strip(on_ray)
