"""The benchmarks still run: `python -m benchmarks --smoke` (tiny sizes) into a temporary folder.

Checks the pipeline and the files it writes, never the speed (speed figures come from the
full run, `bash course.sh bench`). The committed results file must not be touched.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "benchmarks" / "results.json"
SECTIONS = report.ORDER   # every section, the one-look protocols included
README = "# Title\n\nbefore\n\n<!-- perf:start -->\nold table\n<!-- perf:end -->\n\nafter\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    (tmp / "README.md").write_text(README)
    committed = COMMITTED.read_bytes() if COMMITTED.exists() else None
    env = {**os.environ, "FACE_COURSE_CACHE": str(tmp / "cache"), "FACE_COURSE_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--out", str(tmp / "results.json"),
                           "--readme", str(tmp / "README.md")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, proc, committed


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.mark.slow
def test_results_file_is_well_formed(smoke):
    tmp, _, _ = smoke
    res = json.loads((tmp / "results.json").read_text())
    assert res["mode"] == "smoke"
    assert set(res["sections"]) == set(SECTIONS)
    keys = []
    for name, sec in res["sections"].items():
        m = sec["machine"]
        assert m["cores"] >= 1 and m["torch"]
        assert m["device"] == "CPU" or m["device"].startswith("GPU")
        assert len(sec["loadavg_before"]) == 3 and sec["started"]
        assert sec["figures"], f"{name}: no figures"
        for f in sec["figures"]:
            assert _finite(f["value"]), (name, f)
            assert f["vs_value"] is None or _finite(f["vs_value"]), (name, f)
            keys.append(f["key"])
    assert len(keys) == len(set(keys)), "figure keys must be unique"


@pytest.mark.slow
def test_each_benchmark_measured_its_comparison(smoke):
    tmp, _, _ = smoke
    s = json.loads((tmp / "results.json").read_text())["sections"]
    nb = s["course"]["details"]["notebooks"]
    assert nb and all(v["peak_rss_mb"] > 50 and v["seconds"] > 0 and not v["errors"] for v in nb.values())
    hf = {f["key"]: f for f in s["head_fit"]["figures"]}
    assert hf["head_fit.seconds"]["vs_value"] > hf["head_fit.seconds"]["value"] > 0  # guide's loop is slower
    ext = s["extraction"]["details"]  # the fair speed benchmark; its own checks: tests/test_benchmarks_speed.py
    ran = {k for k, r in ext["engines"].items() if "error" not in r}
    assert {"torch-fp32", "helpers-ort", "ort-fp32", "int8-static"} <= ran and ext["reference"] == "torch-fp32"
    assert ext["recogniser"]["product"]["ms_per_photo"] > 0
    acc = s["accuracy"]["details"]
    methods = {m["key"] for m in acc["methods"]}
    assert {"raw", "frozen", "probe", "arcface", "tuned", "arcface+"} <= methods
    for key in methods:
        row = acc["table"][key]
        assert row, key
        assert all(0 <= v["mean"] <= 100 and v["seeds"] == acc["seeds"] for v in row.values()), key
    assert "eer" not in acc["table"]["probe"]  # a classifier has no embedding for strangers
    assert set(acc["table"]["tuned"]) >= {c["key"] for c in acc["columns"]}
    assert acc["dev"] and acc["dev_winner"] in acc["dev"] and acc["chosen_settings"]
    for sec in s.values():  # every row says when and at which commit it was measured
        assert sec["started"] and sec["commit"]
    rows = s["scaling"]["details"]["rows"]
    assert [r["n"] for r in rows] == sorted(r["n"] for r in rows) and len(rows) >= 2


@pytest.mark.slow
def test_readme_table_generated_between_markers_only(smoke):
    tmp, _, _ = smoke
    text = (tmp / "README.md").read_text()
    res = json.loads((tmp / "results.json").read_text())
    assert "old table" not in text
    assert text.startswith("# Title\n\nbefore\n\n<!-- perf:start -->\n## Performance")
    assert text.endswith("<!-- perf:end -->\n\nafter\n")
    assert "| Benchmark | Measured |" in text and "| Method |" in text
    assert "Typed reference (not measured)" in text and "| Commit |" in text
    assert " MB" not in text and " GB" not in text.replace("GB RAM", "")  # binary units: MiB, GiB
    assert res["sections"]["head_fit"]["machine"]["torch"] in text
    md = (tmp / "RESULTS.md").read_text()
    assert "## Whole course" in md and "## Scaling" in md and "### Protocol" in md


@pytest.mark.slow
def test_committed_results_untouched(smoke):
    _, _, before = smoke
    after = COMMITTED.read_bytes() if COMMITTED.exists() else None
    assert after == before


def test_update_readme_without_markers_leaves_file(tmp_path):
    p = tmp_path / "README.md"
    p.write_text("no markers here\n")
    assert report.update_readme(p, {"sections": {}}) is False
    assert p.read_text() == "no markers here\n"


@pytest.mark.slow
def test_report_regenerates_from_results_file(smoke, tmp_path):
    tmp, _, _ = smoke
    out = tmp_path / "results.json"
    out.write_text((tmp / "results.json").read_text())
    (tmp_path / "README.md").write_text(README)
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--report-only", "--out", str(out),
                           "--readme", str(tmp_path / "README.md")], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "README.md").read_text() == (tmp / "README.md").read_text()


# ------------------------------------------------------------------ the protocol's building blocks

def test_protocol_splits_and_degradations_are_deterministic():
    import numpy as np
    from PIL import Image

    from benchmarks.protocol import degrade, identification_split, known_people, strangers_split

    labels = np.repeat(np.arange(6), 10)
    a1, a3 = identification_split(labels, 1, seed=3), identification_split(labels, 3, seed=3)
    assert np.array_equal(a1.test, a3.test)  # test photos do not depend on k
    assert set(a1.train) <= set(a3.train) and not set(a3.train) & set(a3.test)
    assert np.bincount(labels[a3.train]).tolist() == [3] * 6 and np.bincount(labels[a3.test]).tolist() == [5] * 6
    assert not np.array_equal(identification_split(labels, 1, seed=4).test, a1.test)
    tr, st = strangers_split(40, seed=2)
    assert len(tr) == len(st) == 20 and not set(tr) & set(st)
    assert len(known_people(40, 9, 1)) == 9
    img = Image.fromarray((np.arange(92 * 112 * 3) % 251).astype("uint8").reshape(112, 92, 3))
    d1, d2 = degrade(img, 0, 5), degrade(img, 0, 5)
    assert np.array_equal(np.asarray(d1), np.asarray(d2)) and d1.size == img.size
    assert not np.array_equal(np.asarray(degrade(img, 1, 5)), np.asarray(d1))


def test_development_and_test_people_never_meet():
    import numpy as np

    from benchmarks import accuracy as A

    assert not set(A.DEV_PEOPLE) & set(A.TEST_PEOPLE)
    assert sorted([*A.DEV_PEOPLE, *A.TEST_PEOPLE]) == list(range(40)) and len(A.TEST_PEOPLE) == 30
    a, b = A.halves(A.TEST_PEOPLE, 3)
    assert set(a) | set(b) == set(A.TEST_PEOPLE) and not set(a) & set(b)
    assert np.array_equal(A.halves(A.TEST_PEOPLE, 3)[0], a)


def test_ties_on_development_people_go_to_the_cheaper_candidate():
    from benchmarks.accuracy import choose

    dev = {"cheap": {"score": 90.0}, "dear": {"score": 90.0}, "best": {"score": 91.0}}
    assert choose(dev, ["cheap", "dear"]) == "cheap" and choose(dev, ["dear", "cheap"]) == "dear"
    assert choose(dev, ["cheap", "dear", "best"]) == "best"


def test_interval_is_a_t_interval_over_seeds():
    from benchmarks.accuracy import summary

    s = summary([90.0, 92.0, 94.0, 96.0, 98.0])
    assert s["mean"] == 94.0 and s["seeds"] == 5
    assert s["ci95"] == pytest.approx(2.776 * 3.162 / 5 ** 0.5, abs=0.01)  # t(0.975, 4) * sd / sqrt(n)


def test_lazy_images_stop_where_their_length_says():
    """The scaling benchmark's lazily served images iterate like a list: `list()` of 5 gives 5 (without
    IndexError past the end, `Sequence.__iter__` never stopped and the smoke run filled the memory)."""
    from benchmarks.scaling import LazyImages

    pool = ["a", "b", "c"]
    assert list(LazyImages(pool, 5)) == ["a", "b", "c", "a", "b"]
    assert LazyImages(pool, 5)[-1] == "b" and LazyImages(pool, 5)[1:3] == ["b", "c"]
    with pytest.raises(IndexError):
        LazyImages(pool, 5)[5]


def test_baseline_gap_is_paired_by_seed_and_says_who_is_ahead():
    """The README's line under the accuracy table: product minus dlib per column, paired by seed."""
    def row(*runs):
        return {"runs": list(runs), "mean": sum(runs) / len(runs)}
    results = {"sections": {"accuracy": {"details": {
        "seeds": 3,
        "columns": [{"key": "id_k1", "label": "k=1"}, {"key": "eer", "label": "strangers' EER"},
                    {"key": "tar", "label": "TAR"}],
        "methods": [{"key": "product", "label": "the product"}, {"key": "dlib", "label": "dlib 128-D"}],
        "table": {"product": {"id_k1": row(90, 92, 94), "eer": row(5, 6, 7), "tar": row(80, 90, 85)},
                  "dlib": {"id_k1": row(99, 100, 99), "eer": row(1, 1, 1), "tar": row(85, 80, 86)}}}}}}
    line = report.baseline_gap(results)
    assert "k=1 -7.3 ± 5.2 (dlib better)" in line     # paired: -9, -8, -5; t(2) = 4.30 x sd 2.08 / sqrt 3
    assert "strangers' EER +5.0 ± 2.5 (dlib better)" in line                             # lower EER is better
    assert "TAR +1.3 ±" in line and "(no clear difference)" in line
    del results["sections"]["accuracy"]["details"]["table"]["dlib"]
    assert report.baseline_gap(results) == ""                                            # no row, no line


@pytest.mark.slow
def test_rerunning_some_accuracy_methods_keeps_the_other_rows(smoke):
    """`--methods raw` reruns one row and keeps the others from the results file (it crashed: the
    previous run's results were shadowed by the 'previous default' method's variable)."""
    tmp, _, _ = smoke
    before = json.loads((tmp / "results.json").read_text())["sections"]["accuracy"]["details"]["table"]
    env = {**os.environ, "FACE_COURSE_CACHE": str(tmp / "cache"), "FACE_COURSE_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--only", "accuracy", "--methods", "raw",
                           "--out", str(tmp / "results.json"), "--readme", str(tmp / "README.md")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sec = json.loads((tmp / "results.json").read_text())["sections"]["accuracy"]
    assert set(sec["details"]["table"]) == set(before)
    assert any("rows kept from an earlier run" in n and "rerun here: raw" in n for n in sec["notes"]), sec["notes"]
    assert sec["details"]["table"]["frozen"] == before["frozen"]
