"""The paper's three InterCLR studies at small scale: one table of kNN top-1 per variant.

Every variant shares one base config and budget; only the named switches change.

    python benchmarks/interclr_ablations.py --preset cpu            # embedded mini data, ConvNet
    python benchmarks/interclr_ablations.py --preset gpu --data npz:PATH/cifar10.npz --epochs 100

`--seeds 0 1 2` repeats each variant (kNN on 1,000 test images moves by about 1.5 points
between seeds, so one seed cannot separate close variants). Each run lives in
OUT/<variant>/seed<S>/ and resumes from its checkpoint, so rerunning skips finished
runs and continues cut-off ones (a run that fails is recorded and the others go on). The
table goes to OUT/ablations.md and OUT/ablations.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from interlab.config import build_config, field_types, load_named_config
from interlab.lab.quickstart import CPU_SETTINGS, MOCO_CPU
from interlab.methods.interclr import InterCLROptions
from interlab.methods.moco import MoCoOptions
from interlab.train import read_metrics, train

VARIANTS: dict[str, dict[str, Any]] = {
    "moco_v2": {"method": "moco"},
    "interclr_default": {},
    "offline_labels": {"online_labels": False},
    "hard_negatives": {"neg_sampling": "hard"},
    "random_negatives": {"neg_sampling": "random"},
    "margin_0": {"margin": 0.0},
    "margin_+0.5": {"margin": 0.5},
}


def base_keys(preset: str, data: str | None, epochs: int | None) -> dict[str, Any]:
    if preset == "gpu":
        keys = load_named_config("interclr_cifar10")
        keys["data"] = data or keys["data"]
    else:
        keys = {"method": "interclr", "data": data or "cifar10-mini", "device": "cpu"}
        keys.update(CPU_SETTINGS)
        keys.update(MOCO_CPU)
        # The inter branch at the release's t=0.2 (MOCO_CPU's intra t is 0.2 too), the CIFAR
        # sizes of interclr_cifar10 (10 clusters per class, a pool of 30% of N); offline
        # labels re-clustered 4 times in the 20 CPU epochs.
        keys.update(inter_temperature=0.2, num_clusters=100, pool_share=0.3, recluster_every=5)
    if epochs is not None:
        keys["epochs"] = epochs
    keys["eval_every"] = max(1, keys["epochs"] // 10)
    return keys


def variant_keys(base: dict[str, Any], changes: dict[str, Any], out: Path) -> dict[str, Any]:
    keys = dict(base, **changes, out=str(out))
    if keys["method"] == "moco":  # the baseline: the same config without the inter branch
        inter_only = set(field_types(InterCLROptions)) - set(field_types(MoCoOptions))
        keys = {k: v for k, v in keys.items() if k not in inter_only}
    return keys


def run_variant(name: str, keys: dict[str, Any]) -> dict[str, Any]:
    """Train one variant (or resume / skip it) and summarise its run folder."""
    start = time.perf_counter()
    result = train(build_config(keys))
    history = read_metrics(keys["out"])
    final = result.final
    return {
        "variant": name,
        "seed": keys["seed"],
        "knn_top1": final.get("knn_top1"),
        "nmi": final.get("nmi"),
        "false_negative_rate": final.get("false_negative_rate"),
        "epochs": final.get("epoch"),
        "train_minutes": sum(r.get("epoch_time_s", 0) for r in history) / 60,
        "call_seconds": time.perf_counter() - start,
        "knn_curve": {r["epoch"]: r["knn_top1"] for r in history if "knn_top1" in r},
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per variant: means over its finished seeds, failures listed."""
    lines = []
    for name in dict.fromkeys(row["variant"] for row in rows):
        runs = [r for r in rows if r["variant"] == name and "error" not in r]
        failed = [r for r in rows if r["variant"] == name and "error" in r]
        line: dict[str, Any] = {"variant": name, "runs": runs, "failed": failed}
        for key in ("knn_top1", "nmi", "false_negative_rate", "train_minutes"):
            values = [r[key] for r in runs if r.get(key) is not None]
            line[key] = sum(values) / len(values) if values else None
        line["epochs"] = runs[0]["epochs"] if runs else None
        lines.append(line)
    return lines


def table(rows: list[dict[str, Any]], device: str) -> str:
    lines = [
        f"device: {device}; {time.strftime('%Y-%m-%d')}",
        "",
        "| variant | kNN top-1 (mean) | per seed | NMI | false-neg rate | epochs | train min/run |",
        "|---|---|---|---|---|---|---|",
    ]

    def fmt(value: Any, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for line in summarise(rows):
        seeds = ", ".join(fmt(r["knn_top1"]) for r in line["runs"])
        seeds += "".join(f"; seed {r['seed']} failed: {r['error']}" for r in line["failed"])
        lines.append(
            f"| {line['variant']} | {fmt(line['knn_top1'])} | {seeds} | {fmt(line['nmi'])} | "
            f"{fmt(line['false_negative_rate'])} | {line['epochs']} | "
            f"{fmt(line['train_minutes'], 1)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--data", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/scratch/interclr_ablations")
    parser.add_argument("--only", nargs="*", choices=tuple(VARIANTS), default=None)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = base_keys(args.preset, args.data, args.epochs)
    device = (
        torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    )
    rows = []
    for seed in args.seeds:
        for name in args.only or VARIANTS:
            changes = {**VARIANTS[name], "seed": seed}
            try:
                rows.append(
                    run_variant(name, variant_keys(base, changes, out / name / f"seed{seed}"))
                )
            except Exception as error:  # one failed run must not stop the others
                traceback.print_exc()
                rows.append(
                    {"variant": name, "seed": seed, "error": f"{type(error).__name__}: {error}"}
                )
            # Persist after every run, so a cut-off sweep still has a table.
            (out / "ablations.json").write_text(
                json.dumps({"device": device, "rows": rows}, indent=1)
            )
            (out / "ablations.md").write_text(table(rows, device))
    print(table(rows, device))


if __name__ == "__main__":
    main()
