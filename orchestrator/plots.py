"""Figures logged with runs: learning curves and partition label histograms, and the
registry of a run's figures that trainers name."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from trainers.base import TrainResult  # noqa: E402
from trainers.graph.data import GraphData  # noqa: E402
from trainers.registry import Registry  # noqa: E402

__all__ = [
    "RUN_PLOTS",
    "client_curves",
    "condensation_curves",
    "convergence",
    "gradient_curves",
    "graph_partition",
    "label_heatmap",
    "label_histogram",
    "learning_curve",
    "network",
    "privacy_curve",
    "ssl_losses",
    "synthetic_grid",
    "trigger_image",
]


def learning_curve(history: Sequence[dict[str, float]], title: str = "") -> Figure:
    """Test accuracy, and train and test loss, per round."""
    rounds = [h["round"] + 1 for h in history]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_acc.plot(rounds, [h["test_accuracy"] for h in history], marker=".", color="tab:blue")
    ax_acc.set_xlabel("round")
    ax_acc.set_ylabel("test accuracy")
    ax_acc.grid(alpha=0.3)
    ax_loss.plot(rounds, [h["train_loss"] for h in history], marker=".", label="train")
    ax_loss.plot(rounds, [h["test_loss"] for h in history], marker=".", label="test")
    ax_loss.set_xlabel("round")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def privacy_curve(history: Sequence[dict[str, float]], title: str = "") -> Figure:
    """Vertical FL per epoch: the main task's utility, and each label attack's success."""
    rounds = [h["round"] + 1 for h in history]
    fig, (ax_u, ax_a) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_u.plot(rounds, [h["utility"] for h in history], marker=".", label="utility")
    ax_u.plot(rounds, [h["test_accuracy"] for h in history], marker=".", label="test accuracy")
    ax_u.set_xlabel("epoch")
    ax_u.legend()
    ax_u.grid(alpha=0.3)
    attacks = [k for k in history[0] if k.endswith("_auc") and k != "test_auc"]
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "v")]  # lines at 1.0 overlap
    for i, key in enumerate(attacks):
        line, marker = styles[i % len(styles)]
        ax_a.plot(
            rounds,
            [h.get(key, np.nan) for h in history],
            ls=line,
            marker=marker,
            ms=4,
            label=key[:-4],
        )
    ax_a.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax_a.set_xlabel("epoch")
    ax_a.set_ylabel("attack AUC (mean over batches)")
    ax_a.set_ylim(0, 1.02)
    if attacks:
        ax_a.legend()
    ax_a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def ssl_losses(history: Sequence[dict[str, float]], title: str = "") -> Figure:
    """Self-supervised pretraining: the cross-party and local SimSiam losses per epoch."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for key, label in (("ssl_cross_loss", "cross-party"), ("ssl_local_loss", "local")):
        rows = [h for h in history if key in h]
        if rows:
            ax.plot([h["round"] + 1 for h in rows], [h[key] for h in rows], marker=".", label=label)
    ax.set_xlabel("pretraining epoch")
    ax.set_ylabel("SimSiam loss (-cosine)")
    ax.legend()
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def label_histogram(stats: pa.Table, max_parties: int = 200) -> Figure:
    """Stacked bars: samples of each label held by each party (the first ``max_parties``)."""
    labels = [c for c in stats.column_names if c.startswith("label_")]
    n = min(stats.num_rows, max_parties)
    parties = stats.column("party").to_numpy()[:n]
    fig, ax = plt.subplots(figsize=(min(2 + 0.12 * n, 18), 4))
    bottom = np.zeros(n)
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    for i, col in enumerate(labels):
        counts = stats.column(col).to_numpy()[:n]
        ax.bar(
            np.arange(n), counts, bottom=bottom, width=0.9, color=cmap(i % cmap.N), label=col[6:]
        )
        bottom += counts
    ax.set_xlabel("party" if n == stats.num_rows else f"party (first {n} of {stats.num_rows})")
    ax.set_ylabel("samples")
    if n <= 40:
        ax.set_xticks(np.arange(n), [str(p) for p in parties])
    ax.legend(
        title="label",
        ncol=2 if len(labels) > 10 else 1,
        fontsize=7,
        bbox_to_anchor=(1.01, 1),
        loc="upper left",
    )
    ax.set_title("label histogram per party")
    fig.tight_layout()
    return fig


def label_heatmap(stats: pa.Table, classes: Sequence[str] = (), max_parties: int = 100) -> Figure:
    """Labels by parties: each cell the share of the party's samples with that label (the
    first ``max_parties``), with each party's size above it."""
    labels = [c for c in stats.column_names if c.startswith("label_")]
    n = min(stats.num_rows, max_parties)
    counts = np.stack([stats.column(c).to_numpy()[:n] for c in labels]).astype(np.float64)
    sizes = counts.sum(axis=0)
    share = counts / np.maximum(sizes, 1)
    fig, (top, ax) = plt.subplots(
        2,
        1,
        figsize=(min(3 + 0.22 * n, 20), 1.6 + 0.28 * len(labels)),
        sharex=True,
        gridspec_kw={"height_ratios": [1, max(2, len(labels) // 3)]},
    )
    top.bar(np.arange(n), sizes, width=0.9, color="0.4")
    top.set_ylabel("samples")
    image = ax.imshow(share, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="none")
    names = list(classes) if len(classes) == len(labels) else [c[6:] for c in labels]
    if len(labels) <= 40:
        ax.set_yticks(np.arange(len(labels)), names, fontsize=7)
    ax.set_ylabel("label")
    parties = stats.column("party").to_numpy()[:n]
    ax.set_xlabel("party" if n == stats.num_rows else f"party (first {n} of {stats.num_rows})")
    if n <= 40:
        ax.set_xticks(np.arange(n), [str(p) for p in parties], fontsize=7)
    fig.colorbar(image, ax=[top, ax], label="share of the party's samples", fraction=0.03)
    top.set_title("labels by party")
    return fig


def convergence(history: Sequence[dict[str, float]], title: str = "") -> Figure:
    """Suboptimality and consensus error (log scale) against epochs and communication rounds."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    epochs = [h["epochs"] for h in history]
    comm = [h["comm_rounds"] for h in history]
    sub = [max(h["suboptimality"], 1e-16) for h in history]
    axes[0].semilogy(epochs, sub)
    axes[0].set_xlabel("epochs (gradient evaluations / samples)")
    axes[1].semilogy(comm, sub)
    axes[1].set_xlabel("communication rounds")
    for ax in axes[:2]:
        ax.set_ylabel("F(x_bar) - F*")
    axes[2].semilogy(epochs, [max(h["consensus_error"], 1e-30) for h in history])
    axes[2].set_xlabel("epochs")
    axes[2].set_ylabel("consensus error")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def network(edges: Sequence[dict[str, int]], n: int, title: str = "") -> Figure:
    """The communication graph, nodes on a circle."""
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    xy = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    fig, ax = plt.subplots(figsize=(5, 5))
    for e in edges:
        ax.plot(*xy[[e["u"], e["v"]]].T, color="tab:gray", lw=0.6, alpha=0.7)
    ax.scatter(xy[:, 0], xy[:, 1], s=max(6, 2000 / n), color="tab:blue", zorder=3)
    if n <= 40:
        for i, (x, y) in enumerate(xy):
            ax.annotate(str(i), (x, y), fontsize=6, ha="center", va="center", color="white")
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.tight_layout()
    return fig


def client_curves(history: Sequence[dict[str, float]], title: str = "") -> Figure:
    """Graph FL per round: each client's local F1 (thin), their mean (thick) and the global
    test accuracy (dashed); the training loss."""
    rounds = [h["round"] + 1 for h in history]
    clients = sorted(
        {k for h in history for k in h if k.startswith("client_f1/")},
        key=lambda k: int(k.split("/")[1]),
    )
    fig, (ax_f1, ax_loss) = plt.subplots(1, 2, figsize=(11, 3.8))
    cmap = plt.get_cmap("tab10" if len(clients) <= 10 else "tab20")
    for i, key in enumerate(clients):
        shown = key.split("/")[1] if len(clients) <= 20 else None
        ax_f1.plot(
            rounds,
            [h.get(key, np.nan) for h in history],
            lw=0.8,
            alpha=0.6,
            color=cmap(i % cmap.N),
            label=f"client {shown}" if shown else None,
        )
    ax_f1.plot(
        rounds, [h["local_f1"] for h in history], lw=2.2, color="black", label="mean local F1"
    )
    ax_f1.plot(
        rounds,
        [h["test_accuracy"] for h in history],
        lw=1.6,
        ls="--",
        color="tab:red",
        label="global test accuracy",
    )
    ax_f1.set_xlabel("round")
    ax_f1.set_ylabel("micro-F1 / accuracy")
    ax_f1.grid(alpha=0.3)
    ax_f1.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax_loss.plot(rounds, [h["train_loss"] for h in history], marker=".")
    ax_loss.set_xlabel("round")
    ax_loss.set_ylabel("training cross-entropy")
    ax_loss.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def graph_partition(data: GraphData, max_nodes: int = 20_000) -> Figure | None:
    """The training graph split into clients: each client's nodes scattered in a disc of its
    own colour on a circle (grey, in the middle: nodes held by several clients), edges inside
    a client grey and between clients red; None above ``max_nodes`` nodes."""
    from matplotlib.collections import LineCollection

    pool = data.pool.graph
    if len(pool) > max_nodes:
        return None
    owner = np.full(len(pool), -1)
    for cid, c in data.clients.items():
        at = np.searchsorted(pool.nodes, c.graph.nodes)
        owner[at] = np.where(owner[at] == -1, cid, -2)
    k = len(data.clients)
    angle = 2 * np.pi * np.maximum(owner, 0) / k
    rng = np.random.default_rng(0)
    r, t = 0.38 * np.sqrt(rng.random(len(pool))), 2 * np.pi * rng.random(len(pool))
    pos = np.stack([np.cos(angle) + r * np.cos(t), np.sin(angle) + r * np.sin(t)], axis=1)
    pos[owner < 0] = np.stack([0.3 * r * np.cos(t), 0.3 * r * np.sin(t)], axis=1)[owner < 0]
    rows = np.repeat(np.arange(len(pool)), pool.degrees())
    keep = rows < pool.indices
    src, dst = rows[keep], pool.indices[keep]
    cross = (owner[src] != owner[dst]) | (owner[src] < 0)
    fig, ax = plt.subplots(figsize=(7, 7))
    for mask, color, width in ((~cross, "#999999", 0.25), (cross, "tab:red", 0.25)):
        if mask.any():
            segs = np.stack([pos[src[mask]], pos[dst[mask]]], axis=1)
            ax.add_collection(LineCollection(list(segs), colors=color, linewidths=width, alpha=0.5))
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20")
    colors = [cmap(o % cmap.N) if o >= 0 else (0.4, 0.4, 0.4, 1.0) for o in owner]
    ax.scatter(pos[:, 0], pos[:, 1], s=max(1, 1500 / len(pool)), c=colors, zorder=3)
    for cid in range(k):
        a = 2 * np.pi * cid / k
        ax.annotate(f"client {cid}", (1.5 * np.cos(a), 1.5 * np.sin(a)), ha="center", fontsize=8)
    ax.set_title(
        f"{k} clients, {len(pool)} nodes; red: {int(cross.sum())} of {len(src)} edges "
        f"between clients (lost to all but GFL: {data.edges_lost})",
        fontsize=9,
    )
    ax.set_xlim(-1.8, 1.8)
    ax.set_ylim(-1.8, 1.8)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- a run's figures, by name

RunPlot = Callable[["TrainResult", str], "Figure | None"]
RUN_PLOTS: Registry[tuple[str, RunPlot]] = Registry("plot")
"""The figures a trainer can ask for (:meth:`trainers.Trainer.plots`): name -> (artifact
path, drawing of a run's result under a title; None when there is nothing to draw)."""


def _rows_with(result: TrainResult, key: str) -> list[dict[str, float]]:
    return [h for h in result.history if key in h]


def _learning(result: TrainResult, title: str) -> Figure | None:
    rows = _rows_with(result, "test_accuracy")  # fine-tuning rows only, after pretraining
    return learning_curve(rows, title) if rows else None


def _privacy(result: TrainResult, title: str) -> Figure | None:
    rows = _rows_with(result, "utility")
    return privacy_curve(rows, title) if rows else None


def _convergence(result: TrainResult, title: str) -> Figure | None:
    rows = _rows_with(result, "suboptimality")
    return convergence(rows, title) if rows else None


def _pretraining(result: TrainResult, title: str) -> Figure | None:
    return ssl_losses(result.history, title) if _rows_with(result, "ssl_cross_loss") else None


def _network(result: TrainResult, title: str) -> Figure | None:
    if "edges" not in result.tables:
        return None
    net = result.tables.get("network", [{}])[0]
    name = f"{net.get('graph', '')}, {net.get('nodes', '')} nodes, gap {net.get('spectral_gap', 0):.4f}"
    return network(result.tables["edges"], int(net.get("nodes", 0)), name)


def gradient_curves(history: Sequence[dict[str, float]], title: str = "") -> Figure:
    """GFL per round: the whole objective and its gradient norm at the global model (log
    scale), beside the clients' training loss on their stale messages."""
    rounds = [h["round"] + 1 for h in history]
    fig, (ax_obj, ax_norm) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_obj.semilogy(rounds, [h["objective"] for h in history], label="whole objective")
    ax_obj.semilogy(rounds, [h["train_loss"] for h in history], label="clients' training loss")
    ax_obj.set_ylabel("cross-entropy")
    ax_obj.legend()
    ax_norm.semilogy(rounds, [h["grad_norm"] for h in history], color="tab:red")
    ax_norm.set_ylabel("gradient norm of the whole objective")
    for ax in (ax_obj, ax_norm):
        ax.set_xlabel("round")
        ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _gradient(result: TrainResult, title: str) -> Figure | None:
    rows = _rows_with(result, "grad_norm")
    return gradient_curves(rows, title) if rows else None


def _client_f1(result: TrainResult, title: str) -> Figure | None:
    rows = _rows_with(result, "local_f1")
    return client_curves(rows, title) if rows else None


def condensation_curves(history: Sequence[dict[str, float]], title: str = "") -> Figure:
    """Dataset distillation per report: the clean accuracy (and ASR) of a network trained on
    the synthetic set so far, and the matching loss."""
    its = [h["iteration"] for h in history]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_acc.plot(its, [h["test_accuracy"] for h in history], marker=".", label="clean accuracy")
    if any("asr" in h for h in history):
        ax_acc.plot(its, [h.get("asr", np.nan) for h in history], marker=".", label="ASR")
    last = history[-1]
    for key, style in (("random_accuracy", ":"), ("full_accuracy", "--")):
        if key in last:
            ax_acc.axhline(last[key], color="grey", ls=style, label=key.replace("_", " "))
    ax_acc.set_xlabel("iteration")
    ax_acc.set_ylabel("test")
    ax_acc.legend(fontsize=8)
    ax_acc.grid(alpha=0.3)
    ax_loss.plot(its, [h["match_loss"] for h in history], marker=".")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("matching loss")
    ax_loss.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def synthetic_grid(
    rows: Sequence[dict], trigger: dict | None = None, title: str = "", per_class: int = 10
) -> Figure | None:
    """The synthetic images, one row per class (at most ``per_class`` each; of the first
    party when several uploaded), and the trigger beside them."""
    if not rows:
        return None
    first = min(r["party"] for r in rows)
    mine = [r for r in rows if r["party"] == first and r["index"] < per_class]
    labels = sorted({r["label"] for r in mine})
    cols = max(r["index"] for r in mine) + 1 + (trigger is not None)
    side = int(round(len(mine[0]["pixels"]) ** 0.5))
    fig, axes = plt.subplots(
        len(labels), cols, figsize=(0.8 * cols + 0.6, 0.8 * len(labels) + 0.6), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for r in mine:
        ax = axes[labels.index(r["label"]), r["index"]]
        ax.imshow(np.asarray(r["pixels"]).reshape(side, side), cmap="gray")
    for i, label in enumerate(labels):
        axes[i, 0].set_title(f"{label}", fontsize=7, loc="left")
    if trigger is not None:
        ax = axes[0, cols - 1]
        ax.imshow(np.asarray(trigger["pixels"]).reshape(side, side), cmap="gray")
        ax.set_title(f"trigger -> {trigger['target']}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def trigger_image(trigger: dict, title: str = "") -> Figure:
    """A backdoor's final trigger alone, on a black image (the data's lowest values)."""
    pixels = np.asarray(trigger["pixels"])
    side = int(round(len(pixels) ** 0.5))
    fig, ax = plt.subplots(figsize=(3.2, 3.4))
    shown = ax.imshow(pixels.reshape(side, side), cmap="gray")
    fig.colorbar(shown, ax=ax, fraction=0.046)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title + ': ' if title else ''}trigger -> class {trigger['target']}", fontsize=8)
    fig.tight_layout()
    return fig


def _trigger(result: TrainResult, title: str) -> Figure | None:
    rows = result.tables.get("trigger")
    return trigger_image(rows[0], title) if rows else None


def _condensation(result: TrainResult, title: str) -> Figure | None:
    rows = _rows_with(result, "match_loss")
    return condensation_curves(rows, title) if rows else None


def _synthetic(result: TrainResult, title: str) -> Figure | None:
    trigger = result.tables.get("trigger")
    return synthetic_grid(
        result.tables.get("synthetic", []), trigger[0] if trigger else None, title
    )


RUN_PLOTS.register("learning_curve")(("learning_curve.png", _learning))
RUN_PLOTS.register("condensation")(("condensation.png", _condensation))
RUN_PLOTS.register("synthetic")(("synthetic.png", _synthetic))
RUN_PLOTS.register("trigger")(("trigger.png", _trigger))
RUN_PLOTS.register("client_f1")(("client_f1.png", _client_f1))
RUN_PLOTS.register("gradient")(("gradient.png", _gradient))
RUN_PLOTS.register("privacy_curve")(("privacy_curve.png", _privacy))
RUN_PLOTS.register("convergence")(("convergence.png", _convergence))
RUN_PLOTS.register("pretraining")(("pretraining.png", _pretraining))
RUN_PLOTS.register("network")(("network.png", _network))
