"""Markdown from the results file: the README's performance section and benchmarks/RESULTS.md.

Every number in these tables is read from results.json; nothing is typed by hand.
"""
from __future__ import annotations

import re
from pathlib import Path

from .common import fmt_s

START, END = "<!-- perf:start -->", "<!-- perf:end -->"
ORDER = ("course", "head_fit", "extraction", "accuracy", "scaling", "one_look")


def _num(v, unit: str = "") -> str:
    if v is None:
        return "—"
    if unit == "s":
        return fmt_s(v)
    if unit == "%":
        return f"{v:.1f} %"
    if unit in ("GB", "GiB"):  # memory is measured in binary units (bytes / 2**30, / 2**20)
        return f"{v:.2f} GiB"
    if unit in ("MB", "MiB"):
        return f"{v:,.0f} MiB"
    if unit == "images/s":
        return f"{v:,.1f} images/s"
    if unit == "ms/photo":
        return f"{v:,.1f} ms/photo"
    return f"{v:,.3g} {unit}".strip()


def _ratio(f: dict) -> str:
    r, lab = f.get("ratio"), f.get("ratio_label", "")
    if r is None:
        return lab or "—"
    if lab.startswith("of "):  # a share: "of fastest", "of model-only"
        return f"{100 * r:.0f} % {lab}"
    return f"{r:,.1f}{lab}" if lab.startswith("×") else f"{r:,.2f} {lab}"


def _met(f: dict) -> str:
    return {True: "yes", False: "**no**", None: ""}[f.get("met")]


def _value(f: dict) -> str:
    s = _num(f["value"], f["unit"])
    if f.get("spread") is not None and f["unit"] == "%":
        s = f"{f['value']:.1f} ± {f['spread']:.1f} %"  # 95 % t-interval over seeds
    return s


def machine_line(results: dict) -> str:
    secs = [results["sections"][k] for k in ORDER if k in results.get("sections", {})]
    if not secs:
        return "No results yet."
    m = secs[0]["machine"]
    dates = sorted(s["started"][:10] for s in secs)
    loads = [s["loadavg_before"][0] for s in secs if s.get("loadavg_before")] + \
            [s["loadavg_after"][0] for s in secs if s.get("loadavg_after")]
    date = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    cpus: dict[str, list[str]] = {}
    for k in ORDER:
        if k in results.get("sections", {}):
            cpus.setdefault(results["sections"][k]["machine"]["cpu"], []).append(k)
    cpu = m["cpu"] if len(cpus) == 1 else "; ".join(f"{c} ({', '.join(ks)})" for c, ks in cpus.items())
    line = (f"Measured on {date}: {cpu}, **{m['cores']} cores**, {m['memory_gb']} GiB RAM, "
            f"**{m['device']}**, torch {m['torch']} ({m['torch_threads']} threads), Python {m['python']}.")
    if loads:
        line += (f" 1-minute load average during the runs: {min(loads):.1f}–{max(loads):.1f} "
                 f"(on {m['cores']} cores; above {m['cores']} means other work shared the CPU and the "
                 f"timings are pessimistic).")
    if results.get("mode") == "smoke":
        line += " **Smoke mode: tiny sizes, the figures are not meaningful.**"
    return line


def headline_table(results: dict) -> str:
    rows = ["| Benchmark | Measured | Compared with (same run) | Typed reference (not measured) | Ratio | Target "
            "| Met | Measured on | Commit |",
            "|---|---|---|---|---|---|---|---|---|"]
    for key in ORDER:
        sec = results.get("sections", {}).get(key)
        if not sec:
            continue
        for f in sec["figures"]:
            vs = f"{f['vs_label']}: {_num(f['vs_value'], f['unit'])}" if f.get("vs_value") is not None \
                else f.get("vs_label", "")
            rows.append(f"| {f['label']} | {_value(f)} | {vs or '—'} | {f.get('reference') or '—'} | {_ratio(f)} | "
                        f"{f.get('target', '')} | {_met(f)} | "
                        f"{(f.get('measured') or sec.get('started', '?'))[:16].replace('T', ' ')} | "
                        f"{f.get('commit') or sec.get('commit', 'not recorded')} |")
    return "\n".join(rows)


def accuracy_table(results: dict) -> str:
    sec = results.get("sections", {}).get("accuracy")
    if not sec:
        return ""
    d = sec["details"]
    cols = d["columns"]
    rows = ["| Method | " + " | ".join(c["label"] for c in cols) + " |",
            "|---|" + "---|" * len(cols)]
    for m in d["methods"]:
        cells = []
        for c in cols:
            v = d["table"].get(m["key"], {}).get(c["key"])
            if v is None:
                cells.append("—")
            else:
                spread = v.get("ci95", v.get("std"))
                txt = f"{v['mean']:.1f} ± {spread:.1f}"
                if v.get("seeds") != d["seeds"]:
                    txt += f" ({v['seeds']} seeds)"
                cells.append(txt)
        rows.append(f"| {m['label']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


LOWER_IS_BETTER = ("eer", "eer_deg", "prod_eer_deg")


def baseline_gap(results: dict, ours: str = "product", baseline: str = "dlib") -> str:
    """One line per column: ours minus the baseline, paired by seed (mean ± 95 % t-interval), and who is
    ahead beyond the interval; "" when either row is missing."""
    from scipy import stats

    sec = results.get("sections", {}).get("accuracy")
    table = sec["details"]["table"] if sec else {}
    if ours not in table or baseline not in table:
        return ""
    d = sec["details"]
    label = {m["key"]: m["label"] for m in d["methods"]}
    parts = []
    for c in d["columns"]:
        a, b = table[ours].get(c["key"]), table[baseline].get(c["key"])
        if not a or not b or len(a["runs"]) != len(b["runs"]) or len(a["runs"]) < 2:
            continue
        diff = [x - y for x, y in zip(a["runs"], b["runs"])]
        n = len(diff)
        mean = sum(diff) / n
        sd = (sum((x - mean) ** 2 for x in diff) / (n - 1)) ** 0.5
        half = float(stats.t.ppf(0.975, n - 1)) * sd / n ** 0.5
        better = -mean if c["key"] in LOWER_IS_BETTER else mean
        verdict = ("no clear difference" if abs(mean) <= half else f"{ours} better" if better > 0
                   else f"{baseline} better")
        parts.append(f"{c['label']} {mean:+.1f} ± {half:.1f} ({verdict})")
    if not parts:
        return ""
    return (f"**{ours} minus {baseline}**, paired by seed (%-points, mean ± 95 % t-interval over {d['seeds']} seeds; "
            f"{baseline}: {label.get(baseline, baseline)}): " + "; ".join(parts) + ".")


def dev_table(d: dict) -> list[str]:
    cols = d["dev_columns"]
    out = ["| Candidate (cheapest first) | " + " | ".join(cols) + " | score | threshold |",
           "|---|" + "---|" * (len(cols) + 2)]
    for key, v in d["dev"].items():
        mark = " **(winner)**" if key == d["dev_winner"] else (" (best whitening)" if key == d.get("dev_best_whitening")
                                                               else "")
        out.append(f"| {v['label']}{mark} | " + " | ".join(f"{v[c]:.1f}" for c in cols)
                   + f" | {v['score']:.2f} | {v['threshold']:.3f} |")
    return out


def _ms_cell(t: dict | None) -> str:
    return "—" if not t else f"{t['ms']:.2f} ({t['min']:.2f}–{t['max']:.2f})"


def _delta(g: dict, key: str) -> str:
    if key not in g:
        return "—"
    half = g.get(f"{key}_ci95")
    return f"{g[key]:+.1f}" + (f" ± {half:.1f}" if half == half and half is not None else "")


def speed_table(results: dict) -> str:
    """Every engine: model only and end to end (ms/photo, median (min–max) over alternating rounds), speed
    against eager fp32 PyTorch, the accuracy change on development people and whether it is usable."""
    sec = results.get("sections", {}).get("extraction")
    if not sec or "engines" not in sec.get("details", {}):
        return ""
    d, c = sec["details"], sec["config"]
    rows = [f"Engines on the same prepared batches ({d['backbone']}, {c['photos']} photos, batches of {c['batch']}, "
            f"{c['threads']} threads; median (min–max) of {c['rounds']} alternating round(s) after {c['warmup_passes']} "
            "warm-up passes). Model only: the engine on ready batches; end to end: decoded photos -> "
            "`helpers.data.preprocess.to_batch` -> the engine. Δ: engine minus eager fp32 on development people's "
            f"features ({c['gate_photos']} photos; %-points, mean ± 95 % t-interval over draws); {c['gate']}.", "",
            "| Engine | model only, ms/photo | end to end, ms/photo | × eager fp32 (model only) | Δ identification "
            "| Δ strangers' EER | lowest cosine (info) | usable? |",
            "|---|---|---|---|---|---|---|---|"]
    for k, r in d["engines"].items():
        if "error" in r:
            rows.append(f"| {r['label']} | cannot run here: {r['error']} | | | | | | |")
            continue
        g = r["gate"]
        usable = "yes" if r["usable"] else f"**no** ({g.get('why', '')})"
        rows.append(f"| {r['label']} | {_ms_cell(r['model'])} | {_ms_cell(r.get('e2e'))} | {r['x_eager']:.2f}× | "
                    f"{_delta(g, 'd_identification')} | {_delta(g, 'd_eer')} | {g.get('min_cosine', '—')} | {usable} |")
    return "\n".join(rows)


def recogniser_table(results: dict) -> str:
    """The recogniser from a JPEG file to its answer, step by step, beside dlib's pipeline on the same files."""
    sec = results.get("sections", {}).get("extraction")
    rec = (sec or {}).get("details", {}).get("recogniser")
    if not rec:
        return ""
    rows = [f"From a JPEG file to the answer ({rec['photos']} phone-like scenes of development people, "
            f"{rec['rounds']} alternating round(s), input {rec['input_size']} px; ms/photo, median (min–max); right "
            "answers: a sanity check on a few photos, not an accuracy figure):", "",
            "| Pipeline | ms/photo | steps, ms/photo (share) | right answers | no face found |", "|---|---|---|---|---|"]
    for name, title in (("product", "the product's recogniser"), ("dlib", "dlib face_recognition")):
        r = rec.get(name, {})
        if "ms_per_photo" not in r:
            rows.append(f"| {title} | {r.get('error') or r.get('skipped') or 'not measured'} | | | |")
            continue
        what = f" ({r['finder']}; {r['method']})" if name == "product" else f" ({r['pipeline']})"
        steps = "; ".join(f"{s} {v:.1f} ({100 * (r['steps_share'][s] or 0):.0f} %)" for s, v in r["steps_ms"].items())
        if r.get("mirror_pass_ms") is not None:
            steps += f"; of which the mirror pass {r['mirror_pass_ms']:.1f}"
        rows.append(f"| {title}{what} | {r['ms_per_photo']:.1f} ({r['ms_min']:.1f}–{r['ms_max']:.1f}) | {steps} | "
                    f"{r['right']}/{rec['photos']} | {r['no_face']} |")
    if rec.get("dlib_over_product"):
        rows += ["", f"dlib's time / the product's time: {rec['dlib_over_product']:.2f} (median of per-round ratios)."]
    return "\n".join(rows)


def readme_section(results: dict) -> str:
    parts = [
        "## Performance",
        "",
        "Generated by `bash course.sh bench` (`python -m benchmarks`) from "
        "[`benchmarks/results.json`](benchmarks/results.json); details in "
        "[`benchmarks/RESULTS.md`](benchmarks/RESULTS.md). " + machine_line(results),
        "",
        headline_table(results),
    ]
    speed = speed_table(results)
    if speed:
        parts += ["", "### Speed", "", speed, "", recogniser_table(results)]
    acc = accuracy_table(results)
    if acc:
        sec = results["sections"]["accuracy"]
        d = sec["details"]
        parts += ["", f"Accuracy on the offline ORL faces, **30 test people (s11–s40)**, every choice made on 10 "
                  f"development people (s1–s10) (%, mean ± 95 % t-interval over {d['seeds']} seeds; "
                  "identification: 1-NN by cosine over the enrolled photos, 5 test photos per person; "
                  "EER: lower is better; protocol in benchmarks/RESULTS.md):", "", acc]
        gap = baseline_gap(results)
        if gap:
            parts += ["", gap]
    look = one_look_paragraph(results)
    if look:
        parts += ["", look]
    return "\n".join(parts)


def one_look_paragraph(results: dict) -> str:
    """What the rows from the one-look protocols mean, with the families' spread, from the stored looks."""
    sec = results.get("sections", {}).get("one_look")
    if not sec or not sec["details"].get("families_product"):
        return ""
    fam = sec["details"]["families_product"]
    degraded = {f: v for f, v in fam.items() if f != "clean"}
    ka = sorted((v["known_accepted"][0], f) for f, v in degraded.items())
    sa_max = max(v["strangers_accepted"][0] for v in fam.values())
    ident = sorted((v["identification"][0], f) for f, v in degraded.items())
    return ("**One-look protocols** (rows marked *test people* above; `benchmarks/ONE_LOOK.md`, "
            "`benchmarks/FAMILIES.md`; protocols and looks logs in `benchmarks/protocols/`). Each protocol was "
            "written before its runs, made every choice on 10 development people and looked once at 20 test "
            "people; the figures are recomputed from the stored per-query results, and a target counts as met "
            "only when the 95 % interval's bound meets it. In the degradation families that are not enrolment "
            f"augmentations (low resolution, gamma, one-sided light, colour casts, noise, sunglasses, masks, "
            f"tight and loose crops) identification ranges from {ident[0][0]:.1f} % ({ident[0][1]}) to "
            f"{ident[-1][0]:.1f} % ({ident[-1][1]}), but the saved threshold accepts only {ka[0][0]:.1f} % "
            f"({ka[0][1]}) to {ka[-1][0]:.1f} % ({ka[-1][1]}) of known people's photos, and at most {sa_max:.1f} % of "
            "strangers' photos in any family: a degraded or covered face is answered \"unknown\", not let in."
            + nested_sentence(sec["details"]))


def nested_sentence(details: dict) -> str:
    """The nested development-halves check of the choices, in words."""
    out = []
    for key, what in (("threshold_nested", "threshold rule"), ("alignment_nested", "face finder")):
        n = details.get(key)
        if n:
            same = all(h == n["all"] for h in n["halves"])
            out.append(f"the {what} `{n['all']}` " + ("is also the winner on each half of the development people"
                       if same else f"is not the winner on both halves of the development people "
                                    f"({', '.join(f'`{h}`' for h in n['halves'])})"))
    return (" Nested check: " + "; ".join(out) + ".") if out else ""


def update_readme(path: Path, results: dict) -> bool:
    """Replace the text between the perf markers; False (untouched) if the markers are missing."""
    text = path.read_text()
    if START not in text or END not in text:
        print(f"[bench] {path}: markers {START} ... {END} not found; README left as it is")
        return False
    new = re.sub(re.escape(START) + r".*?" + re.escape(END),
                 lambda _: f"{START}\n{readme_section(results)}\n{END}", text, count=1, flags=re.S)
    path.write_text(new)
    return True


def results_markdown(results: dict) -> str:
    """The full report: every section's figures, details and notes."""
    out = ["# Benchmark results", "",
           "Generated from `benchmarks/results.json` by `python -m benchmarks` (do not edit by hand).", "",
           machine_line(results), "", "## Headline figures", "", headline_table(results)]
    secs = results.get("sections", {})
    if "course" in secs:
        s = secs["course"]
        out += ["", "## Whole course", "", _meta(s),
                "", "| Notebook | Wall time (median) | Runs | Kernel peak memory | Child processes (upper bound) | Errors |",
                "|---|---|---|---|---|---|"]
        for name, v in s["details"]["notebooks"].items():
            out.append(f"| {name} | {fmt_s(v['seconds'])} | {', '.join(fmt_s(x) for x in v['runs_s'])} | "
                       f"{v['peak_rss_mb']:,.0f} MiB | {v.get('children_rss_mb', 0) or 0:,.0f} MiB | "
                       f"{'; '.join(v['errors']) or ''} |")
    if "head_fit" in secs:
        s = secs["head_fit"]
        d = s["details"]
        out += ["", "## Frozen head fit", "", _meta(s), "",
                f"- head fit runs (s): {d['head_fit_s']['runs_s']}",
                f"- one-off extraction runs (s): {d['extraction_s']['runs_s']}",
                f"- guide's loop, measured epochs (s): {d['guide_epoch_s']} -> "
                f"{d['guide_50_epochs_s_extrapolated']} s for {s['config']['epochs']} epochs",
                f"- extra memory (MiB): {d['peak_rss_mb']}"]
    if "extraction" in secs:
        s = secs["extraction"]
        out += ["", "## Speed", "", _meta(s)]
        if "engines" in s["details"]:
            d = s["details"]
            out += ["", f"**{d['backbone']}** ({d['weights']}); CPU flags: "
                    + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in d["cpu_flags"].items() if k != "read")
                    + f"; OpenVINO's precision without a hint: {d.get('openvino_default_precision')}.", "",
                    speed_table(results), "", recogniser_table(results), "", "Engine settings:", ""]
            for k, r in d["engines"].items():
                if "info" in r:
                    out.append(f"- `{k}`: " + ", ".join(f"{a}={b}" for a, b in r["info"].items()))
        else:  # a results file from before the fair-speed benchmark
            out += ["", "(an older extraction run: rerun `python -m benchmarks --only extraction`)"]
    if "accuracy" in secs:
        s = secs["accuracy"]
        d = s["details"]
        out += ["", "## Accuracy protocol", "", _meta(s), "", accuracy_table(results)]
        if d.get("dev"):
            out += ["", "### Development people: every candidate", "",
                    f"On development people only (ORL s1–s10, seeds {s['config'].get('dev_seeds')}); never on test "
                    f"people. Winner: `{d['dev_winner']}`; settings used by the product's default: "
                    f"{d['chosen_settings']}; library default: {d['library_default']}.", ""] + dev_table(d)
        if d.get("protocol"):
            out += ["", "### Protocol", ""] + [f"- {p}" for p in d["protocol"]]
    if "scaling" in secs:
        s = secs["scaling"]
        out += ["", "## Scaling", "", _meta(s), "",
                "| N | head fit | ms/item | head fit extra MiB | extraction | ms/image | extraction extra MiB | "
                "features MiB | all inputs at once MiB |", "|---|---|---|---|---|---|---|---|---|"]
        for r in s["details"]["rows"]:
            out.append(f"| {r['n']:,} | {fmt_s(r['head_fit_s'])} | {r['head_fit_ms_per_item']} | "
                       f"{r['head_fit_peak_rss_mb']} | {fmt_s(r['extraction_s'])} | {r['extraction_ms_per_image']} | "
                       f"{r['extraction_peak_rss_mb']} | {r['features_mb']} | {r['all_input_tensors_mb']:,.0f} |")
    return "\n".join(out) + "\n"


def _meta(s: dict) -> str:
    lines = [f"Run {s['started']} ({fmt_s(s['seconds'])}), load average before/after "
             f"{s.get('loadavg_before')} / {s.get('loadavg_after')}. Settings: "
             + ", ".join(f"{k}={v}" for k, v in s.get("config", {}).items()) + "."]
    lines += [f"> {n}" for n in s.get("notes", [])]
    return "\n\n".join(lines)
