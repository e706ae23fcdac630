"""The course's recogniser from a shell: train, recognize, evaluate.

    python -m helpers train --data DIR --out model.pt
    python -m helpers train --data DIR --out model.pt --from-checkpoint runs/finetune/final.pt
    python -m helpers recognize --model model.pt PHOTO...
    python -m helpers evaluate --data DIR|orl --known N --shots K --seed S --json
    python -m helpers finetune --config configs/config.yaml [--epochs 5 ...]

Every error is one line on stderr and a non-zero exit status (2), never a traceback. Paths and
numbers are checked before any work (no training first, then a refusal), and `--help` imports no
PyTorch (the choices below are copies that tests/test_cli.py keeps equal to the library's).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

EXIT_ERROR = 2
PROG = "python -m helpers"

# Copies of helpers.models.backbones.BACKBONES and helpers.recognize.embedders.METHODS / DEFAULT_METHOD, so
# that building the parser loads no PyTorch (tests/test_cli.py checks they agree).
BACKBONE_CHOICES = ("auto", "resnet18", "efficientnet_lite0")
METHOD_CHOICES = ("multilayer-tta-whiten", "head", "raw")
DEFAULT_METHOD = "multilayer-tta-whiten"


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


def _threads(n: int | None) -> int:
    from .runtime import default_threads

    return n if n else default_threads()


FACE_MODES = {"always": True, "auto": "auto", "never": False}   # --crop-faces / default / --whole-photos


def _load_data(source: str, crop_faces: str = "never"):
    from .data.folders import load_faces

    if source not in ("orl", "lfw"):
        p = Path(source)
        if not p.exists():
            raise CliError(f"--data {source}: no such folder (give a folder with one sub-folder per person, "
                           "or 'orl')")
        if not p.is_dir():
            raise CliError(f"--data {source}: is a file; give a folder with one sub-folder per person, or 'orl'")
        return load_faces(source, crop_faces=FACE_MODES[crop_faces])
    return load_faces(source)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- commands


def _fine_tuned(args):
    """`train --from-checkpoint`: the trainer's fine-tuned model, checked against --backbone / --size."""
    from .recognize.recognizer import Recognizer

    rec = Recognizer.from_checkpoint(args.from_checkpoint)
    if args.backbone != "auto" and args.backbone != rec.backbone.name:
        raise CliError(f"--backbone {args.backbone}: {args.from_checkpoint} was trained on {rec.backbone.name}; "
                       "leave --backbone out")
    if args.size is not None and args.size != rec.size:
        raise CliError(f"--size {args.size}: {args.from_checkpoint} was trained at {rec.size} px; leave --size out")
    return rec


def cmd_train(args) -> int:
    from .models.backbones import load_backbone
    from .recognize.pipeline import RecognizerConfig, enrol_recognizer, train_recognizer

    rec = _fine_tuned(args) if args.from_checkpoint else None   # before reading the photos
    faces = _load_data(args.data, args.crop_faces)
    if faces.report.skipped or faces.report.notes:
        _say(f"data: {faces.report}".replace("\n", "\n  "))
    backbone = rec.backbone if rec is not None else load_backbone(args.backbone, verbose=False)
    _say(f"backbone: {backbone.describe()}")
    strangers = None if args.strangers == "none" else (
        "orl" if args.strangers == "orl" else _load_data(args.strangers, args.crop_faces))
    if rec is not None:
        rec, info = enrol_recognizer(rec, faces, seed=args.seed, n_threads=_threads(args.threads),
                                     strangers=strangers)
    else:
        cfg = RecognizerConfig(args.method or DEFAULT_METHOD, args.size, epochs=args.epochs, seed=args.seed,
                               threads=_threads(args.threads))
        rec, info = train_recognizer(faces, backbone, cfg, strangers=strangers)
    out = Path(args.out)
    rec.save(out)
    mb = out.stat().st_size / 2**20
    print(f"trained: {info['people']} people, {info['photos']} photos ({info['method']}, "
          f"{rec.backbone.name}, input {rec.size} px)")
    print(f"threshold {rec.threshold:.2f} ({info['threshold_from']})")
    far, frr = info["calibration"].rates()
    print(f"expected at this threshold: strangers accepted {100 * far:.1f} %, known people's photos rejected "
          f"{100 * frr:.1f} % (estimates from {len(info['calibration'].impostor)} impostor and "
          f"{len(info['calibration'].genuine)} genuine scores)")
    print(f"saved {args.out} ({mb:.1f} MiB)")
    return 0


def cmd_recognize(args) -> int:
    from .data.images import ImageSkip, read_image
    from .recognize.recognizer import load_recognizer

    rec = load_recognizer(args.model, expect_backbone=args.expect_backbone)
    if args.threshold is not None:
        rec.threshold = float(args.threshold)
    from .data.alignment import FaceStep

    step = FaceStep(FACE_MODES[args.crop_faces])
    results, failed = [], 0
    images, where = [], []
    for photo in args.photos:
        try:
            img = read_image(photo)
        except ImageSkip as e:
            results.append((photo, None, f"cannot use this photo: {e}", None))
            failed += 1
            continue
        except OSError as e:
            results.append((photo, None, f"cannot read it ({e.strerror or e})", None))
            failed += 1
            continue
        n = None
        if step.applies(img):
            found = step(img)
            n = len(found)
            if not found:
                results.append((photo, None, "no face found", 0))
                failed += 1
                continue
            img = found[0].image
        where.append(len(results))
        results.append((photo, None, None, n))
        images.append(img)
    if images:
        from .runtime import threads

        with threads(_threads(args.threads)):
            matches = rec.recognize(images)
        for i, m in zip(where, matches):
            results[i] = (results[i][0], m, None, results[i][3])
    if step.note():
        _say(step.note())
    if args.json:
        print(json.dumps([{"photo": p, "name": (m.name if m.known else "unknown") if m else None,
                           "closest": m.closest if m else None,
                           "score": round(m.score, 4) if m else None,
                           "threshold": round(m.threshold, 4) if m else None,
                           "margin": round(m.margin, 4) if m else None, "error": err, "faces": n}
                          for p, m, err, n in results], indent=1))
    else:
        for p, m, err, n in results:
            several = f" ({n} faces found: the largest used)" if n and n > 1 else ""
            print(f"{p}: error: {err}" if err else f"{p}: {m.explain()}{several}")
    return 1 if failed else 0


def cmd_evaluate(args) -> int:
    from .models.backbones import load_backbone
    from .recognize.pipeline import RecognizerConfig, evaluate_protocol

    faces = _load_data(args.data, args.crop_faces)
    if not 2 <= args.known <= faces.num_people:
        raise CliError(f"--known {args.known}: the data has only {faces.num_people} people; choose 2 to "
                       f"{faces.num_people}")
    backbone = load_backbone(args.backbone, verbose=False)
    if not args.json:
        _say(f"backbone: {backbone.describe()}")
    degrade = None
    if args.degrade:
        from .data.degrade import degrade as _degrade

        def degrade(img, index, seed=args.seed):
            return _degrade(img, seed, index)
    cfg = RecognizerConfig(args.method or DEFAULT_METHOD, args.size, epochs=args.epochs, seed=args.seed,
                           threads=_threads(args.threads))
    res = evaluate_protocol(faces, backbone, cfg, n_known=args.known, shots=args.shots, degrade=degrade)
    res = {"data": args.data, **res, "degraded_queries": bool(args.degrade)}
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        osr = res["open_set"]
        print(f"{res['known']} known people ({res['photos']['train']} training photos, {res['shots'] or 'all'} "
              f"per person), {res['method']}, {res['backbone']} at {res['input_size']} px, seed {res['seed']}"
              + (", query photos degraded" if res["degraded_queries"] else ""))
        print(f"accuracy on known people's test photos: {100 * res['accuracy']:.1f} %")
        print(f"EER ({res['eer_on']}): {100 * res['eer']:.1f} %")
        print(f"open set at threshold {osr['threshold']:.2f} ({res['threshold_from']}): named right "
              f"{100 * osr['known_correct']:.1f} %, strangers rejected "
              + ("n/a" if osr['strangers_rejected'] is None else f"{100 * osr['strangers_rejected']:.1f} %"))
        print(f"background people: {res['background']}")
    return 0


# ---------------------------------------------------------------------- parser


def whole_number(low: int):
    """An argparse type: an int >= low, else a message that says so (`--epochs -3` is refused)."""
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
    """An argparse type: a finite number (a threshold on the similarity score; above 1 rejects everyone)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number such as 0.5, not {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number such as 0.5, not {text}")
    return value


def face_flags(sp: argparse.ArgumentParser) -> None:
    """--crop-faces / --whole-photos; by default only photos longer than 672 px are searched for faces."""
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
    """`train --out`: a file name in a folder that exists or can be made; never one of your other files."""
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
    """`train --from-checkpoint FILE`: an existing file (or a run folder holding final.pt), no --method."""
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
    """Every path of the command line, checked before anything is loaded or trained."""
    if getattr(args, "data", None) is not None:
        _check_folder("--data", args.data)
    if args.command == "train":
        check_out(args.out)
        if args.strangers not in ("orl", "none"):
            _check_folder("--strangers", args.strangers)
        if args.from_checkpoint is not None:
            check_checkpoint(args)


def build_parser() -> argparse.ArgumentParser:
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
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("recognize", help="name the person in each photo, or say unknown")
    common(r, data=False)
    r.add_argument("--model", required=True, help="a file written by 'train'")
    r.add_argument("photos", nargs="+", metavar="PHOTO")
    r.add_argument("--threshold", type=finite_number, default=None, help="override the saved threshold")
    r.add_argument("--expect-backbone", default=None, help="refuse a model made for another backbone")
    face_flags(r)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_recognize)

    e = sub.add_parser("evaluate", help="accuracy, EER and open-set rates on a fixed split")
    common(e)
    e.add_argument("--known", type=whole_number(2), default=9, help="people to recognise, 2 or more; the "
                   "others are strangers")
    e.add_argument("--shots", type=positive, default=None, help="training photos per known person (default all)")
    e.add_argument("--json", action="store_true", help="print the figures as JSON")
    e.add_argument("--degrade", action="store_true",
                   help="degrade the query photos mildly (rotation <= 10 deg, brightness/contrast +-25 %%, "
                        "blur, JPEG 60-90; helpers.data.degrade), enrolment photos stay as they are")
    e.set_defaults(func=cmd_evaluate)

    sub.add_parser("finetune", add_help=False,
                   help="train the face model end to end (frozen, some stages or all), in one process or "
                        f"under torchrun; '{PROG} finetune --help' lists its options; "
                        "--config configs/config.yaml reads the guide's configuration file")
    return p


def finetune(argv: list[str]) -> int:
    """`python -m helpers finetune ...`: helpers.train.trainer's options, optionally read from --config FILE
    first (helpers.config: flags given on the command line win over the file)."""
    from .config import ConfigError, flags_from_config, split_config_arg

    try:
        config_path, rest = split_config_arg(argv)
        flags = flags_from_config(config_path) if config_path else []
    except ConfigError as e:
        _say(f"error: {e}")
        return EXIT_ERROR
    from .train.trainer import main as trainer_main, parse_args

    prog = f"{PROG} finetune"
    if config_path and not {"-h", "--help"} & set(rest):
        from .config import describe_resolved
        _say(describe_resolved(config_path, flags, rest, parse_args(flags + rest, prog)))
    return trainer_main(flags + rest, prog=prog)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m helpers` and the `face-course` script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["finetune"]:  # its own parser: the options of helpers.train.trainer, passed through
        return finetune(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
    except CliError as e:
        _say(f"error: {e}")
        return EXIT_ERROR
    from .models.backbones import BackboneUnavailable
    from .data.folders import FaceDataError
    from .recognize.recognizer import RecognizerFileError

    try:
        return args.func(args)
    except (CliError, FaceDataError, RecognizerFileError, BackboneUnavailable) as e:
        msg = str(e).strip().splitlines()
        _say(f"error: {msg[0] if msg else type(e).__name__}")
        for line in msg[1:6]:
            _say(f"  {line}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _say("interrupted: nothing was written (model files are written atomically)")
        return 130
    except (ValueError, OSError) as e:
        _say(f"error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
