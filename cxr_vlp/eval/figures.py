"""Evaluation figures as pure functions: arrays / tensors in, one PNG file out.

Every ``*_figure`` / ``*_grid`` function draws on a standalone :class:`matplotlib.figure.Figure` with an Agg
canvas (no pyplot, no global state, safe in headless workers), saves a PNG to ``path`` (parent folders are
created), releases the figure and returns ``Path(path)``. Invalid inputs raise ``ValueError`` naming the
argument. :func:`is_valid_png` checks that a written file is a real, non-blank PNG.

Images are ``[.., 1, H, W]`` (or ``[.., H, W]``) float tensors or arrays, normalised with any mean/std; each
one is min-max scaled to ``[0, 1]`` for display.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = [
    "DEFAULT_DOMINANT_LABELS",
    "gradcam_figure",
    "is_valid_png",
    "retrieval_grid",
    "roc_figure",
    "text_to_image_grid",
    "tsne_figure",
    "uncertainty_figure",
]

HIT_COLOR = "#2ca02c"
MISS_COLOR = "#7f7f7f"
FRAME_COLOR = "#c7c7c7"
DPI = 100
TEXT_CHARS = 200  # retrieved reports are truncated to this many characters
TOPK = 5

# t-SNE colouring: the first positive of these (in this order) names a study's colour
DEFAULT_DOMINANT_LABELS: tuple[str, ...] = (
    "Pleural Effusion",
    "Cardiomegaly",
    "Edema",
    "Pneumothorax",
    "Consolidation",
    "Atelectasis",
    "Lung Opacity",
    "Support Devices",
)
NO_FINDING_NAME = "No Finding"
TSNE_EXACT_MAX = 500  # t-SNE uses the exact gradient up to this many points, Barnes–Hut above
OTHER_NAME = "other"


# ---------------------------------------------------------------------------------------------- helpers
def _new_figure(width: float, height: float, constrained: bool = False) -> Figure:
    """A figure detached from pyplot, with its own Agg canvas (``constrained``: constrained layout)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` as PNG to ``path`` (creating parent folders), release it, return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, format="png", dpi=DPI, facecolor="white")
    finally:
        fig.clear()
    return out


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Tensor / array / nested list to a float64 numpy array (tensors are detached and moved to the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric array-like, got {type(x).__name__}") from err


def _display(image: np.ndarray) -> np.ndarray:
    """``[1, H, W]`` or ``[H, W]`` image to ``[H, W]`` min-max scaled to ``[0, 1]`` (non-finite → min)."""
    img = image[0] if image.ndim == 3 else image
    img = np.array(img, dtype=np.float64)
    finite = np.isfinite(img)
    if not finite.any():
        return np.zeros_like(img)
    lo, hi = img[finite].min(), img[finite].max()
    img[~finite] = lo
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def _images(x: Any, name: str, lead: int) -> np.ndarray:
    """Validate a stack of single-channel images with ``lead`` leading dims; returns ``[..., H, W]``."""
    arr = _to_numpy(x, name)
    if arr.ndim == lead + 3:
        if arr.shape[lead] != 1:
            raise ValueError(f"{name} must have one channel, got shape {arr.shape}")
        arr = arr[(slice(None),) * lead + (0,)]
    if arr.ndim != lead + 2 or min(arr.shape[lead:]) < 1:
        want = ", ".join(["N"] * lead)
        raise ValueError(f"{name} must be [{want}, 1, H, W] (or [{want}, H, W]), got shape {arr.shape}")
    return arr


def _wrap(text: str, width: int, max_chars: int | None = TEXT_CHARS) -> str:
    """Collapse whitespace, truncate to ``max_chars`` (with an ellipsis) and wrap to ``width`` columns."""
    flat = " ".join(str(text).split())
    if max_chars is not None and len(flat) > max_chars:
        flat = flat[: max_chars - 1].rstrip() + "…"
    return textwrap.fill(flat, width=width) if flat else "(empty)"


def _check_hits(hit_index: Sequence[int | None], n_rows: int, k: int) -> list[int | None]:
    if len(hit_index) != n_rows:
        raise ValueError(f"hit_index must have one entry per query ({n_rows}), got {len(hit_index)}")
    out: list[int | None] = []
    for h in hit_index:
        if h is None:
            out.append(None)
            continue
        if isinstance(h, (bool, np.bool_)) or int(h) != h or not 0 <= int(h) < k:
            raise ValueError(f"hit_index entries must be None or an integer in [0, {k}), got {h!r}")
        out.append(int(h))
    return out


def _frame(ax, color: str, width: float) -> None:
    """Draw a rectangle around an axis (in axes coordinates)."""
    ax.add_patch(
        Rectangle(
            (0.01, 0.01),
            0.98,
            0.98,
            transform=ax.transAxes,
            fill=False,
            edgecolor=color,
            linewidth=width,
            clip_on=False,
        )
    )


# ---------------------------------------------------------------------------------------------- retrieval
def retrieval_grid(
    path: str | Path,
    query_images: Any,
    topk_texts: Sequence[Sequence[str]],
    true_texts: Sequence[str],
    hit_index: Sequence[int | None],
    title: str = "Image → text retrieval (top 5)",
) -> Path:
    """Image→text retrieval examples: one row per query image, its top-k reports to the right.

    Args:
        query_images: ``[Q, 1, H, W]`` query images.
        topk_texts: ``Q`` lists of retrieved reports, best first (usually 5 each).
        true_texts: the ``Q`` true (paired) reports.
        hit_index: per query, the position of the true report among ``topk_texts[q]`` or ``None``.
            A hit is framed in green and labelled "✓ true report"; a miss shows the true report below
            the row in grey.
    """
    imgs = _images(query_images, "query_images", lead=1)
    q = imgs.shape[0]
    if q == 0:
        raise ValueError("retrieval_grid needs at least one query")
    if len(topk_texts) != q or len(true_texts) != q:
        raise ValueError(
            f"topk_texts ({len(topk_texts)}) and true_texts ({len(true_texts)}) must have one "
            f"entry per query image ({q})"
        )
    k = max(len(t) for t in topk_texts)
    if k == 0:
        raise ValueError("topk_texts must hold at least one retrieved report per query")
    hits = _check_hits(hit_index, q, k)
    for row, (texts, h) in enumerate(zip(topk_texts, hits)):
        if h is not None and h >= len(texts):
            raise ValueError(f"hit_index[{row}]={h} but only {len(texts)} reports were retrieved for it")

    fig = _new_figure(2.6 + 2.9 * k, 3.2 * q + 0.6)
    ratios = [r for _ in range(q) for r in (1.0, 0.22)]
    gs = fig.add_gridspec(
        2 * q,
        k + 1,
        width_ratios=[1.0] + [1.12] * k,
        height_ratios=ratios,
        left=0.01,
        right=0.99,
        top=1 - 0.5 / (3.2 * q + 0.6),
        bottom=0.01,
        wspace=0.06,
        hspace=0.12,
    )
    fig.suptitle(title, fontsize=13)
    for row in range(q):
        ax = fig.add_subplot(gs[2 * row : 2 * row + 2, 0])
        ax.imshow(_display(imgs[row]), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"query {row + 1}", fontsize=10)
        ax.set_axis_off()
        for j in range(k):
            cell = fig.add_subplot(gs[2 * row, j + 1])
            cell.set_axis_off()
            if j >= len(topk_texts[row]):
                continue
            hit = hits[row] == j
            _frame(cell, HIT_COLOR if hit else FRAME_COLOR, 3.0 if hit else 1.0)
            head = f"#{j + 1}" + ("  ✓ true report" if hit else "")
            cell.text(
                0.05,
                0.95,
                head,
                transform=cell.transAxes,
                va="top",
                ha="left",
                fontsize=9,
                fontweight="bold",
                color=HIT_COLOR if hit else "black",
            )
            cell.text(
                0.05, 0.83, _wrap(topk_texts[row][j], 36), transform=cell.transAxes, va="top", ha="left", fontsize=8.5
            )
        strip = fig.add_subplot(gs[2 * row + 1, 1:])
        strip.set_axis_off()
        if hits[row] is None:
            strip.text(
                0.01,
                0.9,
                "true report (not in top %d): %s" % (k, _wrap(true_texts[row], 170, 300)),
                transform=strip.transAxes,
                va="top",
                ha="left",
                fontsize=8,
                color=MISS_COLOR,
                style="italic",
            )
    return _save(fig, path)


def text_to_image_grid(
    path: str | Path,
    query_texts: Sequence[str],
    topk_images: Any,
    hit_index: Sequence[int | None],
    title: str = "Text → image retrieval (top 5)",
) -> Path:
    """Text→image retrieval examples: one row per query report, its top-k images to the right.

    Args:
        query_texts: ``Q`` query reports.
        topk_images: ``[Q, K, 1, H, W]`` retrieved images, best first.
        hit_index: per query, the position of the true image among the ``K`` or ``None``; the true image
            is framed in green.
    """
    imgs = _images(topk_images, "topk_images", lead=2)
    q, k = imgs.shape[:2]
    if q == 0 or k == 0:
        raise ValueError(f"topk_images must hold at least one query and one image, got shape {imgs.shape}")
    if len(query_texts) != q:
        raise ValueError(f"query_texts ({len(query_texts)}) must have one entry per row of topk_images ({q})")
    hits = _check_hits(hit_index, q, k)

    fig = _new_figure(3.4 + 2.3 * k, 2.6 * q + 0.6)
    gs = fig.add_gridspec(
        q,
        k + 1,
        width_ratios=[1.5] + [1.0] * k,
        left=0.01,
        right=0.99,
        top=1 - 0.55 / (2.6 * q + 0.6),
        bottom=0.01,
        wspace=0.08,
        hspace=0.25,
    )
    fig.suptitle(title, fontsize=13)
    for row in range(q):
        cell = fig.add_subplot(gs[row, 0])
        cell.set_axis_off()
        _frame(cell, FRAME_COLOR, 1.0)
        cell.text(0.04, 0.96, f"query {row + 1}", transform=cell.transAxes, va="top", fontsize=9, fontweight="bold")
        cell.text(0.04, 0.86, _wrap(query_texts[row], 42, 300), transform=cell.transAxes, va="top", fontsize=7.5)
        if hits[row] is None:
            cell.text(
                0.04,
                0.04,
                f"true image not in top {k}",
                transform=cell.transAxes,
                va="bottom",
                fontsize=8,
                color=MISS_COLOR,
                style="italic",
            )
        for j in range(k):
            ax = fig.add_subplot(gs[row, j + 1])
            ax.imshow(_display(imgs[row, j]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            hit = hits[row] == j
            ax.set_title(
                f"#{j + 1}" + ("  ✓ true image" if hit else ""),
                fontsize=9,
                color=HIT_COLOR if hit else "black",
                fontweight="bold" if hit else "normal",
            )
            for spine in ax.spines.values():
                spine.set_edgecolor(HIT_COLOR if hit else FRAME_COLOR)
                spine.set_linewidth(4.0 if hit else 0.8)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- t-SNE
def dominant_labels(labels: np.ndarray, label_names: Sequence[str], priority: Sequence[str] | None = None) -> list[str]:
    """One display label per row of a ``[N, C]`` label matrix (NaN = unknown).

    The first label of ``priority`` that is positive (``> 0.5``), else ``"No Finding"`` when that is
    positive, else ``"other"``. ``priority=None`` uses :data:`DEFAULT_DOMINANT_LABELS` (those present
    in ``label_names``); explicitly given names must all be in ``label_names``.
    """
    names = list(label_names)
    if priority is None:
        priority = [n for n in DEFAULT_DOMINANT_LABELS if n in names]
    else:
        missing = [n for n in priority if n not in names]
        if missing:
            raise ValueError(f"dominant labels {missing} are not among label_names {names}")
    pos = np.nan_to_num(labels, nan=0.0) > 0.5
    cols = [names.index(n) for n in priority]
    nf = names.index(NO_FINDING_NAME) if NO_FINDING_NAME in names else None
    out = []
    for row in pos:
        name = next((n for n, c in zip(priority, cols) if row[c]), None)
        if name is None:
            name = NO_FINDING_NAME if nf is not None and row[nf] else OTHER_NAME
        out.append(name)
    return out


def tsne_figure(
    path: str | Path,
    embeddings: Any,
    labels: Any,
    label_names: Sequence[str],
    seed: int = 0,
    max_points: int = 2000,
    dominant: Sequence[str] | None = None,
    title: str = "t-SNE of image embeddings",
    method: str | None = None,
    max_iter: int | None = None,
) -> Path:
    """2-D t-SNE of ``[N, D]`` embeddings, points coloured by each study's dominant label.

    At most ``max_points`` rows (a seeded random subset) are embedded with sklearn's TSNE
    (``init="pca"``, perplexity ``min(30, (n − 1) / 3)``). Colours: see :func:`dominant_labels`
    (``dominant`` is its ``priority``). ``method=None`` uses the exact gradient up to
    :data:`TSNE_EXACT_MAX` points (stable run time on small sets) and Barnes–Hut above; ``max_iter=None``
    keeps sklearn's default number of iterations.
    """
    from sklearn.manifold import TSNE

    emb = _to_numpy(embeddings, "embeddings")
    lab = _to_numpy(labels, "labels")
    if emb.ndim != 2 or emb.shape[1] < 2:
        raise ValueError(f"embeddings must be [N, D] with D >= 2, got shape {emb.shape}")
    if lab.ndim != 2 or lab.shape[0] != emb.shape[0] or lab.shape[1] != len(label_names):
        raise ValueError(f"labels must be [N={emb.shape[0]}, C={len(label_names)}], got shape {lab.shape}")
    if not np.isfinite(emb).all():
        raise ValueError("embeddings contain NaN or infinite values")
    if max_points < 4:
        raise ValueError(f"max_points must be >= 4, got {max_points}")
    n_all = emb.shape[0]
    if n_all < 4:
        raise ValueError(f"t-SNE needs at least 4 embeddings, got {n_all}")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n_all, size=max_points, replace=False)) if n_all > max_points else np.arange(n_all)
    emb, lab = emb[rows], lab[rows]
    n = emb.shape[0]
    perplexity = min(30.0, (n - 1) / 3.0)
    if method is None:
        method = "exact" if n <= TSNE_EXACT_MAX else "barnes_hut"
    extra = {} if max_iter is None else {"max_iter": int(max_iter)}
    xy = TSNE(
        n_components=2,
        init="pca",
        perplexity=perplexity,
        random_state=seed,
        learning_rate="auto",
        method=method,
        **extra,
    ).fit_transform(emb.astype(np.float32))
    groups = np.array(dominant_labels(lab, label_names, dominant))

    order = [g for g in dict.fromkeys([*(dominant or DEFAULT_DOMINANT_LABELS), NO_FINDING_NAME]) if g in groups]
    order += [OTHER_NAME] if OTHER_NAME in groups else []
    palette = [f"C{i}" for i in range(10)]
    fig = _new_figure(8.0, 6.5)
    ax = fig.add_subplot(1, 1, 1)
    colour_i = 0
    for g in order:
        mask = groups == g
        if g == OTHER_NAME:
            colour = "#bdbdbd"
        elif g == NO_FINDING_NAME:
            colour = "black"
        else:
            colour = palette[colour_i % len(palette)]
            colour_i += 1
        ax.scatter(
            xy[mask, 0],
            xy[mask, 1],
            s=10 if n > 500 else 22,
            c=colour,
            alpha=0.75,
            linewidths=0,
            label=f"{g} ({int(mask.sum())})",
            zorder=1 if g == OTHER_NAME else 2,
        )
    ax.set_title(f"{title} (n={n}, perplexity {perplexity:.1f})", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, markerscale=1.5)
    fig.subplots_adjust(left=0.03, right=0.72, top=0.93, bottom=0.03)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- ROC
def _curve_fields(curve: Any, i: int) -> tuple[str, np.ndarray, np.ndarray, float, tuple[float, float] | None]:
    """``(name, fpr, tpr, auc, point)`` from a 5-tuple or an object with ``label, fpr, tpr, auroc,
    op_fpr, op_tpr`` (:class:`cxr_vlp.metrics.classification.RocCurve`)."""
    if hasattr(curve, "fpr") and hasattr(curve, "tpr"):
        name = getattr(curve, "label", getattr(curve, "name", f"curve {i}"))
        auc = float(getattr(curve, "auroc", getattr(curve, "auc", math.nan)))
        ox, oy = getattr(curve, "op_fpr", None), getattr(curve, "op_tpr", None)
        point = (float(ox), float(oy)) if ox is not None and oy is not None else None
        fpr, tpr = curve.fpr, curve.tpr
    else:
        try:
            name, fpr, tpr, auc, point = curve
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"curves[{i}] must be (name, fpr, tpr, auc, youden_point | None) or a RocCurve, "
                f"got {type(curve).__name__}"
            ) from err
    fpr_a, tpr_a = _to_numpy(fpr, f"curves[{i}].fpr").ravel(), _to_numpy(tpr, f"curves[{i}].tpr").ravel()
    if fpr_a.shape != tpr_a.shape:
        raise ValueError(f"curves[{i}] ({name}): fpr {fpr_a.shape} and tpr {tpr_a.shape} differ in length")
    if point is not None:
        point = (float(point[0]), float(point[1]))
        if not all(math.isfinite(v) for v in point):
            point = None
    return str(name), fpr_a, tpr_a, float(auc), point


def roc_figure(path: str | Path, curves: Sequence[Any], title: str = "ROC curves (test)", ncols: int = 4) -> Path:
    """ROC curves, one small panel per label: AUC in the panel title, the Youden operating point marked,
    the chance diagonal dashed.

    ``curves``: ``(name, fpr, tpr, auc, youden_point | None)`` tuples (``youden_point = (fpr, tpr)``) or
    :class:`~cxr_vlp.metrics.classification.RocCurve` objects (operating point ``(op_fpr, op_tpr)``).
    """
    items = [_curve_fields(c, i) for i, c in enumerate(curves)]
    if not items:
        raise ValueError("roc_figure needs at least one curve")
    cols = max(1, min(int(ncols), len(items)))
    rows = math.ceil(len(items) / cols)
    fig = _new_figure(3.0 * cols, 3.1 * rows + 0.5, constrained=True)
    fig.suptitle(title, fontsize=12)
    for i, (name, fpr, tpr, auc, point) in enumerate(items):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot([0, 1], [0, 1], linestyle="--", color=MISS_COLOR, linewidth=0.8)
        if fpr.size:
            ax.plot(fpr, tpr, color="C0", linewidth=1.6)
        else:
            ax.text(0.5, 0.5, "undefined", ha="center", va="center", color=MISS_COLOR, transform=ax.transAxes)
        if point is not None:
            ax.plot(
                [point[0]],
                [point[1]],
                marker="o",
                markersize=6,
                color="C3",
                linestyle="none",
                label=f"operating point ({point[0]:.2f}, {point[1]:.2f})",
            )
            ax.legend(loc="lower right", fontsize=6.5, frameon=False)
        auc_text = f"AUC {auc:.3f}" if math.isfinite(auc) else "AUC n/a"
        ax.set_title(f"{name}\n{auc_text}", fontsize=9)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.tick_params(labelsize=7)
        if i % cols == 0:
            ax.set_ylabel("TPR", fontsize=8)
        if i >= len(items) - cols:
            ax.set_xlabel("FPR", fontsize=8)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- uncertainty
def uncertainty_figure(
    path: str | Path,
    bin_mean_uncertainty: Any,
    bin_recall: Any,
    coverage: Any,
    risk: Any,
    aurc: float,
    k: int = 1,
    title: str = "Uncertainty calibration (image → text)",
) -> Path:
    """Two panels: R@k per uncertainty bin (bars, least uncertain first) and the risk–coverage curve.

    ``bin_mean_uncertainty`` / ``bin_recall``: ``[n_bins]`` (deciles: 10); ``coverage`` / ``risk``: ``[N]``;
    ``aurc``: the area under the risk–coverage curve, shown in the legend.
    """
    mu = _to_numpy(bin_mean_uncertainty, "bin_mean_uncertainty").ravel()
    rec = _to_numpy(bin_recall, "bin_recall").ravel()
    cov = _to_numpy(coverage, "coverage").ravel()
    rsk = _to_numpy(risk, "risk").ravel()
    if mu.shape != rec.shape or mu.size == 0:
        raise ValueError(f"bin_mean_uncertainty {mu.shape} and bin_recall {rec.shape} must be equal, non-empty")
    if cov.shape != rsk.shape or cov.size == 0:
        raise ValueError(f"coverage {cov.shape} and risk {rsk.shape} must be equal, non-empty")
    fig = _new_figure(11.0, 4.2, constrained=True)
    fig.suptitle(title, fontsize=12)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)

    x = np.arange(1, mu.size + 1)
    left.bar(x, np.nan_to_num(rec, nan=0.0), color="C0", alpha=0.85)
    for xi, r in zip(x, rec):
        if not math.isfinite(r):
            left.text(xi, 0.01, "n/a", ha="center", va="bottom", fontsize=7, color=MISS_COLOR)
    left.set_xticks(x)
    left.set_xticklabels([f"{b}\n{u:.2g}" for b, u in zip(x, mu)], fontsize=7)
    word = "decile" if mu.size == 10 else "bin"
    left.set_xlabel(f"uncertainty {word} (1 = most certain) / mean uncertainty", fontsize=8)
    left.set_ylabel(f"R@{k}", fontsize=9)
    left.set_ylim(0, max(1.0, float(np.nanmax(rec)) * 1.05 if np.isfinite(rec).any() else 1.0))
    left.set_title(f"R@{k} per uncertainty {word}", fontsize=10)
    left.grid(axis="y", alpha=0.3)

    right.plot(cov, rsk, color="C3", linewidth=1.6, label=f"risk (1 − R@{k}), AURC = {float(aurc):.4f}")
    right.axhline(
        float(rsk[-1]),
        color=MISS_COLOR,
        linestyle="--",
        linewidth=0.9,
        label=f"full-coverage risk {float(rsk[-1]):.3f}",
    )
    right.set_xlim(0, 1.0)
    right.set_ylim(-0.02, 1.02)
    right.set_xlabel("coverage (most certain queries kept)", fontsize=8)
    right.set_ylabel("risk", fontsize=9)
    right.set_title("Risk–coverage", fontsize=10)
    right.legend(loc="lower right", fontsize=8)
    right.grid(alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- Grad-CAM
def gradcam_figure(
    path: str | Path,
    images: Any,
    maps: Any,
    titles: Sequence[str] | None = None,
    alpha: float = 0.45,
    ncols: int = 4,
    title: str = "Grad-CAM",
) -> Path:
    """Each image (grayscale) with its ``[H, W]`` heatmap in ``[0, 1]`` overlaid (jet, ``alpha``).

    ``images``: ``[B, 1, H, W]``; ``maps``: ``[B, H, W]`` (e.g. from
    :func:`cxr_vlp.eval.gradcam.gradcam_maps`); ``titles``: ``B`` panel titles.
    """
    imgs = _images(images, "images", lead=1)
    hm = _to_numpy(maps, "maps")
    if hm.ndim != 3 or hm.shape != imgs.shape:
        raise ValueError(f"maps must be [B, H, W] matching images {imgs.shape}, got shape {hm.shape}")
    b = imgs.shape[0]
    if b == 0:
        raise ValueError("gradcam_figure needs at least one image")
    if titles is None:
        titles = [f"image {i + 1}" for i in range(b)]
    if len(titles) != b:
        raise ValueError(f"titles ({len(titles)}) must have one entry per image ({b})")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    cols = max(1, min(int(ncols), b))
    rows = math.ceil(b / cols)
    fig = _new_figure(3.2 * cols + 0.8, 3.3 * rows + 0.4, constrained=True)
    fig.suptitle(title, fontsize=12)
    last, axes = None, []
    for i in range(b):
        ax = fig.add_subplot(rows, cols, i + 1)
        axes.append(ax)
        ax.imshow(_display(imgs[i]), cmap="gray", vmin=0, vmax=1)
        last = ax.imshow(np.clip(np.nan_to_num(hm[i]), 0, 1), cmap="jet", vmin=0, vmax=1, alpha=alpha)
        ax.set_title(textwrap.shorten(str(titles[i]), 60, placeholder="…"), fontsize=8)
        ax.set_axis_off()
    bar = fig.colorbar(last, ax=axes, shrink=0.8, fraction=0.04)
    bar.solids.set_alpha(1.0)
    bar.ax.tick_params(labelsize=7)
    bar.set_label("Grad-CAM", fontsize=8)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- validation
def is_valid_png(path: str | Path, min_unique_colors: int = 8) -> bool:
    """True when ``path`` is a readable PNG larger than 64×64 with at least ``min_unique_colors`` distinct
    pixel values (i.e. non-trivial content: a blank or single-colour image fails). Never raises."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                return False
            width, height = img.size
            if width <= 64 or height <= 64:
                return False
            pixels = np.asarray(img.convert("RGBA"), dtype=np.uint8).reshape(-1, 4)
    except (OSError, ValueError, UnidentifiedImageError):
        return False
    packed = pixels.view(np.uint32).ravel()
    return int(np.unique(packed).size) >= int(min_unique_colors)
