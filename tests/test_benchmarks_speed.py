"""The fair speed benchmark (benchmarks/extraction.py): its structure, its gate, and that the gate can fail.

Never timed: the speed figures come from the full run on an idle machine (`bash course.sh bench`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import engine_gate as G

REPO = Path(__file__).resolve().parents[1]
README = "# Title\n\n<!-- perf:start -->\nold table\n<!-- perf:end -->\n"


def _clusters(seed: int = 0, people: int = 10, photos: int = 7, dim: int = 16, noise: float = 0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, dim))
    labels = np.repeat(np.arange(people), photos)
    return centres[labels] + noise * rng.normal(size=(len(labels), dim)), labels


def test_the_reference_itself_is_usable_and_changes_nothing():
    x, y = _clusters()
    g = G.gate(x, x.copy(), y)
    assert g["usable"] and g["d_identification"] == 0 and g["d_eer"] == 0 and g["min_cosine"] == pytest.approx(1)


def test_a_broken_engine_is_not_usable():
    """Features of the wrong photos (a batch's rows shuffled) lose identification and raise the EER."""
    x, y = _clusters()
    g = G.gate(x, x[np.random.default_rng(0).permutation(len(x))], y)
    assert not g["usable"] and g["d_identification"] < -G.TOLERANCE["identification"] and "identification" in g["why"]
    assert not G.gate(x, np.full_like(x, np.nan), y)["usable"]


def test_the_gate_looks_at_accuracy_not_at_the_cosine():
    """A small perturbation lowers the cosine well below the old 0.999 gate and keeps the answers."""
    x, y = _clusters(noise=0.1)
    noisy = x + 0.05 * np.random.default_rng(1).normal(size=x.shape) * np.abs(x).mean()
    g = G.gate(x, noisy, y)
    assert g["min_cosine"] < 0.999 and g["usable"]


def test_calibration_and_evaluation_photos_are_development_people_apart():
    from helpers.data.folders import load_orl

    from benchmarks.threshold import partition

    orl = load_orl()
    dev = partition()["dev"]
    cal, ev = G.dev_split(orl.labels, dev)
    assert len(cal) == G.N_CALIBRATION and not set(cal) & set(ev)
    assert set(orl.labels[cal]) == set(dev) and set(orl.labels[ev]) == set(dev)
    assert len(cal) + len(ev) == 10 * len(dev)
    enrol, queries, strangers = G.draw(np.asarray(orl.labels)[ev], 0)
    assert len(set(orl.labels[ev][enrol])) == G.KNOWN and not set(enrol) & set(queries)
    assert not set(orl.labels[ev][strangers]) & set(orl.labels[ev][enrol])


def test_engine_rows_mark_a_broken_engine_not_usable():
    """The benchmark's own loop (tiny: 2 engines and a broken one, 32 px, 1 round) keeps the broken engine's
    timings and says it is not usable."""
    from benchmarks import engines as E
    from benchmarks import extraction as X
    from benchmarks.threshold import partition
    from helpers.models.backbones import load_backbone
    from helpers.data.folders import load_orl

    orl = load_orl()
    bb = load_backbone("efficientnet_lite0", allow_download=False, verbose=False)
    cal, ev = G.dev_split(orl.labels, partition()["dev"])

    def broken(built):
        ref = built["torch-fp32"]
        return E.Engine("broken", "reference on the batch shuffled", lambda b: ref.run(
            np.ascontiguousarray(b[np.random.default_rng(0).permutation(len(b))])))

    rows, facts = X.engine_rows(bb, 48, [orl.images[i] for i in ev[:8]], [orl.images[i] for i in ev],
                                np.asarray(orl.labels)[ev], [orl.images[i] for i in cal], rounds=1, warmup=1,
                                include=("torch-fp32", "ort-fp32"), extra=[broken])
    assert rows["torch-fp32"]["usable"] and rows["torch-fp32"]["x_eager"] == 1.0
    assert rows["broken"]["usable"] is False and rows["broken"]["gate"]["why"]
    for r in rows.values():
        assert r["model"]["ms"] > 0 and r["e2e"]["ms"] > 0 and len(r["model"]["rounds"]) == 1
    assert "avx512_bf16" in facts["cpu_flags"] or not facts["cpu_flags"]["read"]


@pytest.mark.slow
def test_smoke_run_reports_every_engine_and_the_recogniser(tmp_path):
    (tmp_path / "README.md").write_text(README)
    env = {**os.environ, "FACE_COURSE_CACHE": str(tmp_path / "cache"), "FACE_COURSE_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--only", "extraction",
                           "--out", str(tmp_path / "results.json"), "--readme", str(tmp_path / "README.md")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from benchmarks.extraction import ENGINE_KEYS

    sec = json.loads((tmp_path / "results.json").read_text())["sections"]["extraction"]
    d = sec["details"]
    assert set(d["engines"]) >= set(ENGINE_KEYS)
    ran = {k: r for k, r in d["engines"].items() if "error" not in r}
    assert {"torch-fp32", "helpers-ort", "ort-fp32", "int8-static"} <= set(ran)
    for k, r in ran.items():
        assert r["model"]["ms"] > 0 and r["e2e"]["ms"] > 0 and isinstance(r["usable"], bool), k
        assert r["gate"]["draws"] == G.DRAWS and "min_cosine" in r["gate"], k
    assert ran["torch-fp32"]["gate"]["d_identification"] == 0 and ran["torch-fp32"]["usable"]
    assert ran["int8-static"]["precision"] == "int8" and ran["helpers-ort"]["precision"] == "fp32"
    if "openvino-f32" in ran:
        assert ran["openvino-f32"]["info"]["reported_precision"] == "f32"
    rec = d["recogniser"]
    p = rec["product"]
    assert p["ms_per_photo"] > 0 and p["same_as_embed"] and set(p["steps_ms"]) == {
        "decode", "detect + align", "preprocess", "network (incl. mirror pass)", "answer"}
    assert sum(p["steps_ms"].values()) == pytest.approx(p["ms_per_photo"], rel=0.01, abs=0.05)
    assert "ms_per_photo" in rec["dlib"] or "skipped" in rec["dlib"] or "error" in rec["dlib"]
    readme = (tmp_path / "README.md").read_text()
    assert "old table" not in readme and "### Speed" in readme and "| Engine | model only" in readme
    assert "| Pipeline | ms/photo" in readme
    assert "## Speed" in (tmp_path / "RESULTS.md").read_text()
