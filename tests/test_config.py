"""configs/config.yaml, the guide's configuration file, read by `python -m helpers finetune --config`
(helpers/config.py): keys -> trainer flags, flags on the command line win, the resolved configuration is
logged, and a wrong key or value is one clear line naming it."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import cli
from helpers import config as C

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "configs" / "config.yaml"


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_the_shipped_file_has_the_guides_switch_and_the_courses_settings():
    settings = C.load_config(SHIPPED)
    assert settings["model.freeze_backbone"] is True                # the guide's default: frozen
    for key in ("model.backbone", "model.embedding_size", "model.head.s", "model.head.m", "training.epochs"):
        assert key in settings, key
    assert "model:\n" in SHIPPED.read_text() and "  freeze_backbone: true" in SHIPPED.read_text()


def test_the_shipped_file_becomes_trainer_settings():
    from helpers.train.trainer import parse_args
    cfg = parse_args(C.flags_from_config(SHIPPED))
    settings = C.load_config(SHIPPED)
    assert cfg.stages == "none" and cfg.data == settings["data.path"] and cfg.epochs == settings["training.epochs"]
    assert cfg.scale == settings["model.head.s"] and cfg.head == settings["model.head.type"]
    assert cfg.margin is None and cfg.backbone_lr is None            # null: the trainer's own defaults


def test_embedding_size_agrees_with_the_model():
    from helpers.models.face_model import EMBEDDING_DIM
    assert C.EMBEDDING_SIZE == EMBEDDING_DIM


@pytest.mark.parametrize("freeze, unfreeze, stages", [("true", None, "none"), ("false", None, "all"),
                                                      ("false", "layer3,layer4", "layer3,layer4")])
def test_freeze_backbone_switch(tmp_path, freeze, unfreeze, stages):
    text = f"model:\n  freeze_backbone: {freeze}\n" + (f"  unfreeze: {unfreeze}\n" if unfreeze else "")
    flags = C.flags_from_config(_write(tmp_path, text))
    assert flags[flags.index("--stages") + 1] == stages


def test_command_line_flags_win_over_the_file(tmp_path, monkeypatch, capsys):
    from helpers.train import trainer
    seen = {}
    monkeypatch.setattr(trainer, "main", lambda argv, prog=None: seen.update(argv=argv, prog=prog) or 0)
    path = _write(tmp_path, "data:\n  path: orl\nmodel:\n  freeze_backbone: true\ntraining:\n  epochs: 10\n")
    assert cli.main(["finetune", "--config", str(path), "--epochs", "3", "--stages", "layer4"]) == 0
    cfg = trainer.parse_args(seen["argv"])
    assert cfg.epochs == 3 and cfg.stages == "layer4" and cfg.data == "orl"
    assert seen["prog"] == "python -m helpers finetune"
    log = capsys.readouterr().err
    assert log.startswith(f"finetune: configuration from {path}, then the command line:")
    assert "  epochs = 3  (command line)" in log and f"  data = 'orl'  ({path})" in log
    assert "  lr = 0.01  (default)" in log


@pytest.mark.parametrize("text, message", [
    ("modle:\n  freeze_backbone: true\n", "unknown key 'modle'; valid keys at the top: data, model, training"),
    ("model:\n  freeze: true\n", "unknown key 'model.freeze'; valid keys under model: backbone, embedding_size, "
                                 "freeze_backbone, head, input_size, pretrained, unfreeze"),
    ("model:\n  head:\n    margin: 0.5\n", "unknown key 'model.head.margin'; valid keys under model.head: m, s, type"),
    ("model:\n  freeze_backbone: maybe\n", "model.freeze_backbone: must be true or false, not 'maybe'"),
    ("training:\n  epochs: -3\n", "training.epochs: must be a whole number >= 1, not -3"),
    ("model:\n  embedding_size: 256\n", "model.embedding_size: 256: the course's model has a 512-D embedding"),
    ("model: frozen\n", "model: must be a section with keys"),
    ("- a\n- b\n", "must hold sections such as 'model:'"),
    ("model: [unclosed\n", "not valid YAML"),
])
def test_a_wrong_key_or_value_is_one_line_naming_it(tmp_path, capsys, text, message):
    path = _write(tmp_path, text)
    assert cli.main(["finetune", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_missing_file_and_missing_argument(tmp_path, capsys):
    assert cli.main(["finetune", "--config", str(tmp_path / "none.yaml")]) == 2
    assert cli.main(["finetune", "--config"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "none.yaml: no such file" in err[0] and "--config: give a file" in err[1]


def test_config_equals_form_and_other_arguments_kept():
    assert C.split_config_arg(["--config=c.yaml", "--epochs", "2"]) == ("c.yaml", ["--epochs", "2"])
    assert C.split_config_arg(["--epochs", "2"]) == (None, ["--epochs", "2"])


# What each notebook's parameters cell takes from the file: {notebook: {variable: dotted key}}.
NOTEBOOK_KEYS = {
    "02_frozen_training": {"BACKBONE": "model.backbone", "LR": "training.lr", "HEAD": "model.head.type"},
    "03_arcface_margins": {"BACKBONE": "model.backbone", "LR": "training.lr"},
    "04_embedding_visualization": {"BACKBONE": "model.backbone", "LR": "training.lr", "S": "model.head.s"},
    "05_gradual_unfreezing": {"BACKBONE": "model.backbone"},
    "06_recognize_and_deploy": {"BACKBONE": "model.backbone"},
    "07_scaling_up": {"BACKBONE": "model.backbone"},
}


@pytest.mark.parametrize("name", sorted(NOTEBOOK_KEYS))
def test_notebook_parameters_follow_the_file(name, tmp_path, monkeypatch):
    """A learner who edits configs/config.yaml changes these notebooks' knobs: each parameters cell, run
    from notebooks/ beside an edited copy of the file, takes the edited values (and the shipped file's
    values are the ones the committed outputs were made with)."""
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    source = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    edited = SHIPPED.read_text().replace("backbone: auto", "backbone: resnet18").replace("lr: 0.01", "lr: 0.005") \
        .replace("type: arcface", "type: cosface").replace("s: 16.0", "s: 32.0").replace("m: null", "m: 0.4")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "config.yaml").write_text(edited)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    knobs: dict = {}
    exec(compile(source, f"{name} parameters", "exec"), knobs)
    expected = C.load_config(tmp_path / "configs" / "config.yaml")
    assert expected["model.backbone"] == "resnet18" and expected["model.head.m"] == 0.4   # the edits took
    for variable, key in NOTEBOOK_KEYS[name].items():
        assert knobs[variable] == expected[key], f"{name}: {variable} does not follow {key}"
    if name == "03_arcface_margins":      # the reference pair (s, m) of section 3 is the file's head
        assert knobs["PAIRS"][0] == (32.0, 0.4) and len(set(knobs["PAIRS"])) == len(knobs["PAIRS"])
    if name == "04_embedding_visualization":
        assert knobs["M"] == 0.5           # 04's margin is its own, chosen on draws 0-4


def test_the_shipped_file_gives_the_notebooks_committed_knobs(monkeypatch):
    """The committed outputs were made with BACKBONE 'auto', LR 1e-2, ArcFace s 16 and m 0.3."""
    import nbformat

    monkeypatch.chdir(ROOT / "notebooks")
    for name in NOTEBOOK_KEYS:
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        knobs: dict = {}
        exec(next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", [])), knobs)
        assert knobs["BACKBONE"] == "auto", name
        assert knobs.get("LR", 1e-2) == 1e-2, name
        assert knobs.get("HEAD", "arcface") == "arcface" and knobs.get("S", 16.0) == 16.0, name
        if "PAIRS" in knobs:
            assert knobs["PAIRS"][0] == (16.0, 0.3), name
