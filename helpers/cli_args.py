"""The command line's flags: the parser of `python -m helpers`, its argparse types, and every check made
before any work (paths, numbers, files that must not be overwritten).

Building the parser imports no PyTorch, so `--help` answers at once; the choices below are copies that
tests/test_cli.py keeps equal to the library's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "python -m helpers"

# Copies of helpers.models.backbones.BACKBONES and helpers.recognize.embedders.METHODS / DEFAULT_METHOD, so
# that building the parser loads no PyTorch (tests/test_cli.py checks they agree).
BACKBONE_CHOICES = ("auto", "resnet18", "efficientnet_lite0")
METHOD_CHOICES = ("multilayer-tta-whiten", "head", "raw")
DEFAULT_METHOD = "multilayer-tta-whiten"


class CliError(Exception):
    """A problem the user can fix; printed as one line.

    Command line: `python -m helpers ...`.
    """


def whole_number(low: int):
    """An argparse type: an int >= low, else a message that says so (`--epochs -3` is refused).

    Command line: `python -m helpers ...`.
    """
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, not {value}")
        return value
    parse.__name__ = f"whole number >= {low}"
    return parse


def finite_number(text: str) -> float:
    """An argparse type: a finite number (a threshold on the similarity score; above 1 rejects everyone).

    Command line: `python -m helpers ...`.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number such as 0.5, not {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number such as 0.5, not {text}")
    return value


def face_flags(sp: argparse.ArgumentParser) -> None:
    """--crop-faces / --whole-photos; by default only photos longer than 672 px are searched for faces.

    Command line: `python -m helpers ...`.
    """
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--crop-faces", dest="crop_faces", action="store_const", const="always", default="auto",
                   help="find the faces in every photo and use the largest (dlib's detector and landmarks, "
                        "aligned to an ORL-like crop, when dlib-bin and face-recognition-models are installed; "
                        "else OpenCV's Haar box). Default: only photos longer than 672 px are searched, "
                        "smaller ones are taken as face crops already")
    g.add_argument("--whole-photos", dest="crop_faces", action="store_const", const="never",
                   help="never search for faces: every photo is used whole")


def _check_folder(flag: str, source: str) -> None:
    if source in ("orl", "lfw"):
        return
    p = Path(source)
    if not p.exists():
        raise CliError(f"{flag} {source}: no such folder (give a folder with one sub-folder per person, or 'orl')")
    if not p.is_dir():
        raise CliError(f"{flag} {source}: is a file; give a folder with one sub-folder per person, or 'orl'")


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive: a recogniser file starts with 'PK'."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def check_out(out: str) -> None:
    """`train --out`: a file name in a folder that exists or can be made; never one of your other files.

    Command line: `python -m helpers ...`.
    """
    p = Path(out)
    if p.is_dir():
        raise CliError(f"--out {out}: is a folder; give a file name such as {p / 'model.pt'}")
    if p.suffix == "":
        raise CliError(f"--out {out}: give a file name such as model.pt")
    if p.exists() and not _looks_like_torch_file(p):
        raise CliError(f"--out {out}: a file that is not a recogniser already has this name; choose another "
                       "name (the course never overwrites your files)")
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise CliError(f"--out {out}: {ancestor} is a file, not a folder")


def check_checkpoint(args) -> None:
    """`train --from-checkpoint FILE`: an existing file (or a run folder holding final.pt), no --method.

    Command line: `python -m helpers ...`.
    """
    p = Path(args.from_checkpoint)
    if p.is_dir() and not (p / "final.pt").is_file():
        raise CliError(f"--from-checkpoint {p}: a folder without final.pt; give the final.pt of a finished "
                       f"run ({PROG} finetune --out FOLDER writes FOLDER/final.pt)")
    if not p.exists():
        raise CliError(f"--from-checkpoint {p}: no such file; give the final.pt of a finished run "
                       f"({PROG} finetune --out FOLDER writes FOLDER/final.pt)")
    if args.method is not None:
        raise CliError(f"--method {args.method} does not apply with --from-checkpoint: the run's fine-tuned "
                       "backbone + embedding is the method; leave --method out")


def check_args(args) -> None:
    """Every path of the command line, checked before anything is loaded or trained.

    Command line: `python -m helpers ...`.
    """
    if getattr(args, "data", None) is not None:
        _check_folder("--data", args.data)
    if args.command == "train":
        check_out(args.out)
        if args.strangers not in ("orl", "none"):
            _check_folder("--strangers", args.strangers)
        if args.from_checkpoint is not None:
            check_checkpoint(args)


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m helpers` and its four subcommands.

    Command line: `python -m helpers ...`.
    """
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    prog = invoked if invoked and invoked not in ("__main__.py", "-c") else PROG
    p = argparse.ArgumentParser(prog=prog,
                                description="Face recognition by transfer learning: the course's recogniser.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,recognize,evaluate,finetune}")
    threads_type, positive = whole_number(1), whole_number(1)

    def common(sp, data: bool = True):
        if data:
            sp.add_argument("--data", required=True, help="folder with one sub-folder per person, or 'orl'")
            sp.add_argument("--backbone", default="auto", choices=BACKBONE_CHOICES)
            sp.add_argument("--size", type=whole_number(32), default=None,
                            help="input size in pixels, 32 or more (default: the backbone's)")
            sp.add_argument("--method", default=None, choices=METHOD_CHOICES,
                            help=f"{DEFAULT_METHOD} (default; won on the benchmark's development people): "
                                 "frozen features of several layers + mirror test-time augmentation + "
                                 "within-class whitening fitted on the photos, augmented and blurred/JPEG "
                                 "copies of them and the photos of 10 background people (the packaged ORL "
                                 "s1-s10, minus anyone in --data or the strangers); "
                                 "head: train an embedding + ArcFace head on the frozen features; raw: enrol "
                                 "the frozen features as they are. Compare them on your own photos with "
                                 f"'{PROG} evaluate --data DIR --method NAME'")
            sp.add_argument("--epochs", type=positive, default=30, help="training epochs, 1 or more (default 30)")
            sp.add_argument("--seed", type=whole_number(0), default=0)
            face_flags(sp)
        sp.add_argument("--threads", type=threads_type, default=None,
                        help="torch threads, 1 or more (default: the CPUs available, at most 8)")

    t = sub.add_parser("train", help="train a recogniser on a folder of people and save it as one file")
    common(t)
    t.add_argument("--out", required=True, help="where to write the recogniser, e.g. model.pt")
    t.add_argument("--strangers", default="orl",
                   help="photos of people NOT to recognise, for choosing the threshold: 'orl' (the packaged "
                        "faces, minus anyone in --data; default), a folder of people, or 'none'")
    t.add_argument("--from-checkpoint", default=None, metavar="FINAL_PT",
                   help=f"enrol the people of --data with the fine-tuned model of a '{PROG} finetune' run "
                        "(its OUT/final.pt, or OUT) instead of training on frozen features: no training here, "
                        "the threshold is chosen as without it (--method, --epochs do not apply)")

    r = sub.add_parser("recognize", help="name the person in each photo, or say unknown")
    common(r, data=False)
    r.add_argument("--model", required=True, help="a file written by 'train'")
    r.add_argument("photos", nargs="+", metavar="PHOTO")
    r.add_argument("--threshold", type=finite_number, default=None, help="override the saved threshold")
    r.add_argument("--expect-backbone", default=None, help="refuse a model made for another backbone")
    face_flags(r)
    r.add_argument("--json", action="store_true")

    e = sub.add_parser("evaluate", help="accuracy, EER and open-set rates on a fixed split")
    common(e)
    e.add_argument("--known", type=whole_number(2), default=9, help="people to recognise, 2 or more; the "
                   "others are strangers")
    e.add_argument("--shots", type=positive, default=None, help="training photos per known person (default all)")
    e.add_argument("--json", action="store_true", help="print the figures as JSON")
    e.add_argument("--degrade", action="store_true",
                   help="degrade the query photos mildly (rotation <= 10 deg, brightness/contrast +-25 %%, "
                        "blur, JPEG 60-90; helpers.data.degrade), enrolment photos stay as they are")

    sub.add_parser("finetune", add_help=False,
                   help="train the face model end to end (frozen, some stages or all), in one process or "
                        f"under torchrun; '{PROG} finetune --help' lists its options; "
                        "--config configs/config.yaml reads the guide's configuration file")
    return p
