"""The course's recogniser from a shell: train, recognize, evaluate.

    python -m helpers train --data DIR --out model.pt
    python -m helpers train --data DIR --out model.pt --from-checkpoint runs/finetune/final.pt
    python -m helpers recognize --model model.pt PHOTO...
    python -m helpers evaluate --data DIR|orl --known N --shots K --seed S --json
    python -m helpers finetune --config configs/config.yaml [--epochs 5 ...]

Every error is one line on stderr and a non-zero exit status (2), never a traceback. Paths and
numbers are checked before any work (no training first, then a refusal: `helpers.cli_args` holds the
flags and their checks), and `--help` imports no PyTorch.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from .cli_args import DEFAULT_METHOD, PROG, CliError, build_parser, check_args

EXIT_ERROR = 2

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
    """`train`: fit a recogniser on a folder of people and save it. Returns the exit status.

    Command line: `python -m helpers ...`.
    """
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
    """`recognize`: name the person in each photo, or "unknown", with the score margin.

    Command line: `python -m helpers ...`.
    """
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
    """`evaluate`: identification, EER and open-set rates of a recogniser recipe on a folder.

    Command line: `python -m helpers ...`.
    """
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


COMMANDS = {"train": cmd_train, "recognize": cmd_recognize, "evaluate": cmd_evaluate}


def finetune(argv: list[str]) -> int:
    """`python -m helpers finetune ...`: helpers.train.trainer's options, optionally read from --config FILE
    first (helpers.config: flags given on the command line win over the file).

    Command line: `python -m helpers ...`.
    """
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
    """Entry point of `python -m helpers` and the `face-course` script; returns the exit status.

    Command line: `python -m helpers ...`.
    """
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
        return COMMANDS[args.command](args)
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
