"""The results table: rows, text, JSON and a plot."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..fileio import atomic_path, write_text_atomic


LOWER_IS_BETTER = ("perplexity",)


@dataclass
class Row:
    """One model / scheme / calibrator result. For accuracy metrics ``value`` and ``fp32`` are
    fractions and ``drop`` is in percentage points, (fp32 - value) * 100. For perplexity they are
    perplexities and ``drop`` is the increase in percent, (value / fp32 - 1) * 100: either way a
    positive drop is a loss."""

    model: str
    scheme: str
    calibrator: str | None
    metric: str
    value: float
    fp32: float
    samples: int
    size_bytes: int
    extra: dict = field(default_factory=dict)

    @property
    def drop(self) -> float:
        if self.metric in LOWER_IS_BETTER:
            return round((self.value / self.fp32 - 1) * 100, 4)
        return round((self.fp32 - self.value) * 100, 4)

    def formatted(self, value: float) -> str:
        return f"{value:.3f}" if self.metric in LOWER_IS_BETTER else f"{100 * value:.2f}%"

    def to_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        return {**d, "drop": self.drop, **extra}


def format_table(rows: list[Row]) -> str:
    drop = "drop (%)" if rows and rows[0].metric in LOWER_IS_BETTER else "drop (pts)"
    headers = ["model", "scheme", "calibrator", "metric", "value", "fp32", drop, "samples", "size"]
    extra_keys = sorted({k for r in rows for k in r.extra})
    headers[3:3] = extra_keys
    body = []
    for r in rows:
        cells = [r.model, r.scheme, r.calibrator or "-", r.metric, r.formatted(r.value), r.formatted(r.fp32),
                 f"{r.drop:+.2f}", str(r.samples), _human_bytes(r.size_bytes)]
        cells[3:3] = [str(r.extra.get(k, "-")) for k in extra_keys]
        body.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in body]
    return "\n".join(lines)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def write_json(rows: list[Row], path) -> None:
    write_text_atomic(path, json.dumps({"rows": [r.to_dict() for r in rows]}, indent=2) + "\n")


def plot_rows(rows: list[Row], path) -> None:
    """Bar chart of each row's accuracy drop against FP32 and its size, as PNG/SVG/PDF by extension."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.scheme}\n{r.calibrator or ''}".strip()
              + (f"\nQAT {r.extra['qat_epochs']} ep" if r.extra.get("qat_epochs") else "")
              + (f"\n{r.extra['algorithm']} g{r.extra['group_size']}" if "algorithm" in r.extra else "") for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(rows) * 2), 4.5))
    ax1.bar(labels, [r.drop for r in rows], color=["#888" if r.scheme == "fp32" else "#3a7" for r in rows])
    ax1.axhline(0, color="black", linewidth=0.8)
    relative = rows[0].metric in LOWER_IS_BETTER
    ax1.set_ylabel(f"{rows[0].metric} {'increase' if relative else 'drop'} vs FP32 ({'%' if relative else 'points'})")
    ax1.set_title(f"{rows[0].model}: accuracy cost ({rows[0].samples} {'tokens' if relative else 'samples'})")
    unit = 1 << 20 if max(r.size_bytes for r in rows) > 1 << 24 else 1 << 10
    ax2.bar(labels, [r.size_bytes / unit for r in rows], color="#37a")
    ax2.set_ylabel("weights (MiB)" if unit == 1 << 20 else "weights (KiB)")
    ax2.set_title("model size")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=str(path).rsplit(".", 1)[-1].lower(), dpi=120)
    plt.close(fig)


def plot_bitlayer_curve(rows: list[Row], path, *, budget: float | None = None,
                        speedup: dict[int, float] | None = None, speed_label: str = "speed-up") -> None:
    """A bit-serial model's accuracy (or perplexity) against the bitlayers it uses: the global counts as
    a line, the automatic choices as marked points (x = their mean bitlayers, weighted by layer size),
    FP32 and its budget as horizontal lines; with ``speedup`` ({bitlayers: speed-up}, from
    benchmarks/bitserial.py), the speed on a second axis labelled ``speed_label``."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fp32 = next(r for r in rows if r.scheme == "fp32")
    curve = sorted((int(r.extra["bitlayers"]), r.value) for r in rows
                   if r.scheme == "bitserial" and str(r.extra["bitlayers"]).isdigit())
    chosen = [r for r in rows if str(r.extra.get("bitlayers", "")).startswith("auto")]
    relative = fp32.metric in LOWER_IS_BETTER
    scale = 1 if relative else 100
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([k for k, _ in curve], [v * scale for _, v in curve], "o-", color="#3a7", label="bit-serial, k bitlayers")
    for r in chosen:
        ax.plot(r.extra["mean_bitlayers"], r.value * scale, "*", markersize=14, label=f"{r.extra['bitlayers']}")
    ax.axhline(fp32.value * scale, color="#888", linestyle="--", label="FP32")
    if budget is not None:
        limit = fp32.value * (1 + budget / 100) if relative else fp32.value * 100 - budget
        ax.axhline(limit, color="#c55", linestyle=":", label=f"budget ({budget:g}{'%' if relative else ' pts'})")
    if relative:
        ax.set_yscale("log")  # perplexity explodes at 1-2 bitlayers
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("bitlayers used (weight bits)")
    ax.set_ylabel(fp32.metric if relative else f"{fp32.metric} (%)")
    ax.set_title(f"{fp32.model}: {fp32.metric} against bitlayers ({fp32.samples} "
                 f"{'tokens' if relative else 'samples'})")
    if speedup:
        ax2 = ax.twinx()
        ks = sorted(speedup)
        ax2.plot(ks, [speedup[k] for k in ks], "s--", color="#37a")
        ax2.set_ylabel(speed_label, color="#37a")
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=str(path).rsplit(".", 1)[-1].lower(), dpi=120)
    plt.close(fig)
