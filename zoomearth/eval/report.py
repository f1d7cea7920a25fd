"""Score result records and write the report: JSON, Markdown, CSV and a bar chart PNG.

Only questions the agent answered are scored (``n``); unsupported items (several images),
missing images and errors are counted separately in ``counts`` and never scored silently.
Stage 1 is ``answer1`` (the answer given with the first zoom, or the only answer when there was
no zoom); the final answer is ``answer2``, falling back to ``answer1`` when there was no zoom,
exactly as the LRS-GRO scorer does. APO IoU is the mean over scored questions that have a
ground-truth box (a question without a zoom counts 0; questions without a box are excluded).
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

__all__ = [
    "PUBLISHED",
    "build_report",
    "score_records",
    "write_report",
]

#: Published figures (BENCHMARKS.md), percent.
PUBLISHED: Final[dict[str, list[tuple[str, str]]]] = {
    "lrs-gro": [
        (
            "ZoomEarth-3B (512 input)",
            "Global 63.09, Region 46.11, Object 51.80, avg 53.76, APO IoU 34.39",
        ),
        ("Qwen2.5-VL-3B at 1024", "avg 42.25"),
        ("Qwen2.5-VL-7B at 3333", "avg 51.43"),
        ("InternVL3-8B", "avg 53.67"),
        ("VLM-R3 (with tools)", "avg 50.17, APO IoU 19.93"),
    ],
    "lrs-vqa": [
        ("ZoomSearch", "32.92"),
        ("LRS-VQA method", "32.16"),
        ("GPT-4o", "29.26"),
        ("ZoomEye", "26.84"),
        ("GeoLLaVA-8K", "24.52"),
    ],
    "mme-realworld-rs": [
        ("ZoomEarth-3B (zero-shot)", "44.10"),
        ("LLaVA-OV-7B", "53.53"),
        ("Qwen2-VL-7B", "49.73"),
    ],
    "xlrs": [("ZoomEarth-3B", "40.20")],
}


def score_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Add ``correct1`` / ``correct2`` (official rule of each record's benchmark).

    Args:
        records: Result records (``status`` other than ``answered`` get None).

    Returns:
        New dicts with the two fields added.
    """
    from zoomearth.eval.scoring import score_answer

    out = []
    for rec in records:
        r = dict(rec)
        if (
            r.get("benchmark") == "lrs-vqa"
            and r.get("status") == "answered"
            and not (r.get("ground_truth") and r.get("category"))
        ):
            r["status"] = "skipped_no_ground_truth"  # the official script skips these items
        if r.get("status") == "answered":
            a1 = r.get("answer1")
            a2 = r.get("answer2") if r.get("answer2") is not None else a1
            choices = r.get("choices") or ()
            r["correct1"] = score_answer(r["benchmark"], r["ground_truth"], a1, choices)
            r["correct2"] = (
                r["correct1"]
                if a2 is a1
                else score_answer(r["benchmark"], r["ground_truth"], a2, choices)
            )
        else:
            r["correct1"] = r["correct2"] = None
        out.append(r)
    return out


def _group_stats(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    c1 = sum(1 for r in rows if r["correct1"])
    c2 = sum(1 for r in rows if r["correct2"])
    boxed = [r for r in rows if r.get("apo_iou") is not None]
    return {
        "n": n,
        "correct_stage1": c1,
        "correct_final": c2,
        "acc_stage1": c1 / n if n else None,
        "acc_final": c2 / n if n else None,
        "delta": (c2 - c1) / n if n else None,
        "fixed": sum(1 for r in rows if r["correct2"] and not r["correct1"]),
        "broken": sum(1 for r in rows if r["correct1"] and not r["correct2"]),
        "n_boxed": len(boxed),
        "apo_iou": sum(float(r["apo_iou"]) for r in boxed) / len(boxed) if boxed else None,
    }


def _by(rows: Sequence[Mapping[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[str(r.get(key) or "")].append(r)
    return {k: _group_stats(v) for k, v in sorted(groups.items())}


def _category_average(rows: Sequence[Mapping[str, Any]]) -> float | None:
    cats = _by(rows, "category")
    accs = [s["acc_final"] for s in cats.values() if s["n"]]
    return sum(accs) / len(accs) if accs else None


def build_report(records: Iterable[Mapping[str, Any]], *, planner: str = "") -> dict[str, Any]:
    """All figures of a run.

    Args:
        records: Result records (any statuses).
        planner: Planner description for the header.

    Returns:
        A JSON-serialisable dict: ``counts``, ``overall`` (with ``category_average``), ``by_type``
        (each with its own ``category_average``: LRS-VQA's per-source AA), ``by_level``,
        ``by_category``, ``mean_visual_tokens``, ``mean_seconds``, ``zoom_rate``, ``no_zoom_boxed``
        and ``questions`` (the scored records).
    """
    scored_all = score_records(records)
    counts: dict[str, int] = defaultdict(int)
    for r in scored_all:
        counts[str(r.get("status") or "unknown")] += 1
    rows = [r for r in scored_all if r.get("status") == "answered"]
    benchmark = next((str(r.get("benchmark")) for r in scored_all), "")
    overall = _group_stats(rows)
    overall["category_average"] = _category_average(rows)
    by_type = _by(rows, "type")
    for key, stats in by_type.items():
        stats["category_average"] = _category_average(
            [r for r in rows if str(r.get("type") or "") == key]
        )
    n = len(rows)
    return {
        "benchmark": benchmark,
        # the script backend names the current question in its description: not the run's name
        "planner": planner
        or re.sub(r", question [^)]*", "", next((str(r.get("planner")) for r in rows), "")),
        "counts": {"total": len(scored_all), **dict(sorted(counts.items()))},
        "overall": overall,
        "by_type": by_type,
        "by_level": _by(rows, "level"),
        "by_category": _by(rows, "category"),
        "mean_visual_tokens": (
            sum(int(r.get("visual_tokens") or 0) for r in rows) / n if n else None
        ),
        "mean_seconds": sum(float(r.get("seconds") or 0.0) for r in rows) / n if n else None,
        "zoom_rate": sum(1 for r in rows if r.get("bbox")) / n if n else None,
        "no_zoom_boxed": sum(1 for r in rows if r.get("apo_iou") is not None and not r.get("bbox")),
        "questions": scored_all,
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100.0 * v:.2f}"


def _num(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _table(title: str, groups: Mapping[str, Mapping[str, Any]], with_aa: bool = False) -> list[str]:
    head = "| group | n | stage 1 % | final % | delta (pt) | fixed | broken | APO IoU (n) |"
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if with_aa:
        head += " category avg % |"
        sep += "---:|"
    lines = [f"### {title}", "", head, sep]
    for name, s in groups.items():
        apo = f"{_num(s['apo_iou'])} ({s['n_boxed']})" if s["n_boxed"] else "-"
        line = (
            f"| {name or '(none)'} | {s['n']} | {_pct(s['acc_stage1'])} | "
            f"{_pct(s['acc_final'])} | {_pct(s['delta'])} | {s['fixed']} | {s['broken']} | "
            f"{apo} |"
        )
        if with_aa:
            line += f" {_pct(s.get('category_average'))} |"
        lines.append(line)
    return lines + [""]


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown."""
    o = report["overall"]
    c = report["counts"]
    lines = [
        f"# {report['benchmark']} evaluation",
        "",
        f"Planner: {report['planner'] or '-'}",
        "",
        "Questions: "
        + ", ".join(f"{k} {v}" for k, v in c.items())
        + " (only answered questions are scored).",
        "",
        "## Overall",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| scored questions | {o['n']} |",
        f"| accuracy, stage 1 (%) | {_pct(o['acc_stage1'])} |",
        f"| accuracy, final (%) | {_pct(o['acc_final'])} |",
        f"| stage 1 -> final (points) | {_pct(o['delta'])} |",
        f"| fixed / broken by zooming | {o['fixed']} / {o['broken']} |",
        f"| category average, final (%) | {_pct(o['category_average'])} |",
        f"| APO IoU (questions with a box) | {_num(o['apo_iou'])} ({o['n_boxed']}) |",
        f"| boxed questions without a zoom | {report['no_zoom_boxed']} |",
        f"| zoom rate | {_pct(report['zoom_rate'])} % |",
        f"| mean visual tokens per question | {_num(report['mean_visual_tokens'], 1)} |",
        f"| mean seconds per question | {_num(report['mean_seconds'], 3)} |",
        "",
        "## Breakdown",
        "",
    ]
    lines += _table("By type", report["by_type"], with_aa=True)
    lines += _table("By level", report["by_level"])
    lines += _table("By category", report["by_category"])
    published = PUBLISHED.get(str(report["benchmark"]), [])
    if published:
        lines += ["## Published figures (for comparison)", "", "| system | figures |", "|---|---|"]
        lines += [f"| {name} | {figs} |" for name, figs in published] + [""]
    return "\n".join(lines)


_CSV_FIELDS: Final = (
    "section",
    "group",
    "n",
    "acc_stage1",
    "acc_final",
    "delta",
    "fixed",
    "broken",
    "n_boxed",
    "apo_iou",
    "category_average",
)
_QUESTION_FIELDS: Final = (
    "question_id",
    "status",
    "type",
    "level",
    "category",
    "ground_truth",
    "answer1",
    "answer2",
    "correct1",
    "correct2",
    "apo_iou",
    "bbox",
    "tools",
    "visual_tokens",
    "seconds",
    "message",
)


def _write_csvs(report: Mapping[str, Any], out: Path) -> tuple[Path, Path]:
    summary = out / "summary.csv"
    with summary.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=_CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerow({"section": "overall", "group": "all", **report["overall"]})
        for section in ("by_type", "by_level", "by_category"):
            for name, stats in report[section].items():
                w.writerow({"section": section.removeprefix("by_"), "group": name, **stats})
    per_q = out / "questions.csv"
    with per_q.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=_QUESTION_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in report["questions"]:
            w.writerow(
                {
                    k: json.dumps(r.get(k)) if isinstance(r.get(k), list) else r.get(k)
                    for k in _QUESTION_FIELDS
                }
            )
    return summary, per_q


def _write_chart(report: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    groups = {"overall": report["overall"], **report["by_type"]}
    names = list(groups)
    s1 = [100.0 * (groups[k]["acc_stage1"] or 0.0) for k in names]
    s2 = [100.0 * (groups[k]["acc_final"] or 0.0) for k in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 2), 3.6), dpi=100)
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], s1, width=0.4, label="stage 1")
    ax.bar([x + 0.2 for x in xs], s2, width=0.4, label="final")
    ax.set_xticks(list(xs), [n or "(none)" for n in names], rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    title = f"{report['benchmark']} - {report['planner']}"
    apo = report["overall"]["apo_iou"]
    if apo is not None:
        title += f" (APO IoU {apo:.3f})"
    ax.set_title(title[:90], fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from zoomearth.temporaries import temporary_sibling

    # Owner-named and keeping the .png suffix (matplotlib picks the format from it).
    tmp = temporary_sibling(path)
    try:
        fig.savefig(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


def write_report(
    records: Iterable[Mapping[str, Any]], out_dir: str | Path, *, planner: str = ""
) -> dict[str, Any]:
    """Score the records and write the report files into ``out_dir``.

    Files: ``report.json``, ``report.md``, ``summary.csv``, ``questions.csv``, ``accuracy.png``.

    Returns:
        The report (as :func:`build_report`), with ``files`` naming what was written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(records, planner=planner)
    (out / "report.json").write_text(
        json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "report.md").write_text(render_markdown(report) + "\n", encoding="utf-8")
    summary, per_q = _write_csvs(report, out)
    chart = out / "accuracy.png"
    _write_chart(report, chart)
    report["files"] = {
        "json": str(out / "report.json"),
        "markdown": str(out / "report.md"),
        "summary_csv": str(summary),
        "questions_csv": str(per_q),
        "chart": str(chart),
    }
    return report
