"""The guide's configuration file, `configs/config.yaml`, read into `python -m helpers finetune` flags.

    python -m helpers finetune --config configs/config.yaml
    python -m helpers finetune --config configs/config.yaml --epochs 3     # a flag wins over the file

The guide switches between a frozen and a trainable backbone with `model.freeze_backbone` in
`configs/config.yaml`; the other keys (backbone, embedding size, head s and m, epochs, ...) are the
course's, laid out in the same sections. Each key maps to one flag of `helpers.train.trainer` (KEYS); an
unknown key, or a value of the wrong kind, stops the run before anything is loaded, with a message
naming the key and the valid ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

EMBEDDING_SIZE = 512   # helpers.models.face_model.EMBEDDING_DIM (tests check they agree; this module loads no torch)


class ConfigError(Exception):
    """A configuration file the user can fix; printed as one line.

    Notebook 02, inside `load_config`.
    """


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{key}: must be true or false, not {v!r}")
    return v


def _int(low: int) -> Callable[[str, Any], int]:
    def check(key: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"{key}: must be a whole number >= {low}, not {v!r}")
        return v
    return check


def _number(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        raise ConfigError(f"{key}: must be a number > 0, not {v!r}")
    return float(v)


def _text(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{key}: must be a text, not {v!r}")
    return v


def _optional(check):
    return lambda key, v: None if v is None else check(key, v)


def _embedding(key: str, v: Any) -> int:
    if v != EMBEDDING_SIZE:
        raise ConfigError(f"{key}: {v!r}: the course's model has a {EMBEDDING_SIZE}-D embedding "
                          f"(Linear {EMBEDDING_SIZE} + BatchNorm, as the guide's); only {EMBEDDING_SIZE} is supported")
    return v


# dotted key -> (trainer flag or None, check). model.freeze_backbone is handled with model.unfreeze.
KEYS: dict[str, tuple[str | None, Callable]] = {
    "data.path": ("--data", _text),
    "data.min_photos": ("--min-photos", _int(1)),
    "model.backbone": ("--backbone", _text),
    "model.pretrained": ("--pretrained", _bool),
    "model.freeze_backbone": (None, _bool),
    "model.unfreeze": (None, _text),
    "model.input_size": ("--size", _optional(_int(32))),
    "model.embedding_size": (None, _embedding),
    "model.head.type": ("--head", _text),
    "model.head.s": ("--scale", _number),
    "model.head.m": ("--margin", _optional(_number)),
    "training.epochs": ("--epochs", _int(1)),
    "training.batch_size": ("--batch-size", _int(1)),
    "training.lr": ("--lr", _number),
    "training.backbone_lr": ("--backbone-lr", _optional(_number)),
    "training.weight_decay": ("--weight-decay", lambda k, v: 0.0 if v == 0 else _number(k, v)),
    "training.augment": ("--augment", _bool),
    "training.seed": ("--seed", _int(0)),
    "training.out": ("--out", _text),
}


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'model': {'head': {'s': 16}}} -> {'model.head.s': 16}, checking every key against KEYS."""
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        below = sorted({k[len(key) + 1:].split(".")[0] for k in KEYS if k.startswith(key + ".")})
        if key in KEYS:
            flat[key] = value
        elif below and isinstance(value, dict):
            flat.update(_flatten(value, key + "."))
        elif below:
            raise ConfigError(f"{key}: must be a section with keys {', '.join(below)}, not {value!r}")
        else:
            siblings = sorted({k[len(prefix):].split(".")[0] for k in KEYS if k.startswith(prefix)})
            where = f"under {prefix[:-1]}" if prefix else "at the top"
            raise ConfigError(f"unknown key {key!r}; valid keys {where}: {', '.join(siblings)}")
    return flat


def load_config(path: str | Path) -> dict[str, Any]:
    """The file's settings as {dotted key: value}, every key and value checked.

    Notebook 02.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file" if not p.exists() else f"--config {path}: is a folder")
    try:
        tree = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"--config {path}: must hold sections such as 'model:', not {type(tree).__name__}")
    flat = _flatten(tree)
    return {key: KEYS[key][1](key, value) for key, value in flat.items()}


def _flag_value(value: Any) -> str:
    return "none" if value is None else str(value)


def flags_from_config(path: str | Path) -> list[str]:
    """The trainer flags that the file sets, in KEYS order (the command line's flags come after them).

    Command line: `python -m helpers ...`.
    """
    settings = load_config(path)
    flags: list[str] = []
    for key, value in settings.items():
        flag = KEYS[key][0]
        if flag is None:
            continue
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            flags += [flag, _flag_value(value)]
    if "model.freeze_backbone" in settings:   # the guide's switch: frozen, or the stages to train
        stages = "none" if settings["model.freeze_backbone"] else settings.get("model.unfreeze", "all")
        flags += ["--stages", stages]
    elif "model.unfreeze" in settings:
        raise ConfigError("model.unfreeze: only read with model.freeze_backbone: false")
    return flags


def split_config_arg(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """(--config FILE or None, the other arguments); accepts --config FILE and --config=FILE.

    Command line: `python -m helpers ...`.
    """
    rest, path = [], None
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config: give a file, e.g. --config configs/config.yaml")
            path, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return path, rest


def describe_resolved(config_path: str, file_flags: Sequence[str], cli_flags: Sequence[str], cfg) -> str:
    """The run's resolved configuration (a TrainConfig), one setting a line, with where each came from.

    Command line: `python -m helpers ...`.
    """
    import dataclasses

    def given(flags):
        return {f[2:].replace("-", "_").removeprefix("no_") for f in flags if f.startswith("--")}
    from_file, from_cli = given(file_flags), given(cli_flags)
    lines = [f"finetune: configuration from {config_path}, then the command line:"]
    for field in dataclasses.fields(cfg):
        source = "command line" if field.name in from_cli else config_path if field.name in from_file else "default"
        lines.append(f"  {field.name} = {getattr(cfg, field.name)!r}  ({source})")
    return "\n".join(lines)
