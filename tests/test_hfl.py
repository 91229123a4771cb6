"""The horizontal toolkit beyond FedAvg, each rule against an independent NumPy reading of its
paper, through the trainer: the server optimizers (FedAvgM, FedAdagrad, FedAdam, FedYogi),
FedNova, and DP-FedAvg with its accountant; their state across a resume; bad settings."""

from __future__ import annotations

import numpy as np
import pytest

import orchestrator
import trainers.fedavg
from orchestrator.errors import ConfigError

from .conftest import tiny

ADAPTIVE = ("adagrad", "adam", "yogi")


def reference(kind: str, x0: np.ndarray, aggregates: list[np.ndarray], **hp: float) -> list:
    """The global weights after each round, by Reddi et al. 2021, Algorithm 2 (and Hsu et al.
    2019 for momentum), written out term by term in float64; like the trainer, the global
    weights are kept in float32 between rounds."""
    eta = hp.get("lr", 1.0 if kind in ("none", "momentum") else 0.01)
    b1, b2, tau, beta = hp.get("beta1", 0.9), hp.get("beta2", 0.99), hp.get("tau", 1e-3), 0.9
    x = x0.astype(np.float32)
    m = np.zeros(x.shape)
    v = np.full(x.shape, tau * tau)
    out = []
    for a in aggregates:
        delta = a.astype(np.float64) - x.astype(np.float64)
        if kind == "none":
            new = x.astype(np.float64) + eta * delta
        elif kind == "momentum":
            m = beta * m + delta
            new = x.astype(np.float64) + eta * m
        else:
            m = b1 * m + (1 - b1) * delta
            if kind == "adagrad":
                v = v + delta**2
            elif kind == "adam":
                v = b2 * v + (1 - b2) * delta**2
            else:
                v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
            new = x.astype(np.float64) + eta * m / (np.sqrt(v) + tau)
        x = new.astype(np.float32)
        out.append(x)
    return out


def _refused(overrides: list[str], key: str, words: str = "") -> None:
    """The overrides end in one config error naming ``trainer.<key>``, saying ``words``."""
    with pytest.raises(ConfigError) as err:
        orchestrator.run(tiny(), overrides)
    assert f"trainer.{key}" in str(err.value) and words in str(err.value), str(err.value)


@pytest.fixture()
def recorded(monkeypatch):
    """Every server step of the runs in the test: (x_t, aggregate, x_{t+1})."""
    steps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    build = trainers.fedavg.build_server_step

    def recording(config):
        step = build(config)

        def call(x, aggregate, state):
            new = step(x, aggregate, state)
            steps.append((x.copy(), np.array(aggregate, dtype=np.float64), new.copy()))
            return new

        return call

    monkeypatch.setattr(trainers.fedavg, "build_server_step", recording)
    return steps


@pytest.mark.parametrize(
    ("kind", "hp", "aggregator"),
    [
        ("none", {"lr": 0.7}, "mean"),
        ("momentum", {"lr": 0.5}, "mean"),
        ("adagrad", {"lr": 0.03, "tau": 0.01}, "mean"),
        ("adam", {"lr": 0.02}, "mean"),
        ("yogi", {"lr": 0.02, "beta1": 0.5, "beta2": 0.9}, "mean"),
        ("adam", {"lr": 0.02}, "median"),  # a robust aggregate feeds the server optimizer
        ("yogi", {"lr": 0.02}, "uniform_mean"),  # the paper's uniform average
    ],
)
def test_each_server_rule_is_the_papers(recorded, kind, hp, aggregator):
    cfg = tiny(
        trainer__rounds=5,
        trainer__aggregator={"name": aggregator},
        trainer__server={"optimizer": kind, **hp},
    )
    result = orchestrator.run(cfg)
    assert len(recorded) == 5
    x0 = recorded[0][0]
    expected = reference(kind, x0, [a for _, a, _ in recorded], **hp)
    for t, ((x, _, new), want) in enumerate(zip(recorded, expected)):
        if t:  # each round starts from the weights the step before made
            assert np.array_equal(x, recorded[t - 1][2])
        np.testing.assert_allclose(new, want, rtol=0, atol=1e-10)
    # and the weights moved: a step that did nothing would pass the comparison above too
    assert not np.array_equal(recorded[-1][2], x0)
    assert np.isfinite([h["test_loss"] for h in result.history]).all()


def test_fedavg_is_the_aggregate_itself_to_the_last_bit(recorded):
    orchestrator.run(tiny(trainer__rounds=3))
    assert all(np.array_equal(new, a.astype(np.float32)) for _, a, new in recorded)


def test_the_rules_differ_from_each_other_and_from_fedavg():
    finals = {
        kind: orchestrator.run(tiny(trainer__server={"optimizer": kind})).history[-1]["test_loss"]
        for kind in ("none", "momentum", *ADAPTIVE)
    }
    assert len(set(finals.values())) == len(finals), finals


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.server.optimizer=momentum", "trainer.server.lr=0.5"],
        ["trainer.server.optimizer=adam", "trainer.server.lr=0.02"],
        ["trainer.name=scaffold", "partition.name=dirichlet"],  # the parties' c_i, on their hosts
        [
            "trainer.privacy.mode=central",
            "trainer.privacy.quantile=0.5",
            "trainer.privacy.noise=0.1",
        ],
    ],
)
def test_the_state_survives_a_resume(workdir, overrides):
    """Rounds 3-6 after a resume from round 2's checkpoint equal those of an unbroken run: the
    server's moments, SCAFFOLD's variates and the adaptive clip norm were in the checkpoint
    (a reset would change every later round)."""
    overrides = [*overrides, "trainer.rounds=6", "partition.num_parties=20"]
    whole = orchestrator.run(tiny(), overrides)
    ckpt = workdir / "ckpt"
    held = [*overrides, "runtime.checkpoint_every=1", f"runtime.checkpoint_dir={ckpt}"]
    calls: list[int] = []

    def stop(step, metrics):
        calls.append(step)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        orchestrator.run(tiny(), held, progress=stop)
    resumed = orchestrator.run(tiny(), held, resume=str(ckpt))
    assert resumed.resumed_from == 2
    keys = ("test_loss", "test_accuracy", "train_loss")
    assert [[h[k] for k in keys] for h in resumed.history] == [
        [h[k] for k in keys] for h in whole.history
    ]


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (["trainer.server.optimizer=momentum", "trainer.server.beta2=0.9"], "server.beta2", "adam"),
        (["trainer.server.optimizer=adam", "trainer.server.momentum=0.5"], "server.momentum", "beta1"),
        (["trainer.server.optimizer=adagrad", "trainer.server.beta2=0.9"], "server.beta2", "squares"),
        (["trainer.server.optimizer=adam", "trainer.server.lr=0"], "server.lr", ""),
        (["trainer.server.optimizer=rmsprop"], "server.optimizer", "yogi"),
        (["trainer.name=centralized", "trainer.server.optimizer=adam"], "server", "centralized"),
        (["trainer.name=cmfl", "trainer.server.optimizer=adam"], "server", "fedavg"),
    ],
)  # fmt: skip
def test_settings_that_make_no_sense_are_refused_in_one_line(overrides, key, words):
    _refused(overrides, key, words)


# ------------------------------------------------------------------ differential privacy


def _dp_steps(monkeypatch) -> list:
    """Every DP aggregation of the runs in the test: (uploads, reference, output)."""
    from trainers.privacy import Privacy

    steps: list = []
    original = Privacy.aggregate

    def recording(self, uploads, parties, reference, state, round_):
        out = original(self, uploads, parties, reference, state, round_)
        steps.append((uploads.copy(), reference.copy(), out.copy(), self.expected))
        return out

    monkeypatch.setattr(Privacy, "aggregate", recording)
    return steps


def test_dp_clips_each_update_and_divides_by_the_expected_count(monkeypatch):
    steps = _dp_steps(monkeypatch)
    clip = 0.05
    orchestrator.run(
        tiny(
            partition__num_parties=20,
            trainer__fraction=0.5,
            trainer__rounds=4,
            trainer__privacy={"mode": "central", "clip": clip, "noise": 0.0},
        )
    )
    assert len(steps) == 4
    for uploads, reference, out, expected in steps:
        assert expected == 10.0
        want = reference.astype(np.float64).copy()
        for row in uploads:  # McMahan et al. 2018, written out
            delta = row - reference.astype(np.float64)
            want += delta * min(1.0, clip / np.sqrt((delta**2).sum())) / expected
        np.testing.assert_allclose(out, want, rtol=0, atol=1e-10)
        norms = np.linalg.norm(uploads - reference, axis=1)
        assert (norms > clip).all()  # the clip bit: a check that clipped nothing proves little


@pytest.mark.parametrize("mode", ["central", "local"])
def test_dp_noise_has_the_configured_scale(monkeypatch, mode):
    """The noisy output minus the noiseless one, over every coordinate: N(0, (z C / qN)^2)
    for central noise, the sum of the uploads' noise (sqrt(m) times that) for local."""
    outputs = {}
    for z in (0.0, 2.0):
        steps = _dp_steps(monkeypatch)
        orchestrator.run(
            tiny(
                partition__num_parties=10,
                trainer__fraction=0.5,
                trainer__rounds=1,
                model__hidden=[64],
                trainer__privacy={"mode": mode, "clip": 0.5, "noise": z},
            )
        )
        outputs[z] = steps[0]
    uploads, _, noiseless, expected = outputs[0.0]
    noise = outputs[2.0][2] - noiseless
    scale = 2.0 * 0.5 / expected * (np.sqrt(len(uploads)) if mode == "local" else 1.0)
    assert noise.size > 4000
    assert abs(noise.mean()) < 4 * scale / np.sqrt(noise.size)
    assert noise.std() == pytest.approx(scale, rel=0.05)


def test_the_accountant_agrees_with_the_gaussian_mechanisms_closed_form():
    """Without sampling (q = 1) the RDP of k Gaussian releases is k a / (2 z^2); converted to
    (epsilon, delta) by Balle et al. 2020's bound, minimised over the same orders."""
    from trainers.privacy import _ORDERS, epsilon

    z, k, delta = 1.3, 7, 1e-5
    a = np.array(_ORDERS, dtype=np.float64)
    rdp = k * a / (2 * z * z)
    eps = rdp + np.log1p(-1 / a) - (np.log(delta) + np.log(a)) / (a - 1)
    assert epsilon(1.0, z, k, delta) == pytest.approx(float(np.nanmin(eps)), abs=1e-10)
    # rounds compose by adding their RDP: the same as Opacus's accountant fed the history
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(z, 0.1, k)]
    assert epsilon(0.1, z, k, delta) == pytest.approx(accountant.get_epsilon(delta), rel=1e-12)
    # sampling amplifies: the same rounds at q = 0.1 cost far less; more noise costs less
    assert epsilon(0.1, z, k, delta) < 0.5 * epsilon(1.0, z, k, delta)
    assert epsilon(0.1, 2 * z, k, delta) < epsilon(0.1, z, k, delta)


def test_dp_reports_epsilon_every_round_and_samples_by_poisson():
    result = orchestrator.run(
        tiny(
            partition__num_parties=40,
            trainer__fraction=0.25,
            trainer__rounds=12,
            trainer__privacy={"mode": "central", "clip": 0.5, "noise": 1.0},
        )
    )
    eps = [h["dp_epsilon"] for h in result.history]
    assert all(b > a for a, b in zip(eps, eps[1:]))  # composition: it only grows
    counts = [h["parties"] for h in result.history]
    assert len(set(counts)) > 1  # Poisson: the count varies round to round
    assert abs(np.mean(counts) - 10) < 3 * np.sqrt(10 * 0.75 / 12) + 1


def test_adaptive_clipping_follows_the_quantile():
    """With gamma = 0.5, C settles where about half the updates are clipped."""
    result = orchestrator.run(
        tiny(
            partition__num_parties=40,
            trainer__parties_per_round=20,
            trainer__rounds=25,
            trainer__privacy={
                "mode": "central",
                "clip": 50.0,  # far above every update's norm: every update under it
                "noise": 0.1,
                "quantile": 0.5,
            },
        )
    )
    clips = [h["dp_clip"] for h in result.history]
    assert clips[-1] < 0.2 * clips[0]  # it came down from 50 toward the median norm
    assert clips[-1] > 0


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (["trainer.privacy.mode=central", "trainer.aggregator.name=median"], "aggregator.name", "sensitivity"),
        (["trainer.privacy.mode=local", "trainer.privacy.quantile=0.5"], "privacy.quantile", "central"),
        (["trainer.privacy.mode=central", "trainer.privacy.quantile=0.5", "trainer.privacy.noise=1"], "privacy.quantile", "below"),
        (["trainer.privacy.mode=central", "trainer.privacy.delta=1"], "privacy.delta", ""),
        (["trainer.privacy.noise=2"], "privacy.noise", "mode is none"),
    ],
)  # fmt: skip
def test_dp_settings_that_make_no_sense_are_refused_in_one_line(overrides, key, words):
    _refused(overrides, key, words)


# ------------------------------------------------------------------------------ FedNova


def _nova_steps(monkeypatch) -> list:
    steps: list = []
    original = trainers.fedavg.FedNova.combine

    def recording(self, uploads, counts, updates, state):
        out = original(self, uploads, counts, updates, state)
        x = state.weights.copy()
        steps.append((uploads.copy(), counts.copy(), [u.steps for u in updates], x, out))
        return out

    monkeypatch.setattr(trainers.fedavg.FedNova, "combine", recording)
    return steps


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_fednova_normalises_by_each_partys_local_steps(monkeypatch, momentum):
    steps = _nova_steps(monkeypatch)
    cfg = tiny(
        trainer__name="fednova",
        partition__name="dirichlet",
        trainer__rounds=3,
        trainer__momentum=momentum,
        trainer__fednova={"epochs": [1, 4]},
    )
    orchestrator.run(cfg)
    assert len(steps) == 3
    batch = cfg["trainer"]["batch_size"]
    for uploads, counts, taus, x, out in steps:
        # every party ran its drawn epochs of ceil(n / batch) steps
        per_epoch = np.ceil(counts / batch)
        epochs = np.array(taus) / per_epoch
        assert np.array_equal(epochs, np.round(epochs)) and set(epochs) <= {1, 2, 3, 4}
        # Wang et al. 2020, written out
        if momentum:
            a = np.array(
                [sum((1 - momentum ** (k + 1)) / (1 - momentum) for k in range(t)) for t in taus]
            )
        else:
            a = np.array(taus, dtype=np.float64)
        p = counts / counts.sum()
        x64 = x.astype(np.float64)
        normalised = sum(p[i] * (x64 - uploads[i]) / a[i] for i in range(len(p)))
        want = x64 - float(np.dot(p, a)) * normalised
        np.testing.assert_allclose(out.vector, want, rtol=0, atol=1e-10)
    assert any(len(set(taus)) > 1 for _, _, taus, _, _ in steps)  # the steps did differ
    # and the normalisation mattered: FedAvg's mean of the same uploads is elsewhere
    uploads, counts, _, _, out = steps[-1]
    assert not np.allclose(out.vector, (counts / counts.sum()) @ uploads, atol=1e-6)


def test_fednova_with_equal_steps_is_fedavg():
    same = {"partition__name": "iid", "partition__num_parties": 4, "trainer__batch_size": 1000}
    nova = orchestrator.run(tiny(trainer__name="fednova", **same))
    avg = orchestrator.run(tiny(**same))
    for a, b in zip(nova.history, avg.history):
        assert a["test_loss"] == pytest.approx(b["test_loss"], abs=1e-6)


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (["trainer.name=fednova", "trainer.optimizer=adam"], "optimizer", "SGD"),
        (["trainer.name=fednova", "trainer.aggregator.name=median"], "aggregator.name", "mean"),
        (["trainer.name=fednova", "trainer.privacy.mode=central"], "privacy.mode", "raw updates"),
        (["trainer.name=fednova", "trainer.fednova.epochs=[3,1]"], "fednova.epochs", "low <= high"),
        (["trainer.fednova.epochs=[1,3]"], "fednova", "trainer.name=fednova"),
    ],
)  # fmt: skip
def test_fednova_settings_that_make_no_sense_are_refused(overrides, key, words):
    _refused(overrides, key, words)


# ----------------------------------------------------------------------------- SCAFFOLD


def test_scaffold_option_two_and_the_servers_control_variate(monkeypatch):
    """Each party's control-variate change and the server's c and x, replayed by Karimireddy
    et al. 2020's Algorithm 1 (option II) in NumPy from what the parties uploaded; the
    parties' own c_i must have persisted between rounds for the replay to agree."""
    from trainers.local import LocalTraining

    calls: list = []
    original = LocalTraining.__call__

    def recording(self, ctx, payload):
        update = original(self, ctx, payload)
        calls.append(
            (payload.round, ctx.party_id, payload.weights.copy(), payload.control.copy(), update)
        )
        return update

    monkeypatch.setattr(LocalTraining, "__call__", recording)
    parties, lr = 6, 0.1
    cfg = tiny(trainer__name="scaffold", partition__name="dirichlet", trainer__rounds=4,
               trainer__fraction=0.5, trainer__lr=lr)  # fmt: skip
    result = orchestrator.run(cfg)
    own = {p: np.zeros_like(calls[0][3]) for p in range(parties)}
    c = np.zeros_like(calls[0][3])
    x = calls[0][2].astype(np.float64)
    for r in range(4):
        this = [call for call in calls if call[0] == r]
        assert len(this) == 3
        for _, p, weights, control, update in this:
            np.testing.assert_allclose(control, c, rtol=0, atol=1e-10)
            # the uniform mean of the models before (float32: to its rounding)
            np.testing.assert_allclose(weights, x, rtol=1e-6, atol=1e-9)
            y = update.weighted_sum / update.n_samples
            renewed = own[p] - c + (weights.astype(np.float64) - y) / (update.steps * lr)
            np.testing.assert_allclose(update.control, renewed - own[p], rtol=0, atol=1e-10)
            own[p] = renewed
        c = c + sum(u.control for *_, u in this) / parties
        x = np.mean([u.weighted_sum / u.n_samples for *_, u in this], axis=0).astype(np.float32)
    assert any(np.abs(v).max() > 0 for v in own.values())
    # two model-sized vectors each way for every party asked
    model = calls[0][2].size * 4
    assert result.history[0]["bytes_communicated"] == 2 * (3 + 3) * model


def test_scaffolds_local_step_is_corrected_by_the_control_variates():
    """One party, one full-batch step: y = x - lr (grad f(x) - c_i + c), by autograd here."""
    import torch
    import torch.nn.functional as F

    from clusters import PartyContext
    from trainers.base import PartyData
    from trainers.local import ControlVariate, LocalTraining, RoundPayload
    from trainers.models import ModelSpec, build_model, get_flat, set_flat

    spec = ModelSpec("mlp", 4, 3, hidden=(5,))
    rng = np.random.default_rng(0)
    data = PartyData(rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 3, 8))
    model = build_model(spec, seed=1)
    x = get_flat(model)
    c, ci = rng.normal(size=x.size), rng.normal(size=x.size)
    ctx = PartyContext(party_id=0, data=data, state={})
    ctx.put(ControlVariate(ci))
    task = LocalTraining(spec, seed=0, epochs=1, batch_size=8, lr=0.1)
    update = task(ctx, RoundPayload(0, x, control=c))
    set_flat(model, x)
    loss = F.cross_entropy(model(torch.from_numpy(data.x)), torch.from_numpy(data.y).long())
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])
    want = x.astype(np.float64) - 0.1 * (grad.double().numpy() - ci + c)
    np.testing.assert_allclose(update.weighted_sum / update.n_samples, want, rtol=0, atol=1e-6)
    assert ctx.get(ControlVariate) is not None and update.steps == 1


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["trainer.name=scaffold", "trainer.optimizer=adam"], "optimizer"),
        (["trainer.name=scaffold", "trainer.momentum=0.9"], "momentum"),
        (["trainer.name=scaffold", "trainer.aggregator.name=krum"], "aggregator.name"),
        (["trainer.name=scaffold", "trainer.privacy.mode=central"], "privacy.mode"),
    ],
)
def test_scaffold_settings_that_make_no_sense_are_refused(overrides, key):
    _refused(overrides, key, "scaffold does not use")
