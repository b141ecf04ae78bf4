"""The flags of `undiffuse train`, generated from TrainConfig's fields and their metadata.

Each field with ``cli`` metadata true is one flag, ``--field-name`` (``--x`` / ``--no-x`` for a
boolean), in the --help group its metadata names, with its help text, its choices (shown, not
enforced here: ``TrainConfig.validate`` refuses a bad value with a message naming the fix) and its
default (the mnist preset's, which is TrainConfig's, then each other preset's where it differs).
Every flag defaults to None, "not given", so that ``--preset`` fills in the rest.

A renamed field keeps its old flag (``renamed_from``) for one release, as ``DeprecatedAlias``: it
sets the new field, with a FutureWarning (as diffusers deprecates arguments).
"""
from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import Field, fields
from typing import Any

from .config import GROUPS, PRESETS, TrainConfig, field_types, preset


class DeprecatedAlias(argparse.Action):
    """A deprecated spelling of the flag ``new``: stores its value where ``new`` does, and warns."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string: str | None = None) -> None:
        # Attributed to the command (e.g. "undiffuse train:0: FutureWarning: ..."), not to argparse's source.
        warnings.warn_explicit(f"{option_string} is deprecated and will be removed in the next release; "
                               f"use {self.new}", FutureWarning, filename=parser.prog, lineno=0)
        setattr(namespace, self.dest, values)


def flag(name: str) -> str:
    """The flag of a field: ``max_train_steps`` -> ``--max-train-steps``."""
    return "--" + name.replace("_", "-")


def flag_fields() -> list[Field]:
    """The TrainConfig fields that are `undiffuse train` flags, in the dataclass's order."""
    return [f for f in fields(TrainConfig) if f.metadata["cli"]]


def _value_type(f: Field) -> type:
    """What a non-boolean flag's text converts to: the first of int, float, str its annotation allows
    (``int | None`` -> int; ``str | dict`` -> str: a dict is for Python, not the command line)."""
    return next(t for t in field_types(f.name) if t in (int, float, str))


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return json.dumps(value) if isinstance(value, dict) else str(value)


def _help(f: Field, presets: dict[str, TrainConfig]) -> str:
    """The field's help text with its default: the first preset's, then where other presets differ."""
    first, *_ = presets.values()
    default = getattr(first, f.name)
    others = [f"{name}: {_shown(getattr(cfg, f.name))}" for name, cfg in presets.items()
              if getattr(cfg, f.name) != default]
    parts = ([] if default is None else [f"default: {_shown(default)}"]) + \
        ([f"--preset {', '.join(others)}"] if others else [])
    text = f.metadata["help"] + (f" ({'; '.join(parts)})" if parts else "")
    return text.replace("%", "%%")  # argparse %-formats help texts


def add_config_flags(p: argparse.ArgumentParser, only: set[str] | None = None,
                     defaults: TrainConfig | None = None) -> None:
    """One flag per TrainConfig field (``flag_fields``), in the argument groups of GROUPS; with ``only``
    and ``defaults``, the fields ``only`` names with the defaults shown from ``defaults`` (another
    command's flags, e.g. train-autoencoder's, with its --kl-weight)."""
    presets = PRESETS if defaults is None else {"": defaults}
    groups = {key: p.add_argument_group(title) for key, title in GROUPS.items()}
    for f in flag_fields() if only is None else [f for f in fields(TrainConfig) if f.name in only]:
        group, name = groups[f.metadata["group"]], flag(f.name)
        if field_types(f.name) == (bool,):
            group.add_argument(name, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                               help=_help(f, presets))
            continue
        choices = f.metadata["choices"]
        kind = {"dest": f.name, "type": _value_type(f), "default": None,
                "metavar": "{" + ",".join(choices) + "}" if choices else None}
        group.add_argument(name, help=_help(f, presets), **kind)
        for old in f.metadata["renamed_from"]:
            group.add_argument(flag(old), action=DeprecatedAlias, new=name, **kind,
                               help=f"deprecated spelling of {name}, removed in the next release")


def add_train_parser(sub) -> argparse.ArgumentParser:
    """The `undiffuse train` subcommand: --preset, --resume, --overwrite and the config flags."""
    p = sub.add_parser("train", help="train a diffusion model",
                       description="Train a diffusion model. With no options: the MNIST demo preset "
                                   "(class-conditional digits in minutes on a laptop CPU). The defaults shown "
                                   "are the mnist preset's; --preset NAME starts from another, and each flag "
                                   "given overrides one setting.")
    p.add_argument("--preset", default="mnist", help=f"starting configuration: {', '.join(PRESETS)} (default: mnist)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --out (with none there: a warning, then "
                        "training from step 0); --max-train-steps is the total, counted from step 0")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run already in --out (config, log, checkpoints, samples) and start over; "
                        "without --resume or --overwrite, train refuses an --out that holds a run")
    add_config_flags(p)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig that parsed `undiffuse train` (or train-autoencoder) arguments describe: the preset,
    then each flag given."""
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    return preset(args.preset).updated(**overrides)
