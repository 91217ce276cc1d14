"""Studies: the statistics against scipy and hand-computed values, records, refusals, and the
generated report's verdicts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from interlab.lab.paired_stats import NOT_RESOLVED, holm, paired_difference, summarise_arm
from interlab.lab.study import (
    config_hash,
    load_study,
    parse_comparison,
    precision_of,
    read_records,
    splice_section,
)
from interlab.lab.study_report import compare, current_records, study_markdown


def test_paired_difference_matches_scipys_paired_t_test_and_interval():
    a = {0: 0.431, 1: 0.447, 2: 0.425, 3: 0.452, 4: 0.440}
    b = {0: 0.420, 1: 0.441, 2: 0.423, 3: 0.436, 4: 0.431, 9: 0.5}  # seed 9 has no pair
    d = paired_difference(a, b)
    diffs = np.array([a[s] - b[s] for s in range(5)])
    assert d.n == 5
    assert d.mean == pytest.approx(diffs.mean())
    assert d.p == pytest.approx(stats.ttest_rel(list(a.values()), [b[s] for s in range(5)]).pvalue)
    half = stats.t.ppf(0.975, 4) * diffs.std(ddof=1) / math.sqrt(5)
    assert (d.low, d.high) == pytest.approx((diffs.mean() - half, diffs.mean() + half))


def test_paired_difference_with_one_pair_has_no_interval():
    d = paired_difference({0: 0.5}, {0: 0.4, 1: 0.3})
    assert d.n == 1 and math.isnan(d.low) and math.isnan(d.p)


def test_differences_with_no_spread_are_untestable_not_resolved():
    """kNN moves in steps of 1e-4 on 10,000 images: two seeds one image apart each must not
    read as an effect with p = 0."""
    d = paired_difference({0: 0.4123, 1: 0.5001}, {0: 0.4122, 1: 0.5000})
    assert math.isnan(d.p) and d.n == 2
    a = {s: 0.4 + 0.01 * s for s in range(5)}
    (same,) = compare([record("a", s, v) for s, v in a.items()]
                      + [record("b", s, v - 0.02) for s, v in a.items()], [("a", "b")], "knn_top1")  # fmt: skip
    assert same.verdict == NOT_RESOLVED


def test_a_diverged_run_is_left_out_not_counted_as_an_effect():
    records = [record("a", s, 0.4 + 0.01 * s) for s in range(4)] + [record("a", 4, math.nan)]
    records += [record("b", s, 0.4 + 0.01 * s + 0.001 * (-1) ** s) for s in range(5)]
    (c,) = compare(records, [("a", "b")], "knn_top1")
    assert c.difference.n == 4 and c.verdict == NOT_RESOLVED
    assert holm([0.01, math.nan, 0.04])[0] == pytest.approx(0.02)  # nan is not one of the m


def test_holm_adjusts_by_rank_and_stays_monotone():
    # sorted p: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04); input order kept
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    # a later rank never falls under an earlier one: 0.011 x 2 = 0.022 < 0.03 -> 0.03
    assert holm([0.01, 0.011, 0.9]) == pytest.approx([0.03, 0.03, 0.9])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_arm_summary_uses_the_sample_standard_deviation():
    s = summarise_arm([0.40, 0.42, 0.44])
    assert (s.mean, s.std, s.n) == pytest.approx((0.42, 0.02, 3))


def record(arm, seed, knn, code="c1", precision="cpu:amp=False", **diagnostics):
    return {
        "arm": arm, "seed": seed, "run": f"{arm}-seed{seed}", "code_version": code,
        "precision": precision, "device": "cpu", "torch": "2.14.1",
        "date": "2026-12-04T10:00:00", "metrics": {"knn_top1": knn},
        "diagnostics": diagnostics, "per_epoch": [],
    }  # fmt: skip


def test_a_clear_effect_is_resolved_and_a_small_one_is_not():
    rng = np.random.default_rng(0)
    seeds = range(6)
    base = {s: 0.40 + 0.02 * rng.standard_normal() for s in seeds}
    records = [record("moco", s, base[s]) for s in seeds]
    records += [record("big", s, base[s] + 0.03 + 0.002 * rng.standard_normal()) for s in seeds]
    noise = [0.002, -0.003, 0.001, -0.001, 0.003, -0.002]  # mean 0: nothing to resolve
    records += [record("tiny", s, base[s] + noise[s]) for s in seeds]
    big, tiny = compare(records, [("big", "moco"), ("tiny", "moco")], "knn_top1")
    assert big.verdict == "resolved: big > moco"
    assert big.difference.low > 0.02
    assert tiny.verdict == NOT_RESOLVED
    assert tiny.difference.low < 0 < tiny.difference.high
    flipped = compare(records, [("moco", "big")], "knn_top1")[0]
    assert flipped.verdict == "resolved: moco < big"


def test_arms_on_different_code_or_precision_are_refused_not_compared():
    records = [record("a", s, 0.5, code="old") for s in range(3)]
    records += [record("b", s, 0.4, code="new") for s in range(3)]
    records += [record("c", s, 0.4, code="old", precision="cpu:amp=True") for s in range(3)]
    ab, ac, ad = compare(records, [("a", "b"), ("a", "c"), ("a", "d")], "knn_top1")
    assert ab.verdict == "refused" and "code versions: old vs new" in ab.refused
    assert "precision settings" in ac.refused
    assert "no records for d" in ad.refused


def test_an_arm_is_read_at_its_newest_code_version_and_a_rerun_seed_replaces():
    records = [record("a", 0, 0.30, code="old"), record("a", 0, 0.41), record("a", 1, 0.43)]
    records.append(record("a", 1, 0.45))  # the same seed rerun on the same code
    rows = current_records(records)["a"]
    assert [(r["seed"], r["metrics"]["knn_top1"]) for r in rows] == [(0, 0.41), (1, 0.45)]


def test_the_report_says_what_is_resolved_and_shows_diagnostics():
    records = [record("x", s, 0.5 + 0.01 * s, purity=0.3) for s in range(3)]
    records += [record("y", s, 0.4 + 0.01 * s + 0.001 * (s - 1), purity=0.2) for s in range(3)]
    families = {"main": [("x", "y")]}
    text = study_markdown("demo", "A demo.", records, ["y", "x"], families, ["knn_top1"])
    assert "1 of 1 resolved, 0 not resolved" in text
    assert "| x vs y | 3 | +0.1000 |" in text and "resolved: x > y" in text
    assert text.index("| y | 3 |") < text.index("| x | 3 |")  # the study's arm order
    assert "| x | 3 | 0.510 ± 0.010 | 0.300 |" in text  # mean ± std, then mean purity


def test_config_hash_ignores_the_run_folder_and_seed_but_not_a_setting():
    config = {"method": "interclr", "margin": -0.5, "out": "a", "seed": 0}
    assert config_hash(config) == config_hash({**config, "out": "b", "seed": 3})
    assert config_hash(config) != config_hash({**config, "margin": 0.0})


def test_precision_names_the_device_kind_and_switches():
    config = {"amp": "auto", "channels_last": True}
    assert precision_of(config, "NVIDIA H200") == "cuda:amp=auto,channels_last=True"
    assert precision_of(config, "cpu (2 threads)").startswith("cpu:")


def test_comparisons_parse_and_bad_ones_are_named():
    assert parse_comparison("online vs offline") == ("online", "offline")
    assert parse_comparison(["a", "b"]) == ("a", "b")
    with pytest.raises(ValueError, match="a vs b"):
        parse_comparison("online, offline")


def write_study(tmp_path: Path, **extra) -> Path:
    spec = {
        "description": "tiny",
        "notebook": str(Path(__file__).resolve().parents[1] / "notebooks" / "train.ipynb"),
        "base": {"method": "moco", "dataset": "cifar10-mini", "epochs": 1, "device": "cpu"},
        "runs": [{"name": "a"}, {"name": "b", "overrides": {"temperature": 0.1}}],
        "seeds": [0, 1],
        "comparisons": ["a vs b"],
        **extra,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_study_file_is_a_grid_with_comparisons(tmp_path):
    study = load_study(write_study(tmp_path))
    assert study.name == "tiny" and study.arms == ["a", "b"]
    assert len(study.sweep.runs) == 4 and study.comparisons == {"comparisons": [("a", "b")]}
    assert study.metrics[0] == "knn_top1"


def test_comparison_families_are_kept_apart(tmp_path):
    study = load_study(write_study(tmp_path, comparisons={"q1": ["a vs b"], "q2": ["b vs a"]}))
    assert study.comparisons == {"q1": [("a", "b")], "q2": [("b", "a")]}


def test_a_study_naming_an_unknown_arm_or_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="names no arm 'c'"):
        load_study(write_study(tmp_path, comparisons=["a vs c"]))
    with pytest.raises(ValueError, match="unknown key"):
        load_study(write_study(tmp_path, verdicts=["a > b"]))
    with pytest.raises(ValueError, match="no study 'nonesuch'"):
        load_study("nonesuch")


def test_a_torn_record_line_is_named(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(record("a", 0, 0.4)) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"s\.jsonl:2"):
        read_records(path)


def test_splice_replaces_only_between_the_markers(tmp_path):
    path = tmp_path / "R.md"
    path.write_text("intro\n<!-- study:x:begin -->\nold\n<!-- study:x:end -->\noutro\n")
    assert splice_section(path, "study:x", "new table")
    assert path.read_text() == (
        "intro\n<!-- study:x:begin -->\nnew table\n<!-- study:x:end -->\noutro\n"
    )
    assert not splice_section(path, "study:y", "t")


def test_findings_are_judged_from_the_verdicts_of_their_comparisons():
    seeds = range(5)
    records = [record("base", s, 0.40 + 0.01 * s) for s in seeds]
    records += [record("better", s, 0.43 + 0.01 * s + 0.001 * (s % 2)) for s in seeds]
    records += [record("worse", s, 0.37 + 0.01 * s + 0.001 * (s % 2)) for s in seeds]
    records += [record("same", s, 0.40 + 0.01 * s + 0.002 * (-1) ** s) for s in seeds]
    families = {"f": [("better", "base"), ("worse", "base"), ("same", "base")]}
    findings = {
        "better helps": [("better", "base")],
        "worse helps": [("worse", "base")],
        "same helps": [("same", "base")],
        "both help": [("better", "base"), ("same", "base")],
    }
    text = study_markdown("demo", "", records, ["base"], families, ["knn_top1"], findings)
    assert "- **better helps: reproduced.** better - base = +0.0304 [" in text
    assert "- **worse helps: refuted.**" in text
    assert "- **same helps: not resolved at this power.**" in text
    assert "- **both help: partly reproduced.**" in text


def test_a_finding_must_rest_on_a_comparison_the_study_makes(tmp_path):
    with pytest.raises(ValueError, match="expects b > a, which no comparison makes"):
        load_study(write_study(tmp_path, findings={"b helps": ["b > a"]}))


def fake_study_runs(parameters: dict, run_dir: Path) -> int:
    """Papermill's stand-in: writes the summary a train.ipynb run leaves, with a kNN that
    depends on the arm (b scores 2 points under a, plus a small seed-dependent wobble)."""
    seed, temperature = parameters["seed"], parameters["overrides"].get("temperature", 0.2)
    arm_a = temperature == 0.2
    knn = 0.40 + 0.01 * seed + (0.02 + 0.002 * (seed % 3) if arm_a else 0.0)
    summary = {
        "knn_top1": knn, "linear_top1": knn + 0.05, "final": {"epoch": 1, "nmi": 0.2},
        "per_epoch": [{"epoch": 1, "knn_top1": knn, "nmi": 0.2}], "device": "cpu",
        "epochs": 1, "wall_time_s": 1.0, "config": {"amp": None, "channels_last": True},
        "code": {"version": "abc", "commit": "123"},
    }  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(summary))
    return 0


def test_interlab_study_records_each_run_once_and_writes_the_verdicts(tmp_path, monkeypatch):
    """The command end to end with papermill stood in for: 2 arms x 5 seeds run, 10 records
    filed, a resolved verdict in the report and in RESULTS.md's section; a second call runs
    nothing and files nothing."""
    from interlab import cli
    from interlab.lab import study as study_module
    from interlab.lab.sweep import RunExecutor

    monkeypatch.setattr(RunExecutor, "_papermill", staticmethod(fake_study_runs))
    monkeypatch.setattr(study_module, "RECORDS_DIR", str(tmp_path / "records"))
    monkeypatch.setattr(study_module, "RUNS_DIR", str(tmp_path / "runs"))
    results = tmp_path / "RESULTS.md"
    results.write_text("<!-- study:tiny:begin -->\n<!-- study:tiny:end -->\n")
    monkeypatch.setattr(study_module, "RESULTS_FILE", str(results))
    path = write_study(tmp_path, seeds=[0, 1, 2, 3, 4], findings={"a helps": ["a > b"]})
    assert cli.main(["study", str(path)]) == 0
    records = read_records(tmp_path / "records" / "tiny.jsonl")
    assert len(records) == 10 and {r["arm"] for r in records} == {"a", "b"}
    assert records[0]["code_version"] == "abc" and records[0]["metrics"]["linear_top1"] > 0.4
    report = (tmp_path / "records" / "tiny.md").read_text()
    assert "resolved: a > b" in report and "- **a helps: reproduced.**" in report
    assert "resolved: a > b" in results.read_text()
    assert cli.main(["study", str(path)]) == 0
    assert len(read_records(tmp_path / "records" / "tiny.jsonl")) == 10


def test_interlab_study_refuses_an_unknown_arm_before_running(tmp_path, capsys):
    from interlab import cli

    assert cli.main(["study", str(write_study(tmp_path)), "--only", "c"]) != 0
    assert "--only: no arm(s) ['c']; arms: a, b" in capsys.readouterr().err
