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


def draw(p: PlanInfo, path: str, title: str = "") -> None:
    need_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    fig, ax = plt.subplots(figsize=(11, 6))
    cmap = plt.get_cmap("tab20")
    scale = 1 / 1024
    for k, t in enumerate(sorted(p.placements, key=lambda t: (t.first, t.offset))):
        ax.add_patch(Rectangle((t.first, t.offset * scale), t.last - t.first + 1, t.size * scale,
                               facecolor=cmap(k % 20), edgecolor="black", linewidth=0.3, alpha=0.85))
    ax.axvline(p.peak_step + 0.5, color="red", linestyle="--", linewidth=1.2,
               label=f"peak: step {p.peak_step}, {p.work_lower_bound * scale:.1f} KiB live")
    ax.axhline(p.work_size * scale, color="black", linewidth=1, label=f"workspace {p.work_size * scale:.1f} KiB")
    ax.set_xlim(0, max(p.steps, 1))
    ax.set_ylim(0, max(p.work_size * scale * 1.05, 1))
    ax.set_xlabel("execution step")
    ax.set_ylabel("workspace offset (KiB)")
    ax.set_title(title or "workspace plan")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
