"""The experiment's report folder: figures (PNG), report.md (relative links to them), report.html (the same
content with the figures embedded as base64), results.json (every number). Written atomically.

A report is built as a list of blocks (headings, paragraphs, tables, figures, code) rendered twice, to
Markdown and to HTML, so both always say the same thing.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from curate.atomic import atomic_dir, write_json
from curate.pipelines.report_figures import make_figures
from curate.pipelines.report_format import fmt, fmt_diffs, fmt_p, fmt_run_emergence, fmt_step, mean_sd

Log = Callable[[str], None]
RESULTS_FILE = "results.json"
STATUS_MARK = {"observed": "observed", "not observed": "NOT observed", "inconclusive": "inconclusive", "not run": "not run",
               "not testable": "not testable"}


# --------------------------------------------------------------------------- document blocks


@dataclass
class Doc:
    """A report as blocks: ("h1"|"h2"|"p"|"code", text), ("table", headers, rows), ("img", file, caption), ("list", items)."""

    blocks: list[tuple] = field(default_factory=list)

    def h1(self, text: str) -> None:
        self.blocks.append(("h1", text))

    def h2(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def items(self, items: list[str]) -> None:
        self.blocks.append(("list", items))

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", headers, rows))

    def img(self, file: str, caption: str) -> None:
        self.blocks.append(("img", file, caption))


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_md(doc: Doc) -> str:
    out: list[str] = []
    for block in doc.blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}\n")
        elif kind == "h2":
            out.append(f"## {block[1]}\n")
        elif kind == "p":
            out.append(f"{block[1]}\n")
        elif kind == "code":
            out.append(f"```\n{block[1]}\n```\n")
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in block[1]) + "\n")
        elif kind == "table":
            headers, rows = block[1], block[2]
            lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines) + "\n")
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})\n\n*{block[2]}*\n")
    return "\n".join(out)


def render_html(doc: Doc, folder: Path, title: str) -> str:
    """HTML with every figure embedded (data: URI, base64 PNG)."""
    e = html.escape
    body: list[str] = []
    for block in doc.blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{e(block[1])}</{kind}>")
        elif kind == "code":
            body.append(f"<pre><code>{e(block[1])}</code></pre>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode((folder / block[1]).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{e(block[2])}" src="data:image/png;base64,{data}"/>'
                        f"<figcaption>{e(block[2])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 7px;text-align:left}"
             "img{max-width:100%}pre{background:#f4f4f4;padding:8px;overflow-x:auto;white-space:pre-wrap}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{e(title)}</title><style>{style}</style></head>"
            f"<body>\n" + "\n".join(body) + "\n</body></html>\n")


def verdicts_section(doc: Doc, results: dict) -> None:
    """The expected effects, each observed or not (`pipelines.verdicts`)."""
    doc.h2("Expected effects: observed or not")
    doc.table(["expected effect", "status", "numbers"],
              [[v["expectation"], STATUS_MARK.get(v["status"], v["status"]), v["detail"]] for v in results["verdicts"]])


def controls_section(doc: Doc, results: dict) -> None:
    """Each targeted arm against its random control (`effects.comparisons`)."""
    doc.h2("Targeted arms against their random controls")
    doc.p(f"Test: {results['test']}. Metric: the emergence step when no pair is censored, else the area under the "
          "circuit curve (defined for every run).")
    doc.table(["arm", "control", "metric", "expected", "arm values", "control values", "t", "df", "p", "note"], [
        [c["arm"], c["control"], c["metric"], c["expected"], ", ".join(fmt(v, 4) for v in c["arm_values"]),
         ", ".join(fmt(v, 4) for v in c["control_values"]), fmt(c["test"] and c["test"]["t"]), fmt(c["test"] and c["test"]["df"]),
         fmt_p(c["test"]), c["note"]] for c in results["comparisons"]])


def build_doc(results: dict, figures: list[tuple[str, str]]) -> Doc:
    doc = Doc()
    name = results["circuit"]
    doc.h1(f"Causal validation of the {name} attribution")
    method_section(doc, results)
    b = results["baseline"]
    w = results["window"]
    setting = [
        ["baseline", b.get("run") or b.get("model") or "-"],
        ["corpus", b["corpus"]],
        ["attribution window", f"steps {w['start']}-{w['end']} ({w['rows']:,} rows): {w['reason']}"],
        ["baseline emergence step", fmt_step(b.get("emergence_step"))],
        ["scores", f"{results['scores']['folder']} (checkpoint {results['scores']['checkpoint']})"],
        ["targeted heads", ", ".join(results["targeted_heads"])],
        ["removed (--remove)", f"{results['k']} = {results['k_rows']:,} rows"],
        ["added (--augment)", f"{results['augment']} = {results['augment_rows']:,} rows"],
        ["seeds", ", ".join(str(s) for s in results["seeds"])],
        ["what a seed varies", results["seed_varies"]],
        ["arms train until step", str(results["arm_steps"])],
        ["emergence threshold", f"{results['threshold']:g} (best head, {results['metric'].replace('_', '-')} score; the baseline evaluated every {results['eval_every']} steps, the arms every {results.get('arm_eval_every', results['eval_every'])}; the crossing interpolated between evaluations)"],
    ]
    o = results.get("outcomes")
    if o:
        setting.append(["continuous outcomes", f"circuit score at step {fmt_step(o['reference'])} (the baseline's mean emergence step); "
                        f"area under the circuit curve from step {o['auc_from']:.0f} to {o['auc_to']:.0f} / its length"])
    setting.append(["tests", results["test"]])
    if results.get("testable"):
        setting.append(["not testable", results["testable"]])
    doc.table(["setting", "value"], setting)
    if results.get("notes"):
        doc.items([f"note: {n}" for n in results["notes"]])

    verdicts_section(doc, results)

    doc.h2("Effects against the baseline")
    doc.p("Deltas are arm minus baseline, paired by seed (one seed per distinct pair of runs) and averaged (+- sample sd). "
          "A run in which the circuit never formed is censored: its emergence step is only known to lie beyond its end "
          "('> N'); a censored delta is shown per pair as a bound and never averaged. Score at step R and area: the "
          "continuous outcomes (setting above), defined for every run. ICL: more negative = more in-context learning. Run mean: the curve's mean over every evaluation point, so a "
          "shift in timing moves it where final values have converged (the ICL and head-movement verdicts use it). "
          "Targeted / other heads: run-mean deltas of their mean circuit score on the seeds that start from the scored "
          "model's own weights.")
    rows = []
    for e in results["effects"]:
        runs = results["arms"][e["arm"]]["runs"]
        formed = [r["emergence"] for r in runs.values() if r["emergence"] is not None]
        if e["emergence_censored"]:
            delta = f"censored: {fmt_diffs(e['emergence_pairs'])}"
        else:
            delta = fmt_step(e["emergence_delta"], sign=True) + (f" +- {e['emergence_delta_std']:.0f}" if e["emergence_delta_std"] else "")
        rows.append([
            e["arm"], f"{e['formed']}/{len(runs)}", mean_sd(formed) + (f" (formed runs; {len(runs) - len(formed)} censored)" if len(formed) < len(runs) else ""),
            delta, fmt(e["score_at_reference_delta"], sign=True), fmt(e["auc_delta"], sign=True),
            fmt(e["score_final"]), fmt(e["score_delta"], sign=True), fmt(e["icl_delta"], sign=True),
            fmt(e["icl_mean_delta"], sign=True), fmt(e["heldout_loss_delta"], sign=True),
            fmt(e["targeted_mean_delta"], sign=True), fmt(e["other_mean_delta"], sign=True), fmt(e["movement_ratio"], 2),
        ])
    doc.table(["arm", "formed", "emergence step", "delta emergence", "delta score at step R", "delta area", "final score", "delta final score", "delta final ICL",
               "delta ICL (run mean)", "delta held-out loss", "delta targeted heads (run mean)",
               "delta other heads (run mean)", "targeted/other"], rows)

    controls_section(doc, results)

    doc.h2("Figures")
    for file, caption in figures:
        doc.img(file, caption)

    doc.h2("What the top rows are (class enrichment)")
    enr = results["enrichment"]
    if "error" in enr:
        doc.p(f"Class enrichment could not be computed: {enr['error']}")
    else:
        doc.p(f"Structural classes of the top {enr['top_k']:,} rows (the rows remove-top drops) against "
              f"{'a sample of ' if enr['base_sampled'] else ''}{enr['base_rows']:,} window rows; ratio = top share / base share "
              "with a 95% Wilson interval.")
        doc.table(["class", "top rows", "top share", "base share", "ratio", "95% CI"], [
            [c["label"], str(c["top_count"]), fmt(c["top_share"]), fmt(c["base_share"]), fmt(c["ratio"]),
             f"{fmt(c['ci_low'])} - {fmt(c['ci_high'])}" if c["ratio"] is not None else "-"] for c in enr["classes"]])
        doc.p("Share of the total positive influence carried by the top rows: "
              + ", ".join(f"{k} of rows: {fmt(v)}" for k, v in enr["tail_share"].items()))

    doc.h2("Every run")
    rows = []
    for arm in results["arm_names"]:
        for seed, r in sorted(results["arms"][arm]["runs"].items(), key=lambda kv: int(kv[0])):
            rows.append([arm, seed, fmt_run_emergence(r), fmt_step(r["emergence_targeted"]), fmt(r.get("score_at_reference")),
                         fmt(r.get("auc")), fmt(r["final"]["score"]), fmt(r["final"]["targeted"]), fmt(r["final"]["other"]), fmt(r["final"]["icl"]),
                         fmt(r["final"]["heldout_loss"]), r["run_dir"] + (f" (= {r['same_as']})" if r.get("same_as") else "")])
    doc.table(["arm", "seed", "emergence", "targeted emergence", "score at step R", "area", "final score", "targeted", "other", "ICL", "held-out loss",
               "run folder"], rows)

    doc.h2("Rerun")
    cmds = results["commands"]
    doc.p("The whole experiment (finished runs are skipped):")
    doc.code(cmds["experiment"])
    doc.p("One arm again (its runs and mixes are discarded and rebuilt; the report is rewritten):")
    doc.code("\n".join(cmds["rerun_arm"].values()))
    doc.p("The scores and every mix (what each arm trains on; `plan.json` in the mix folder is the arm's training plan):")
    lines = [results["scores"]["command"]] + [c["command"] for c in cmds["mixes"]]
    if b.get("command"):
        lines.insert(0, b["command"])
    doc.code("\n".join(lines))
    return doc


OUTCOME_TITLES = {
    "emergence": "emergence step",
    "score_at_reference": "circuit score at step R (the baseline's mean emergence step)",
    "auc": "area under the circuit curve (mean score over the common steps)",
}


def _num(v: float | None, outcome: str, sign: bool = True) -> str:
    if v is None:
        return "-"
    return fmt_step(v, sign=sign) if outcome == "emergence" else fmt(v, sign=sign)


def _shift_cell(shift: dict | None) -> str:
    """mean +- sd (n=3: per-pair values), or the per-pair values alone when one is censored (a bound)."""
    if shift is None:
        return "not run"
    outcome = shift["outcome"]
    values = fmt_diffs({"diffs": shift["values"], "censored": shift["censored"], "outcome": outcome,
                        "a_values": shift["a_values"], "b_values": shift["b_values"]})
    if any(shift["censored"]):
        return f"censored (n={len(shift['seeds'])}: {values})"
    text = _num(shift["mean"], outcome)
    if shift["sd"] is not None:
        text += f" +- {_num(shift['sd'], outcome, sign=False)}"
    return text + f" (n={len(shift['seeds'])}: {values})"


def _test_cell(paired: dict | None) -> str:
    """`diff +47, p = 0.005 (Holm 0.02)`, or the difference and why there is no test."""
    if paired is None:
        return "-"
    test = paired["test"]
    diff = paired["diffs"] and float(np.mean(paired["diffs"]))
    if test is None or test["p"] is None:
        note = paired["note"] or (test and test["note"]) or "no test"
        if any(paired["censored"]):
            return note
        return f"diff {_num(diff, paired['outcome'])}; {note}"
    return f"diff {_num(test['mean_diff'], paired['outcome'])}, {fmt_p(test)}"


def method_section(doc: Doc, results: dict) -> None:
    """The method tables (open the report), the Spearman correlations between methods, and which heads move."""
    table = results.get("method_table") or []
    if not table:
        return
    doc.h2("Methods compared")
    doc.p("Per scoring method and outcome: delay = the outcome of its remove-top arm minus the baseline's, advance = its "
          "augment-top arm's minus the baseline's (for the emergence step negative = sooner), paired by seed (one seed per "
          "distinct pair of runs): mean +- sample sd (per-pair values in brackets). A run that never formed is censored: "
          "its difference is a bound ('> +N'), with no mean and no test. "
          f"Tests: {results.get('method_test', 'paired t-test over seeds')}, against the random control of the same "
          "size (remove-random / augment-random) and against MDA's arm.")
    outcomes = list(dict.fromkeys(r.get("outcome", "emergence") for r in table))
    for outcome in outcomes:
        rows = []
        for r in table:
            if r.get("outcome", "emergence") != outcome:
                continue
            d, a = r["delay"], r["advance"]
            rows.append([r["method"], _shift_cell(d), _test_cell(d and d["vs_control"]), _test_cell(d and d["vs_mda"]),
                         _shift_cell(a), _test_cell(a and a["vs_control"]), _test_cell(a and a["vs_mda"]),
                         r["status"] + (f": {r['reason']}" if r["reason"] else "")])
        doc.p(f"Outcome: {OUTCOME_TITLES.get(outcome, outcome)}.")
        doc.table(["method", "delay (remove-top)", "vs remove-random", "vs MDA", "advance (augment-top)", "vs augment-random",
                   "vs MDA", "status"], rows)
    sp = results.get("spearman")
    if sp:
        doc.p(f"Spearman rank correlation between the methods' scores over the window's {sp['rows'] or 0:,} rows:")
        doc.table(["methods", "Spearman rho"], [[k.replace("|", " vs "), fmt(v)] for k, v in sp["rho"].items()])
    moves = results.get("head_movement") or []
    if moves:
        roles = results.get("head_roles") or {}
        counts = {role: sum(1 for r in roles.values() if r == role) for role in ("induction", "previous-token", "other")}
        doc.p("Which heads move: each head's role at the scored checkpoint (the baseline's evaluation at the window's end: "
              f"induction / previous-token score >= {results['threshold']:g}, else other; {counts['induction']} induction, "
              f"{counts['previous-token']} previous-token, {counts['other']} other heads); movement = mean over the role's "
              "heads of |run-mean circuit score, arm minus baseline| on the seeds that start from the scored model's weights.")
        doc.table(["arm", "induction heads", "previous-token heads", "other heads", "other / induction"], [
            [m["arm"], fmt(m["movement"]["induction"]), fmt(m["movement"]["previous-token"]), fmt(m["movement"]["other"]),
             fmt(m["ratio_other_induction"], 2)] for m in moves])


def write_report(folder: Path, results: dict, log: Log = lambda m: None) -> Path:
    """Write the report folder (atomically): figures, report.md, report.html, results.json."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        figures = make_figures(tmp, results)
        doc = build_doc(results, figures)
        (tmp / "report.md").write_text(render_md(doc))
        (tmp / "report.html").write_text(render_html(doc, tmp, f"{results['circuit']} causal validation"))
        write_json(tmp / RESULTS_FILE, results)
    log(f"report: {folder / 'report.md'}  {folder / 'report.html'}")
    return folder
