"""Finding a finished run in a sweep folder (the studies' and the CycleContrast notebook's)."""

from __future__ import annotations

import json

import pytest
import yaml

from interlab.lab.report import finished_checkpoint


def fake_run(sweep, name, setting, state="done", method="interclr", checkpoint=True):
    folder = sweep / name
    (folder / "run").mkdir(parents=True)
    (folder / "status.json").write_text(
        json.dumps({"run": name, "setting": setting, "state": state})
    )
    (folder / "run" / "config.yaml").write_text(yaml.safe_dump({"method": method}))
    if checkpoint:
        (folder / "run" / "checkpoint.pt").write_bytes(b"")
    return folder / "run" / "checkpoint.pt"


@pytest.fixture
def sweep(tmp_path):
    runs = [
        ("a-seed0", "neg_sampling=hard", "done", "interclr", True),
        ("b-seed0", "neg_sampling=semihard,pool_share=0.1", "failed", "interclr", True),
        ("c-seed0", "neg_sampling=semihard,pool_share=0.3", "done", "interclr", False),
        ("d-seed0", "neg_sampling=semihard,pool_share=0.5", "done", "interclr", True),
        ("e-seed0", "moco_v2", "done", "moco", True),
    ]
    for name, setting, state, method, checkpoint in runs:
        fake_run(tmp_path, name, setting, state, method, checkpoint)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"runs": [{"name": r[0]} for r in runs]}))
    return tmp_path


def test_settings_are_tried_in_order_among_finished_runs_with_a_checkpoint(sweep):
    # b failed and c has no checkpoint: the first semihard run that qualifies is d
    found = finished_checkpoint(
        sweep, "neg_sampling=semihard,pool_share=0.3", "neg_sampling=semihard"
    )
    assert found == sweep / "d-seed0" / "run" / "checkpoint.pt"
    # a prefix of the grid values matches at a comma boundary only
    assert finished_checkpoint(sweep, "neg_sampling=semi").parent.parent.name == "a-seed0"


def test_no_setting_given_or_matched_gives_the_first_finished_run(sweep):
    assert finished_checkpoint(sweep).parent.parent.name == "a-seed0"
    assert finished_checkpoint(sweep, "margin=-0.5").parent.parent.name == "a-seed0"


def test_the_method_filter_reads_each_run_config(sweep):
    assert finished_checkpoint(sweep, method="moco").parent.parent.name == "e-seed0"
    with pytest.raises(ValueError, match="no finished cyclecontrast run"):
        finished_checkpoint(sweep, method="cyclecontrast")
