"""The course's recogniser from a shell: train, recognize, evaluate.

    python -m helpers train --data DIR --out model.pt
    python -m helpers recognize --model model.pt PHOTO...
    python -m helpers evaluate --data DIR|orl --known N --shots K --seed S --json

Every error is one line on stderr and a non-zero exit status (2), never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

EXIT_ERROR = 2


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


def _threads(n: int | None) -> int:
    from .runtime import default_threads

    return n if n else default_threads()


def _load_data(source: str, crop_faces: bool = False):
    from .data import load_faces

    if source not in ("orl", "lfw"):
        p = Path(source)
        if not p.exists():
            raise CliError(f"--data {source}: no such folder (give a folder with one sub-folder per person, "
                           "or 'orl')")
        if not p.is_dir():
            raise CliError(f"--data {source}: is a file; give a folder with one sub-folder per person, or 'orl'")
        return load_faces(source, crop_faces=crop_faces)
    return load_faces(source)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from .backbones import load_backbone
    from .recognizer_pipeline import train_recognizer

    faces = _load_data(args.data, args.crop_faces)
    if faces.report.skipped or faces.report.notes:
        _say(f"data: {faces.report}".replace("\n", "\n  "))
    backbone = load_backbone(args.backbone, verbose=False)
    _say(f"backbone: {backbone.describe()}")
    strangers = None if args.strangers == "none" else (
        "orl" if args.strangers == "orl" else _load_data(args.strangers, args.crop_faces))
    rec, info = train_recognizer(faces, backbone, size=args.size, method=args.method, epochs=args.epochs,
                                 seed=args.seed, n_threads=_threads(args.threads), strangers=strangers)
    out = Path(args.out)
    if out.suffix == "":
        raise CliError(f"--out {args.out}: give a file name such as model.pt")
    rec.save(out)
    mb = out.stat().st_size / 2**20
    print(f"trained: {info['people']} people, {info['photos']} photos ({info['method']}, "
          f"{rec.backbone.name}, input {rec.size} px)")
    print(f"threshold {rec.threshold:.2f} ({info['threshold_from']})")
    print(f"saved {args.out} ({mb:.1f} MiB)")
    return 0


def cmd_recognize(args) -> int:
    from .images import ImageSkip, read_image
    from .recognizer import load_recognizer

    rec = load_recognizer(args.model, expect_backbone=args.expect_backbone)
    if args.threshold is not None:
        rec.threshold = float(args.threshold)
    cropper = None
    if args.crop_faces:
        from .facecrop import FaceCropper
        cropper = FaceCropper()
    results, failed = [], 0
    images, where = [], []
    for photo in args.photos:
        try:
            img = read_image(photo)
        except ImageSkip as e:
            results.append((photo, None, f"cannot use this photo: {e}"))
            failed += 1
            continue
        except OSError as e:
            results.append((photo, None, f"cannot read it ({e.strerror or e})"))
            failed += 1
            continue
        if cropper is not None:
            face, _ = cropper.crop(img)
            if face is None:
                results.append((photo, None, "no face found"))
                failed += 1
                continue
            img = face
        where.append(len(results))
        results.append((photo, None, None))
        images.append(img)
    if images:
        from .runtime import threads

        with threads(_threads(args.threads)):
            matches = rec.recognize(images)
        for i, m in zip(where, matches):
            results[i] = (results[i][0], m, None)
    if args.json:
        print(json.dumps([{"photo": p, "name": (m.name if m.known else "unknown") if m else None,
                           "closest": m.closest if m else None,
                           "score": round(m.score, 4) if m else None,
                           "threshold": round(m.threshold, 4) if m else None, "error": err}
                          for p, m, err in results], indent=1))
    else:
        for p, m, err in results:
            print(f"{p}: error: {err}" if err else f"{p}: {m}")
    return 1 if failed else 0


def cmd_evaluate(args) -> int:
    from .backbones import load_backbone
    from .recognizer_pipeline import evaluate_protocol

    faces = _load_data(args.data, args.crop_faces)
    if not 2 <= args.known <= faces.num_people:
        raise CliError(f"--known {args.known}: the data has only {faces.num_people} people; choose 2 to "
                       f"{faces.num_people}")
    backbone = load_backbone(args.backbone, verbose=False)
    if not args.json:
        _say(f"backbone: {backbone.describe()}")
    degrade = None
    if args.degrade:
        from .degrade import degrade as _degrade

        def degrade(img, index, seed=args.seed):
            return _degrade(img, seed, index)
    res = evaluate_protocol(faces, backbone, n_known=args.known, shots=args.shots, seed=args.seed,
                            size=args.size, method=args.method, epochs=args.epochs,
                            n_threads=_threads(args.threads), degrade=degrade)
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


def build_parser() -> argparse.ArgumentParser:
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    prog = invoked if invoked and invoked not in ("__main__.py", "-c") else "python -m helpers"
    p = argparse.ArgumentParser(prog=prog,
                                description="Face recognition by transfer learning: the course's recogniser.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,recognize,evaluate,finetune}")
    from .backbones import BACKBONES
    from .recognizer_pipeline import DEFAULT_METHOD, METHODS

    def common(sp, data: bool = True):
        if data:
            sp.add_argument("--data", required=True, help="folder with one sub-folder per person, or 'orl'")
            sp.add_argument("--backbone", default="auto", choices=BACKBONES)
            sp.add_argument("--size", type=int, default=None, help="input size in pixels (default: the backbone's)")
            sp.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                            help=f"{DEFAULT_METHOD} (default; won on the benchmark's development people): "
                                 "frozen features of several layers + mirror test-time augmentation + "
                                 "within-class whitening fitted on the photos, augmented and blurred/JPEG "
                                 "copies of them and the photos of 10 background people (the packaged ORL "
                                 "s1-s10, minus anyone in --data or the strangers); "
                                 "head: train an embedding + ArcFace head on the frozen features; raw: enrol "
                                 "the frozen features as they are (see benchmarks/RESULTS.md, notebook 06)")
            sp.add_argument("--epochs", type=int, default=30)
            sp.add_argument("--seed", type=int, default=0)
            sp.add_argument("--crop-faces", action="store_true", help="cut each photo to its largest face first")
        sp.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs available, at most 8)")

    t = sub.add_parser("train", help="train a recogniser on a folder of people and save it as one file")
    common(t)
    t.add_argument("--out", required=True, help="where to write the recogniser, e.g. model.pt")
    t.add_argument("--strangers", default="orl",
                   help="photos of people NOT to recognise, for choosing the threshold: 'orl' (the packaged "
                        "faces, minus anyone in --data; default), a folder of people, or 'none'")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("recognize", help="name the person in each photo, or say unknown")
    common(r, data=False)
    r.add_argument("--model", required=True, help="a file written by 'train'")
    r.add_argument("photos", nargs="+", metavar="PHOTO")
    r.add_argument("--threshold", type=float, default=None, help="override the saved threshold")
    r.add_argument("--expect-backbone", default=None, help="refuse a model made for another backbone")
    r.add_argument("--crop-faces", action="store_true", help="cut each photo to its largest face first")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_recognize)

    e = sub.add_parser("evaluate", help="accuracy, EER and open-set rates on a fixed split")
    common(e)
    e.add_argument("--known", type=int, default=9, help="people to recognise; the others are strangers")
    e.add_argument("--shots", type=int, default=None, help="training photos per known person (default all)")
    e.add_argument("--json", action="store_true", help="print the figures as JSON")
    e.add_argument("--degrade", action="store_true",
                   help="degrade the query photos mildly (rotation <= 10 deg, brightness/contrast +-25 %%, "
                        "blur, JPEG 60-90; helpers.degrade), enrolment photos stay as they are")
    e.set_defaults(func=cmd_evaluate)

    sub.add_parser("finetune", add_help=False,
                   help="train the face model end to end (frozen, some stages or all), in one process or "
                        "under torchrun; 'finetune --help' lists its options (same as python -m helpers.trainer)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m helpers` and the `face-course` script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["finetune"]:  # its own parser: the options of helpers.trainer, passed through
        from .trainer import main as trainer_main

        return trainer_main(argv[1:])
    args = build_parser().parse_args(argv)
    from .backbones import BackboneUnavailable
    from .data import FaceDataError
    from .recognizer import RecognizerFileError

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
