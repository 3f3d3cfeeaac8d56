"""`memserve plan`: a model's workspace plan as text, and as a picture.

The picture has execution steps across and workspace offsets up; each work
tensor is one rectangle from the step that writes it to the step that last
reads it, at its planned offset; the step where live bytes peak is marked.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    name: str
    offset: int
    size: int
    first: int
    last: int


@dataclass(frozen=True)
class PlanInfo:
    work_size: int
    weight_size: int
    work_lower_bound: int
    peak_step: int
    steps: int
    placements: tuple[Placement, ...]


def need_matplotlib() -> None:
    """matplotlib is optional (the client's `plot` extra): say so plainly when it is missing."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise SystemExit("memserve: plan --png needs matplotlib, the client's `plot` extra: "
                         "pip install matplotlib (or './client[plot]')")


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def report(p: PlanInfo, top: int = 10) -> str:
    ratio = p.work_size / p.work_lower_bound if p.work_lower_bound else 1.0
    live = [t for t in p.placements if t.first <= p.peak_step <= t.last]
    lines = [
        f"work size:        {p.work_size} bytes ({_bytes(p.work_size)})",
        f"work lower bound: {p.work_lower_bound} bytes ({ratio:.4f} x)",
        f"weight size:      {p.weight_size} bytes ({_bytes(p.weight_size)})",
        f"steps:            {p.steps}; work tensors: {len(p.placements)}",
        f"peak at step {p.peak_step}: {len(live)} tensors live, {sum(t.size for t in live)} bytes",
        "",
        "largest work tensors:",
        f"  {'name':<40} {'bytes':>12} {'offset':>12} {'steps':>11}",
    ]
    for t in sorted(p.placements, key=lambda t: -t.size)[:top]:
        lines.append(f"  {t.name[:40]:<40} {t.size:>12} {t.offset:>12} {t.first:>5}-{t.last:<5}")
    return "\n".join(lines)


def unit_of(n: int) -> tuple[str, int]:
    """The unit an axis of up to n bytes reads best in: 31200 KiB is 30.5 MiB."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= 2 * size:
            return unit, size
    return "B", 1


def labels(p: PlanInfo, min_share: float = 0.04) -> list[tuple[float, float, str]]:
    """(x, y, name) at the centre of each rectangle wide and tall enough to carry its name: at least
    min_share of the steps and of the workspace."""
    out = []
    for t in p.placements:
        wide = (t.last - t.first + 1) >= min_share * max(p.steps, 1)
        tall = t.size >= min_share * max(p.work_size, 1)
        if wide and tall:
            out.append(((t.first + t.last + 1) / 2, t.offset + t.size / 2, t.name))
    return out


def draw(p: PlanInfo, path: str, title: str = "") -> dict:
    """The picture; returns what it drew (unit, labels) for tests and callers."""
    need_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    fig, ax = plt.subplots(figsize=(12, 6))
    cmap = plt.get_cmap("tab20")
    unit, size = unit_of(p.work_size)
    scale = 1 / size
    for k, t in enumerate(sorted(p.placements, key=lambda t: (t.first, t.offset))):
        ax.add_patch(Rectangle((t.first, t.offset * scale), t.last - t.first + 1, t.size * scale,
                               facecolor=cmap(k % 20), edgecolor="black", linewidth=0.3, alpha=0.85))
    names = labels(p)
    for x, y, name in names:
        ax.text(x, y * scale, name if len(name) <= 24 else name[:11] + "..." + name[-10:], ha="center",
                va="center", fontsize=7, clip_on=True)
    ax.axvline(p.peak_step + 0.5, color="red", linestyle="--", linewidth=1.2,
               label=f"peak: step {p.peak_step}, {p.work_lower_bound * scale:.1f} {unit} live")
    ax.axhline(p.work_size * scale, color="black", linewidth=1, label=f"workspace {p.work_size * scale:.1f} {unit}")
    ax.set_xlim(0, max(p.steps, 1))
    ax.set_ylim(0, max(p.work_size * scale * 1.05, 1))
    ax.set_xlabel("execution step")
    ax.set_ylabel(f"workspace offset ({unit})")
    ax.set_title(title or "workspace plan")
    # Beside the chart, never over it.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"unit": unit, "labels": names}
