"""A run folder's files: `config.yaml`, `metrics.jsonl` (one JSON object per epoch) and
`checkpoint.pt`. Training writes them; the CLI, reports and notebooks read them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.yaml"


def yaml_ready(value: Any) -> Any:
    """Tuples to lists, recursively, so configs dump as plain YAML."""
    if isinstance(value, dict):
        return {k: yaml_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [yaml_ready(v) for v in value]
    return value


def write_config(out: Path, config: dict[str, Any]) -> None:
    """The run's resolved config (the sizes methods filled in included), as plain YAML."""
    (out / CONFIG_NAME).write_text(yaml.safe_dump(yaml_ready(config), sort_keys=False))


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run folder (empty when none yet)."""
    path = Path(out) / METRICS_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(out: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite the records (a resumed run drops the epochs after its checkpoint)."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    (out / METRICS_NAME).write_text(text)


def append_metrics(out: Path, record: dict[str, Any]) -> None:
    """One epoch's record, appended as it finishes (a crash loses no finished epoch)."""
    with open(out / METRICS_NAME, "a") as f:
        f.write(json.dumps(record) + "\n")
