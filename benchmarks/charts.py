"""Matplotlib charts of a benchmark run."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def draw(results: dict, directory: Path, prefix: str) -> list[Path]:
    paths = []
    sections = results["sections"]
    if "ttft" in sections:
        rows = sections["ttft"]["rows"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key, title in ((axes[0], "ttft_s", "TTFT, 2-layer LLM (measured)"),
                               (axes[1], "ttft_32_layers_s", "TTFT, 32 layers (extrapolated)")):  # fmt: skip
            labels = list(rows)
            vision = [rows[k]["vision_s"] for k in labels]
            projector = [rows[k]["projector_s"] for k in labels]
            llm = [rows[k][key] - rows[k]["vision_s"] - rows[k]["projector_s"] for k in labels]
            ax.bar(labels, vision, label="vision")
            ax.bar(labels, projector, bottom=vision, label="projector")
            ax.bar(labels, llm, bottom=[v + p for v, p in zip(vision, projector)], label="LLM prefill")
            ax.set_title(title, fontsize=10)
            ax.set_ylabel("seconds")
            ax.tick_params(axis="x", rotation=60, labelsize=7)
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(_save(fig, directory / f"{prefix}-ttft.png"))
    summary = {k: v for k, v in results.items() if k.endswith("ratio") or k.endswith("_vs_reference")}
    if summary:
        fig, ax = plt.subplots(figsize=(8, 0.4 * len(summary) + 1))
        ax.barh(list(summary), list(summary.values()), color="#4c72b0")
        for i, value in enumerate(summary.values()):
            ax.text(value, i, f" {value:.3g}", va="center", fontsize=8)
        ax.set_title("Ratios measured in one run", fontsize=10)
        ax.tick_params(labelsize=8)
        fig.tight_layout()
        paths.append(_save(fig, directory / f"{prefix}-ratios.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
