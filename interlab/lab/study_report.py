"""A study's tables and verdicts, generated from its committed records.

Per arm: mean +- std and n of each metric, and the inter branch's diagnostics. Per
comparison: the paired difference over seeds of the first metric, its 95% confidence
interval, the raw and Holm-adjusted p-values, and the verdict the numbers allow. Arms are
compared only on one code version and one precision setting: a comparison across two is
refused, and says why.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from interlab.lab.paired_stats import (
    NOT_RESOLVED,
    PairedDifference,
    holm,
    paired_difference,
    summarise_arm,
    verdict,
)

DIAGNOSTICS_SHOWN = (
    "purity", "nmi", "label_change_ratio", "pn_gap", "false_negative_rate", "fnr_hard",
    "fnr_semihard", "fnr_random",
)  # fmt: skip


@dataclass
class Comparison:
    a: str
    b: str
    metric: str
    difference: PairedDifference | None = None
    adjusted_p: float = math.nan
    verdict: str = ""
    refused: str = ""


def current_records(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per arm, its records on the arm's newest code version, precision and config (the
    latest wins for a repeated seed); older records stay in the file as history."""
    by_arm: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_arm[record["arm"]].append(record)
    current = {}
    for arm, rows in by_arm.items():
        rows = sorted(rows, key=lambda r: r["date"])  # merged files need not be in date order
        newest = version_of(rows[-1])
        per_seed = {r["seed"]: r for r in rows if version_of(r) == newest}
        current[arm] = [per_seed[s] for s in sorted(per_seed)]
    return current


def version_of(record: dict[str, Any]) -> tuple:
    """What must agree for records to be pooled or compared: the code, the precision and,
    within an arm, the config (an arm whose settings were edited starts afresh)."""
    return record["code_version"], record["precision"], record.get("config_hash")


def values_by_seed(rows: list[dict[str, Any]], metric: str) -> dict[int, float]:
    """seed -> the metric, finite values only (a diverged run's nan says nothing)."""
    values = {r["seed"]: r["metrics"].get(metric) for r in rows}
    return {s: float(v) for s, v in values.items() if v is not None and math.isfinite(float(v))}


def compare(
    records: list[dict[str, Any]], pairs: list[tuple[str, str]], metric: str
) -> list[Comparison]:
    """Every comparison of the study on `metric`, Holm-corrected over those computed."""
    arms = current_records(records)
    comparisons = [Comparison(a, b, metric) for a, b in pairs]
    computed = []
    for c in comparisons:
        rows_a, rows_b = arms.get(c.a, []), arms.get(c.b, [])
        c.refused = refusal(c.a, rows_a, c.b, rows_b)
        if c.refused:
            c.verdict = "refused"
            continue
        c.difference = paired_difference(
            values_by_seed(rows_a, metric), values_by_seed(rows_b, metric)
        )
        computed.append(c)
    for c, adjusted in zip(computed, holm([c.difference.p for c in computed]), strict=True):
        c.adjusted_p = adjusted
        c.verdict = verdict(c.a, c.b, c.difference, adjusted)
    return comparisons


def refusal(a: str, rows_a: list[dict], b: str, rows_b: list[dict]) -> str:
    """Why two arms cannot be compared ('' when they can)."""
    if not rows_a or not rows_b:
        missing = [name for name, rows in ((a, rows_a), (b, rows_b)) if not rows]
        return f"no records for {', '.join(missing)}"
    fields = (("code_version", "code versions"), ("precision", "precision settings"))
    for field, label in fields:
        if rows_a[0][field] != rows_b[0][field]:
            return f"different {label}: {rows_a[0][field]} vs {rows_b[0][field]}"
    torches = {a: minor(rows_a[0]["torch"]), b: minor(rows_b[0]["torch"])}
    if torches[a] != torches[b]:
        return f"different torch versions: {torches[a]} vs {torches[b]}"
    return ""


def minor(version: str) -> str:
    return ".".join(str(version).split(".")[:2])


# ---- markdown ----------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def arm_table(records: list[dict[str, Any]], arm_order: list[str], metrics: list[str]) -> str:
    arms = current_records(records)
    shown = [a for a in arm_order if a in arms] + sorted(set(arms) - set(arm_order))
    diagnostics = [
        k for k in DIAGNOSTICS_SHOWN if any(k in r["diagnostics"] for a in shown for r in arms[a])
    ]
    header = ["arm", "n", *(f"{m} (mean ± std)" for m in metrics), *diagnostics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in shown:
        rows = arms[arm]
        cells = [arm, str(len(rows))]
        for metric in metrics:
            values = list(values_by_seed(rows, metric).values())
            if not values:
                cells.append("-")
                continue
            summary = summarise_arm(values)
            cells.append(f"{fmt(summary.mean)} ± {fmt(summary.std)}")
        for key in diagnostics:
            values = [r["diagnostics"][key] for r in rows if key in r["diagnostics"]]
            cells.append(fmt(sum(values) / len(values)) if values else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_table(comparisons: list[Comparison]) -> str:
    lines = [
        "| comparison | pairs | difference | 95% CI | p | p (Holm) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        name = f"{c.a} vs {c.b}"
        if c.refused:
            lines.append(f"| {name} | - | - | - | - | - | refused: {c.refused} |")
            continue
        d = c.difference
        if not math.isfinite(d.p):
            lines.append(
                f"| {name} | {d.n} | {fmt(d.mean, 4)} | - | - | - | {c.verdict} (untestable) |"
            )
            continue
        lines.append(
            f"| {name} | {d.n} | {d.mean:+.4f} | [{fmt(d.low, 4)}, {fmt(d.high, 4)}] | "
            f"{fmt(d.p)} | {fmt(c.adjusted_p)} | {c.verdict} |"
        )
    return "\n".join(lines)


def provenance_line(records: list[dict[str, Any]]) -> str:
    arms = current_records(records)
    rows = [r for group in arms.values() for r in group]
    versions = sorted({r["code_version"] for r in rows if r["code_version"]})
    devices = sorted({str(r["device"]) for r in rows})
    precisions = sorted({r["precision"] for r in rows})
    torches = sorted({r["torch"] for r in rows})
    dates = sorted(r["date"][:10] for r in rows)
    span = f"{dates[0]} to {dates[-1]}" if dates else "-"
    return (
        f"{len(rows)} run{'s' if len(rows) != 1 else ''}; code {', '.join(versions) or '-'}; device {', '.join(devices)}; "
        f"precision {', '.join(precisions)}; torch {', '.join(torches)}; {span}"
    )


def study_markdown(
    name: str,
    description: str,
    records: list[dict[str, Any]],
    arm_order: list[str],
    families: dict[str, list[tuple[str, str]]],
    metrics: list[str],
    findings: dict[str, list[tuple[str, str]]] | None = None,
) -> str:
    """The study's report: provenance, the arm table, then per family of comparisons the
    paired differences and their verdicts (Holm within the family)."""
    if not records:
        return f"### Study `{name}`\n\n{description}\n\nNo records yet.\n"
    parts = [
        f"### Study `{name}`",
        "",
        description.strip(),
        "",
        f"Generated by `interlab study {name} --report-only` from "
        f"`benchmarks/results/studies/{name}.jsonl`: {provenance_line(records)}.",
        "",
        arm_table(records, arm_order, metrics),
        "",
    ]
    computed: dict[tuple[str, str], Comparison] = {}
    for family, pairs in families.items():
        if not pairs:
            continue
        comparisons = compare(records, pairs, metrics[0])
        computed.update({(c.a, c.b): c for c in comparisons})
        parts += [f"**{family}** ({family_summary(comparisons, metrics[0])}):", ""]
        parts += [comparison_table(comparisons), ""]
    if findings:
        parts += [f"The paper's findings at this scale ({metrics[0]}):", ""]
        parts += [
            finding_line(claim, [computed[p] for p in pairs]) for claim, pairs in findings.items()
        ]
        parts.append("")
    return "\n".join(parts)


def finding_line(claim: str, comparisons: list[Comparison]) -> str:
    """'reproduced' when every predicted direction is resolved, 'refuted' when any is resolved
    the other way, 'partly reproduced' when some are resolved as predicted and none against,
    else 'not resolved at this power'; each comparison's interval follows."""
    agree = [c for c in comparisons if c.verdict == f"resolved: {c.a} > {c.b}"]
    against = [c for c in comparisons if c.verdict == f"resolved: {c.a} < {c.b}"]
    if any(c.refused for c in comparisons):
        word = "not judged (a comparison was refused)"
    elif against:
        word = "refuted"
    elif len(agree) == len(comparisons):
        word = "reproduced"
    elif agree:
        word = "partly reproduced"
    else:
        word = NOT_RESOLVED
    evidence = "; ".join(
        f"{c.a} - {c.b} = {c.difference.mean:+.4f} [{fmt(c.difference.low, 4)}, "
        f"{fmt(c.difference.high, 4)}]"
        for c in comparisons
        if c.difference is not None
    )
    return f"- **{claim}: {word}.** {evidence or 'no paired runs yet'}"


def family_summary(comparisons: list[Comparison], metric: str) -> str:
    resolved = sum(c.verdict.startswith("resolved") for c in comparisons)
    unresolved = sum(c.verdict == NOT_RESOLVED for c in comparisons)
    refused = sum(c.verdict == "refused" for c in comparisons)
    text = (
        f"{metric}, a - b paired over seeds, Holm-adjusted within this family: {resolved} of "
        f"{len(comparisons)} resolved, {unresolved} not resolved at this power"
    )
    return text + (f", {refused} refused" if refused else "")
