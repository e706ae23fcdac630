"""The trainer's final.pt as a recogniser: helpers.train.trainer (1 epoch, CPU) -> final.pt ->
Recognizer.from_checkpoint -> enrol -> recognize -> save/load -> ONNX, and the command line's
`train --from-checkpoint`; bad files get one clear RecognizerFileError.

The run: an untrained ResNet-18 (a course backbone, so the saved recogniser reloads by name; no
download) at 32 px, layer4 fine-tuned for 1 epoch on 4 ORL people x 5 small JPEGs: about 1 s.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from helpers import cli
from helpers.models.backbones import load_backbone
from helpers.recognize.recognizer import Recognizer, RecognizerFileError, load_recognizer
from helpers.train.trainer import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def people(orl, tmp_path_factory):
    """4 ORL people x 5 photos (46 x 56 JPEGs) in person folders p0..p3."""
    root = tmp_path_factory.mktemp("people")
    for p in range(4):
        (root / f"p{p}").mkdir()
        for j, i in enumerate(np.flatnonzero(orl.labels == p)[:5]):
            orl.images[i].resize((46, 56)).save(root / f"p{p}" / f"{j}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def run_dir(people, tmp_path_factory):
    """A finished helpers.train.trainer run (final.pt, checkpoint.pt) with layer4 of ResNet-18 trained."""
    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    backbone = load_backbone("resnet18", pretrained=False, verbose=False)
    cfg = TrainConfig(data=str(people), out=str(out), size=32, stages="layer4", epochs=1, batch_size=8,
                      lr=1e-2, workers=0, threads=1, verbose=False)
    result = train(cfg, backbone=backbone)
    assert (out / "final.pt").exists() and result.names == ["p0", "p1", "p2", "p3"]
    return out


def _images(folder, person: str) -> list:
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in sorted((folder / person).glob("*.jpg"))]


def test_final_pt_enrols_recognises_saves_and_exports(run_dir, people, tmp_path):
    final = torch.load(run_dir / "final.pt", map_location="cpu", weights_only=True)
    rec = Recognizer.from_checkpoint(run_dir / "final.pt")
    # the fine-tuned weights, not the architecture's fresh ones
    for key, value in rec.backbone.state_dict().items():
        assert torch.equal(value, final["model"][f"backbone.{key}"]), key
    for key, value in rec.embedding.state_dict().items():
        assert torch.equal(value, final["model"][f"embedding.{key}"]), key
    assert rec.size == 32 and rec.names == [] and rec.embedding_dim == 512
    assert "fine-tuned by helpers.train.trainer (stages layer4)" in rec.describe()

    photos = {p: _images(people, p) for p in ("p0", "p1", "p2", "p3")}
    enrol = [im for p in photos for im in photos[p][:2]]
    rec.enrol(enrol, np.repeat(np.arange(4), 2), list(photos))
    rec.threshold = -1.0                                    # always a name: the closest person
    assert [m.name for m in rec.recognize([photos["p2"][0], photos["p0"][1]])] == ["p2", "p0"]

    path = rec.save(tmp_path / "fine_tuned.pt")
    again = load_recognizer(path, expect_backbone="resnet18", expect_names=["p0", "p1", "p2", "p3"])
    probe = [photos["p3"][4], photos["p1"][3]]
    np.testing.assert_allclose(again.embed(probe), rec.embed(probe), atol=1e-5)

    from helpers.recognize.export import export_onnx
    from helpers.io import onnx_session

    onnx = export_onnx(rec, tmp_path / "fine_tuned.onnx")
    x = torch.stack([rec.transform()(im) for im in probe])
    out = onnx_session(onnx, 1).run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(out, rec(x).detach().numpy(), atol=1e-4)


def test_a_run_folder_and_an_older_final_pt_load_too(run_dir, tmp_path):
    assert Recognizer.from_checkpoint(run_dir).backbone.name == "resnet18"    # OUT for OUT/final.pt
    final = torch.load(run_dir / "final.pt", map_location="cpu", weights_only=True)
    for key in ("backbone_weights", "feature_dim"):                           # written since 2026-12
        del final[key]
    torch.save(final, tmp_path / "old.pt")
    assert "from its starting weights" in Recognizer.from_checkpoint(tmp_path / "old.pt").backbone.weights


def test_wrong_files_get_one_clear_error(run_dir, tmp_path):
    def refused(path, match, **kw):
        with pytest.raises(RecognizerFileError, match=match):
            Recognizer.from_checkpoint(path, **kw)

    refused(tmp_path / "missing.pt", "no such file.*python -m helpers finetune")
    refused(tmp_path, "a folder without final.pt")
    refused(run_dir / "checkpoint.pt", r"resume checkpoint \(after epoch 1\), not its final weights")
    (tmp_path / "notes.pt").write_text("not a model")
    refused(tmp_path / "notes.pt", "not a trainer checkpoint|not a readable trainer checkpoint")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    refused(tmp_path / "other.pt", "not a checkpoint of helpers.train.trainer")

    rec = Recognizer.from_checkpoint(run_dir / "final.pt")
    rec.save(tmp_path / "recogniser.pt")
    refused(tmp_path / "recogniser.pt", "is a recogniser file, not a trainer checkpoint: load it with Recognizer.load")

    final = torch.load(run_dir / "final.pt", map_location="cpu", weights_only=True)
    final["backbone"] = "mine"                       # a run with --backbone package.module:factory
    torch.save(final, tmp_path / "custom.pt")
    refused(tmp_path / "custom.pt", r"backbone 'mine' .* pass one, Recognizer.from_checkpoint\(path, backbone=")
    mine = load_backbone("resnet18", pretrained=False, verbose=False)
    refused(tmp_path / "custom.pt", "trained on backbone 'mine', not 'resnet18'", backbone=mine)
    mine.name = "mine"
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    assert Recognizer.from_checkpoint(tmp_path / "custom.pt", backbone=mine).backbone is not mine
    assert all(torch.equal(v, mine.state_dict()[k]) for k, v in before.items())   # the caller's stays as it was
    final["model"] = {k: v for k, v in final["model"].items() if not k.startswith("embedding.")}
    torch.save(final, tmp_path / "cut.pt")
    refused(tmp_path / "cut.pt", "do not fit", backbone=mine)


def test_cli_train_from_checkpoint_enrols_a_folder(run_dir, people, tmp_path, capsys):
    out = tmp_path / "me.pt"
    code = cli.main(["train", "--data", str(people), "--out", str(out), "--from-checkpoint",
                     str(run_dir / "final.pt"), "--strangers", "none", "--threads", "1"])
    said = capsys.readouterr()
    assert code == 0, said.err
    rec = load_recognizer(out)
    assert rec.names == ["p0", "p1", "p2", "p3"] and rec.size == 32
    assert "fine-tuned resnet18" in said.out and "fine-tuned by helpers.train.trainer" in said.err
    assert -1.0 <= rec.threshold <= 1.0


@pytest.mark.parametrize("extra, message", [
    (["--method", "head"], "--method head does not apply with --from-checkpoint"),
    (["--size", "64"], "--size 64: .* was trained at 32 px"),
    (["--backbone", "efficientnet_lite0"], "--backbone efficientnet_lite0: .* was trained on resnet18"),
])
def test_cli_from_checkpoint_refuses_flags_that_do_not_apply(run_dir, people, tmp_path, capsys, extra, message):
    code = cli.main(["train", "--data", str(people), "--out", str(tmp_path / "m.pt"), "--from-checkpoint",
                     str(run_dir), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "m.pt").exists()


def test_cli_missing_checkpoint_is_one_line_before_any_work(people, tmp_path, capsys):
    code = cli.main(["train", "--data", str(people), "--out", str(tmp_path / "m.pt"), "--from-checkpoint",
                     str(tmp_path / "runs" / "final.pt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no such file" in err[0] and "finetune --out FOLDER" in err[0]
