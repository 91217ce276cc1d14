"""Operators per training step, counted on any device: progress on step speed without a GPU.

On a GPU a step of a CIFAR-sized network is bound by the host as much as by the device: each
operator costs the host microseconds to dispatch and, when it computes, one kernel launch.
This counts, for one training step of each named config and for the bare backbone step
(`throughput.py`'s reference: forward and backward of both views, an optimiser step):

- `dispatched`: operators the host dispatches from Python and autograd (views included);
- `kernels`: operators that compute (leaves of the call tree that are not views or
  metadata), a convolution, batch norm, GEMM or fused multi-tensor (`_foreach_*`) call
  counting once whatever the CPU backend does inside it, as on a GPU.

    python benchmarks/op_counts.py --configs moco_cifar10 interclr_cifar10 [--device cpu] \
        [--record benchmarks/results/op_counts.jsonl --label "what this code is"]
    python benchmarks/op_counts.py --tables   # RESULTS.md's table from the committed records

Prints one JSON line; `--record` also appends it, labelled, to a jsonl file. The counts depend on the method and the network, not on the batch or
(much) the device; the GPU pack times the steps themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections import Counter
from pathlib import Path

import step_time
import throughput
import torch
from torch.profiler import ProfilerActivity, profile

from interlab.train import Trainer

# Operators that never launch a kernel: views, metadata, no-op conversions.
NO_KERNEL = {
    "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::permute", "aten::as_strided",
    "aten::expand", "aten::detach", "aten::detach_", "aten::select", "aten::slice",
    "aten::unsqueeze", "aten::squeeze", "aten::t", "aten::transpose", "aten::alias",
    "aten::to", "aten::lift_fresh", "aten::unbind", "aten::chunk", "aten::split",
    "aten::narrow", "aten::flatten", "aten::contiguous", "aten::empty", "aten::empty_like",
    "aten::empty_strided", "aten::new_empty_strided", "aten::new_empty", "aten::result_type",
    "aten::promote_types", "aten::resolve_conj", "aten::resolve_neg", "aten::is_nonzero",
    "aten::numpy_T", "aten::_unsafe_view", "aten::view_as", "aten::expand_as",
    "aten::unflatten", "aten::item", "aten::_local_scalar_dense", "aten::set_",
    "aten::_has_compatible_shallow_copy_type", "aten::is_same_size", "aten::dim",
}  # fmt: skip
# Operators counted as one kernel whatever they call inside (the CPU backends' internal
# copies and resizes are not what a GPU launches): convolutions, batch norm, GEMMs, fused
# multi-tensor updates.
OPAQUE_PREFIXES = (
    "aten::_foreach_", "aten::_fused_", "aten::convolution", "aten::_convolution",
    "aten::native_batch_norm", "aten::_batch_norm", "aten::cudnn", "aten::mkldnn",
    "aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm",
)  # fmt: skip


def count_operators(step) -> dict[str, object]:
    """Dispatched and kernel operator counts of one call of `step` (after two warm-up calls)."""
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    dispatched = [e for e in events if not _inside(e, ("aten::",))]
    kernels = Counter()
    for event in events:
        if _inside(event, OPAQUE_PREFIXES) or event.name in NO_KERNEL or _scalar_copy(event):
            continue
        if event.name.startswith(OPAQUE_PREFIXES) or not _has_aten_child(event):
            kernels[event.name] += 1
    return {
        "dispatched": len(dispatched),
        "kernels": sum(kernels.values()),
        "top_kernels": dict(kernels.most_common(8)),
    }


def _inside(event, prefixes: tuple[str, ...]) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(prefixes):
            return True
        parent = parent.cpu_parent
    return False


def _scalar_copy(event) -> bool:
    """A Python number wrapped as a 0-dim tensor: host work, no kernel on a GPU."""
    shapes = [shape for shape in event.input_shapes if isinstance(shape, list)]
    return event.name == "aten::copy_" and all(shape == [] for shape in shapes)


def _has_aten_child(event) -> bool:
    return any(child.name.startswith("aten::") for child in event.cpu_children)


def trainer_for(config_name: str, args: argparse.Namespace) -> Trainer:
    trainer = step_time.trainer_for(config_name, args, out="op_counts")
    trainer.model.train()
    return trainer


def training_step(trainer: Trainer):
    indices = torch.arange(trainer.config.batch_size, device=trainer.device)
    return lambda: trainer.train_step(indices)


RECORDS = Path(__file__).resolve().parent / "results" / "op_counts.jsonl"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- op-counts:begin -->", "<!-- op-counts:end -->"


def table(records: list[dict]) -> str:
    """One row per (record, step): dispatched operators and kernels, and their ratio to the
    bare backbone step of the same record."""
    lines = [
        f"Generated by `python benchmarks/op_counts.py --tables` from `{RECORDS.name}`; "
        "do not edit.",
        "",
        "| code | device, torch, date | step | dispatched | kernels | x bare (dispatched / kernels) |",
        "|---|---|---|---|---|---|",
    ]
    for record in records:
        bare = record["bare_step"]
        where = f"{record['device']}, torch {record['torch']}, {record['date']}"
        steps = [k for k, v in record.items() if isinstance(v, dict) and "kernels" in v]
        for step in steps:
            c = record[step]
            ratio = (
                f"{c['dispatched'] / bare['dispatched']:.1f} / {c['kernels'] / bare['kernels']:.1f}"
            )
            lines.append(
                f"| {record.get('label', '-')} | {where} | {step} | {c['dispatched']:,} | "
                f"{c['kernels']:,} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


def write_tables(records_path: Path = RECORDS, results_path: Path = RESULTS) -> None:
    records = [json.loads(line) for line in records_path.read_text().splitlines() if line]
    text = results_path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{results_path} lacks the markers {BEGIN} and {END}")
    before, rest = text.split(BEGIN, 1)
    results_path.write_text(f"{before}{BEGIN}\n{table(records)}{END}{rest.split(END, 1)[1]}")


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["moco_cifar10"])
    parser.add_argument("--data", default="cifar10-mini")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32, help="counts do not depend on it")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--no-cifar-stem", dest="cifar_stem", action="store_false")
    parser.add_argument("--amp", choices=["auto", "on", "off"], default="off")
    parser.add_argument("--record", type=Path, help="append the figures to this jsonl file")
    parser.add_argument("--label", default="", help="what code the record measures")
    parser.add_argument("--tables", action="store_true", help="rewrite RESULTS.md's table")
    args = parser.parse_args(argv)
    if args.tables:
        write_tables()
        return {}
    args.amp = {"auto": None, "on": True, "off": False}[args.amp]
    figures: dict[str, object] = {"device": args.device, "torch": torch.__version__}
    figures.update(backbone=args.backbone, amp=args.amp, date=time.strftime("%Y-%m-%d"))
    for index, name in enumerate(args.configs):
        trainer = trainer_for(name, args)
        if index == 0:
            figures["bare_step"] = count_operators(throughput.bare_step(trainer))
        figures[name] = count_operators(training_step(trainer))
    if args.record is not None:
        figures["label"] = args.label
        with open(args.record, "a") as f:
            f.write(json.dumps(figures) + "\n")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
