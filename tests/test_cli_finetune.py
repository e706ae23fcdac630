"""`python -m helpers finetune ...` hands its arguments to the end-to-end trainer (helpers.train.trainer)."""
from __future__ import annotations

from helpers import cli


def test_finetune_passes_arguments_to_the_trainer(monkeypatch):
    seen = {}

    def fake_main(argv, prog=None):
        seen["argv"] = list(argv)
        return 0

    monkeypatch.setattr("helpers.train.trainer.main", fake_main)
    assert cli.main(["finetune", "--data", "orl", "--stages", "none", "--epochs", "1"]) == 0
    assert seen["argv"] == ["--data", "orl", "--stages", "none", "--epochs", "1"]


def test_finetune_bad_data_is_one_clear_error(tmp_path, capsys):
    code = cli.main(["finetune", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "missing" in err and "Traceback" not in err
