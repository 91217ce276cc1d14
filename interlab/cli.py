"""Command line: `interlab train | eval | quickstart | sweep | study | report` (or
`python -m interlab`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from interlab.config import build_config, load_named_config, parse_assignment
from interlab.methods import METHOD_NAMES
from interlab.run_lock import RunFolderLocked

# CLI flags and the config keys they set; only flags given on the command line override.
TRAIN_FLAGS = {
    "method": "method",
    "data": "data",
    "data_root": "data_root",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "out": "out",
    "device": "device",
    "seed": "seed",
    "backbone": "backbone",
}


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """`--set a=1 b=2` and `--set a=1 --set b=2` alike (mmcv's `--cfg-options` style).

    The pairs run up to the next flag, so a positional argument would be read as one more
    pair: put it before `--set`, or end the pairs with `--`.
    """
    parser.add_argument(
        "--set",
        dest="assignments",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="any config, augmentation (aug.*) or method key; several pairs after one --set "
        "(--set lr=0.1 queue_size=1024) and repeated --set both work",
    )


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train", help="train a method; resumes from OUT/checkpoint.pt if present"
    )
    p.add_argument("--config", help="named config (interlab/configs/NAME.yaml) or a YAML path")
    p.add_argument("--method", help="one of: " + ", ".join(METHOD_NAMES))
    p.add_argument(
        "--data", help="cifar10-mini | cifar10 | cifar100 | stl10 | npz:PATH | folder:PATH"
    )
    p.add_argument("--data-root", dest="data_root", help="where torchvision datasets live/download")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--backbone", help="resnet18 | resnet50 | convnet")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="run folder (default runs/default)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    add_set_option(p)
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start over even if a checkpoint exists",
    )
    p.add_argument(
        "--stop-after-epochs", type=int, help="stop this call after N more epochs (resumable)"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")


def add_eval_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("eval", help="kNN / linear-probe accuracy of a checkpoint's backbone")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="dataset to evaluate on (default: the one it was trained on)")
    p.add_argument("--data-root", dest="data_root")
    p.add_argument("--knn", action="store_true")
    p.add_argument("--linear", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--k", type=int, help="kNN neighbours (default: the run's knn_k)")
    p.add_argument(
        "--temperature", type=float, help="kNN temperature (default: the run's knn_temperature)"
    )


def add_quickstart_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "quickstart", help="run notebooks/00_quickstart.ipynb headless (papermill)"
    )
    p.add_argument("--method", default="moco")
    p.add_argument("--data", default="cifar10-mini")
    p.add_argument("--epochs", type=int, default=None, help="default: 20 on CPU, 100 on GPU")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/quickstart")


def add_prepare_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "prepare", help="convert an image (or --frames) tree into JPEG shards for shards:DIR"
    )
    p.add_argument("source", help="ImageFolder tree (CLASS/IMAGE, optionally under train/ val/)")
    p.add_argument("--out", required=True, help="the shards folder (resumes what it holds)")
    p.add_argument("--max-side", type=int, default=256, help="cap on the shorter side (px)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images")
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPUs, <= 8)")
    p.add_argument("--frames", action="store_true", help="one folder per video, no classes")
    p.add_argument("--shard-images", type=int, default=1000, help="images per shard file")


def run_prepare(args: argparse.Namespace) -> int:
    from interlab.data.prepare import prepare

    summary = prepare(
        args.source, args.out, max_side=args.max_side, quality=args.quality,
        workers=args.workers, frames=args.frames, shard_images=args.shard_images,
    )  # fmt: skip
    print(summary.line(Path(args.out)))
    return 0


def add_sweep_parsers(commands: argparse._SubParsersAction) -> None:
    from interlab.lab.device_slots import DEFAULT_RUN_GB  # no torch: the parser stays fast

    p = commands.add_parser("sweep", help="run a grid of parameterized notebooks (papermill)")
    p.add_argument("grid", nargs="?", help="grid YAML (see notebooks/sweeps/)")
    p.add_argument("--status", metavar="DIR", help="print each run's state of a sweep folder")
    add_executor_flags(p, DEFAULT_RUN_GB)
    p.add_argument("--out", help="sweep folder (default runs/sweeps/<grid name>[-small])")
    p.add_argument("--small", action="store_true", help="the grid's small, CPU-sized form")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds to run (replaces the grid's list)")
    p.add_argument("--no-report", dest="report", action="store_false")
    r = commands.add_parser("report", help="summary table and plots of a sweep folder")
    r.add_argument("sweep_dir")
    s = commands.add_parser(
        "study", help="run a study (benchmarks/studies/NAME.yaml), record it, report verdicts"
    )
    s.add_argument("name", help="study name (benchmarks/studies/NAME.yaml) or a study YAML")
    add_executor_flags(s, DEFAULT_RUN_GB)
    s.add_argument("--seeds", type=int, nargs="+", help="seeds to run (replaces the study's)")
    s.add_argument("--only", nargs="+", metavar="ARM", help="run only these arms")
    s.add_argument("--report-only", action="store_true",
                   help="regenerate the report from the committed records; run nothing")  # fmt: skip


def add_executor_flags(p: argparse.ArgumentParser, default_run_gb: float) -> None:
    """Where and how many runs at once: the flags `sweep` and `study` share."""
    p.add_argument("--executor", choices=["local", "slurm"], help="default: the grid's, else local")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--gpus-per-run", type=int)
    p.add_argument("--cpus-per-run", type=int)
    p.add_argument("--mem-gb", type=float)
    p.add_argument("--time-min", type=int, help="SLURM time limit per run (minutes)")
    p.add_argument("--max-parallel", type=int, help="SLURM array tasks running at once")
    p.add_argument("--runs-per-gpu", type=int, metavar="K",
                   help="SLURM: K runs share one GPU (one array task runs K at once)")  # fmt: skip
    p.add_argument("--slurm-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra sbatch option, e.g. --slurm-arg qos=high (repeatable)")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="runs in parallel (CPU)")
    p.add_argument("--devices", help="GPU ids, e.g. 0,1: --runs-per-device runs per GPU at a time")
    p.add_argument("--runs-per-device", type=int, metavar="K",
                   help="local: K runs at once on each device (each --devices GPU, else the "
                   "runs' own device, the CPU included)")  # fmt: skip
    p.add_argument("--min-free-gb", type=float, metavar="GB",
                   help="free GPU memory a run needs before it starts beside others "
                   f"(default {default_run_gb:g} with --runs-per-device > 1); it waits until "
                   "then")  # fmt: skip


def collect_train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = load_named_config(args.config) if args.config else {}
    for flag, key in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    for text in args.assignments:
        key, value = parse_assignment(text)
        overrides[key] = value
    return overrides


def run_train(args: argparse.Namespace) -> int:
    from interlab.child_processes import die_with_parent_if_asked
    from interlab.distributed import shut_down
    from interlab.train import train

    die_with_parent_if_asked()  # a torchrun worker of a notebook run: no orphan trains on

    config = build_config(collect_train_overrides(args))
    result = train(
        config, resume=args.resume, stop_after_epochs=args.stop_after_epochs, progress=args.progress
    )
    shut_down()  # under torchrun: leave the process group before exiting (a failure skips it)
    print(json.dumps({"out": str(result.out), **result.final}))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from interlab.data import load_dataset
    from interlab.evaluate import evaluate_method
    from interlab.train import load_trained

    config, method = load_trained(args.checkpoint, args.device)
    data = args.data or config.data
    root = args.data_root or config.data_root
    scores = evaluate_method(
        method,
        load_dataset(data, "train", root=root),
        load_dataset(data, "test", root=root),
        knn=args.knn or not args.linear,
        linear=args.linear,
        k=args.k if args.k is not None else config.knn_k,
        temperature=args.temperature if args.temperature is not None else config.knn_temperature,
        protocols=config.knn_protocols,
    )
    print(json.dumps(scores))
    return 0


def run_quickstart(args: argparse.Namespace) -> int:
    from papermill.exceptions import PapermillExecutionError

    from interlab.lab.quickstart import execute_quickstart_notebook

    try:
        paths = execute_quickstart_notebook(
            method=args.method,
            dataset=args.data,
            epochs=args.epochs,
            device=args.device,
            out_dir=args.out,
            progress=True,
        )
    except PapermillExecutionError as error:
        print(
            f"interlab quickstart: a notebook cell failed: {error.ename}: {error.evalue}\n"
            f"  the executed notebook with the traceback is in {args.out}",
            file=sys.stderr,
        )
        return 1
    summary = json.loads(paths["metrics"].read_text())
    print(
        f"quickstart done: kNN top-1 {summary['knn_top1']:.3f} trained vs "
        f"{summary['knn_top1_untrained']:.3f} untrained ({summary['device']}, {summary['wall_time_s']:.0f} s)"
    )
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


def run_on_slurm(sweep: Any, out: Any, args: argparse.Namespace) -> list[dict]:
    from interlab.lab.slurm import cluster_settings, submit_sweep

    extra = dict(arg.split("=", 1) for arg in args.slurm_arg if "=" in arg)
    if len(extra) != len(args.slurm_arg):
        raise ValueError(f"--slurm-arg takes KEY=VALUE; got {args.slurm_arg}")
    if args.runs_per_device is not None or args.min_free_gb is not None:
        raise ValueError(
            "--runs-per-device and --min-free-gb are the local executor's; on SLURM, "
            "--runs-per-gpu K runs K runs in one array task on its GPU"
        )
    settings = cluster_settings(
        sweep.executor, partition=args.partition, gpus_per_run=args.gpus_per_run,
        cpus_per_run=args.cpus_per_run, mem_gb=args.mem_gb, time_min=args.time_min,
        max_parallel=args.max_parallel, runs_per_gpu=args.runs_per_gpu, slurm_args=extra,
    )  # fmt: skip
    return submit_sweep(sweep, out, settings)


def run_locally(sweep: Any, out: Any, args: argparse.Namespace) -> list[dict]:
    from interlab.lab.sweep import run_sweep

    if args.runs_per_gpu is not None:
        raise ValueError(
            "--runs-per-gpu is the SLURM executor's; locally, --runs-per-device K "
            "(with --devices) runs K at once on each device"
        )
    return run_sweep(
        sweep, out, workers=args.workers, devices=device_list(args.devices),
        runs_per_device=args.runs_per_device, min_free_gb=args.min_free_gb,
        on_finish=getattr(args, "on_finish", None),
    )  # fmt: skip


def device_list(text: str | None) -> list[str] | None:
    """`--devices 0,1` -> ["cuda:0", "cuda:1"]; a bad entry is named."""
    if text is None:
        return None
    ids = [part.strip() for part in text.split(",")]
    bad = [part for part in ids if not part.isdigit()]
    if bad or not ids:
        raise ValueError(f"--devices takes GPU ids such as 0,1; got {text!r}")
    return [f"cuda:{part}" for part in ids]


def print_sweep_states(folder: str) -> int:
    """`interlab sweep --status DIR`: one line per run; reads the folder, changes nothing."""
    from interlab.lab.sweep import sweep_states

    rows = sweep_states(folder)
    width = max(len(name) for name, _, _ in rows)
    for name, state, detail in rows:
        print(f"{name:<{width}}  {state:<8} {detail}".rstrip())
    counts = {
        state: sum(s == state for _, s, _ in rows)
        for state in ("done", "running", "failed", "pending")
    }
    print(", ".join(f"{n} {state}" for state, n in counts.items()))
    return 0


def run_sweep_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from interlab.lab.experiment import check_training_run
    from interlab.lab.grids import load_sweep
    from interlab.lab.report import write_report
    from interlab.lab.sweep import SweepInterrupted

    if args.status:
        return print_sweep_states(args.status)
    if args.grid is None:
        raise ValueError("give a grid YAML to run, or --status DIR to look at a sweep folder")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1; got {args.workers}")
    # every run checked before any starts; train.ipynb runs also by the config they build
    sweep = load_sweep(args.grid, small=args.small, seeds=args.seeds, check_run=check_training_run)
    out = Path(
        args.out or Path("runs/sweeps") / (Path(args.grid).stem + ("-small" if args.small else ""))
    )
    executor = args.executor or sweep.executor.get("name", "local")
    try:
        if executor == "slurm":
            statuses = run_on_slurm(sweep, out, args)
        else:
            statuses = run_locally(sweep, out, args)
    except SweepInterrupted as stop:
        print(f"interlab sweep: {stop}", file=sys.stderr)
        return 130
    failed = [s for s in statuses if s.get("state") != "done"]
    print(f"sweep {out}: {len(statuses) - len(failed)} of {len(statuses)} runs done")
    for status in failed:
        print(f"  {status['run']}: {status.get('state')} {status.get('error', '')}")
    if args.report:
        for name, path in write_report(out).items():
            print(f"  {name}: {path}")
    return 1 if failed else 0


def run_study_command(args: argparse.Namespace) -> int:
    from interlab.lab.experiment import check_training_run
    from interlab.lab.study import load_study, record_finished_runs, write_study_report
    from interlab.lab.sweep import SweepInterrupted

    check = None if args.report_only else check_training_run
    study = load_study(args.name, seeds=args.seeds, check_run=check)
    if args.only:
        unknown = sorted(set(args.only) - set(study.arms))
        if unknown:
            raise ValueError(f"--only: no arm(s) {unknown}; arms: {', '.join(study.arms)}")
        study.sweep.runs = [r for r in study.sweep.runs if r.setting in args.only]
    if not args.report_only:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1; got {args.workers}")
        args.on_finish = lambda status: record_finished_runs(study)
        executor = args.executor or study.sweep.executor.get("name", "local")
        try:
            run = run_on_slurm if executor == "slurm" else run_locally
            statuses = run(study.sweep, study.runs_dir, args)
        except SweepInterrupted as stop:
            print(f"interlab study: {stop}", file=sys.stderr)
            return 130
        finally:
            record_finished_runs(study)
        failed = [s for s in statuses if s.get("state") != "done"]
        for status in failed:
            print(f"  {status['run']}: {status.get('state')} {status.get('error', '')}")
    report = write_study_report(study)
    print(report.read_text())
    print(f"records: {study.records_path}\nreport: {report}")
    return 1 if not args.report_only and failed else 0


def run_report(args: argparse.Namespace) -> int:
    from interlab.lab.report import write_report

    paths = write_report(args.sweep_dir)
    print(paths["markdown"].read_text())
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interlab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_parser(commands)
    add_eval_parser(commands)
    add_quickstart_parser(commands)
    add_sweep_parsers(commands)
    add_prepare_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runners = {
        "train": run_train,
        "eval": run_eval,
        "quickstart": run_quickstart,
        "sweep": run_sweep_command,
        "study": run_study_command,
        "report": run_report,
        "prepare": run_prepare,
    }
    try:
        return runners[args.command](args)
    except (ValueError, FileNotFoundError, RunFolderLocked) as error:
        print(f"interlab {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
