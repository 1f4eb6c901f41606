"""Recipe configs: a dataclass of fields, a YAML file, ``--field value`` overrides.

Both trainers declare their config with :func:`config_field` (default and help) and
read it with :func:`parse_config`, the way TRL's ``TrlParser`` does: ``--config
FILE.yaml`` gives the values, ``--field value`` overrides them. The flags are built by
``transformers.HfArgumentParser``; values are converted by :func:`coerce` and errors
name the field and where it came from. See docs/design.md#trainers; README "The
pipeline, stage by stage" gives the measured reasons conversion stays ours.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import types
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from transformers import HfArgumentParser


def config_field(default, help: str, **kw):
    """A dataclass field with a default (lists and dicts copied per instance) and a help string."""
    if isinstance(default, (list, dict)):

        def fresh() -> Any:
            return type(default)(default)

        return field(default_factory=fresh, metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def field_types(cls) -> dict:
    """``{field name: resolved type}`` of a config dataclass."""
    hints = get_type_hints(cls)  # once: resolving the annotations is the slow part
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown(key: str, hints: dict, where: str) -> str:
    near = difflib.get_close_matches(key, list(hints), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return f"{where}: unknown config field {key!r}{hint} (run with --help to list the fields)"


_TRUE = {"true", "yes", "y", "on", "1"}
_FALSE = {"false", "no", "n", "off", "0"}
_NONE = {"none", "null", "~", ""}


def coerce(name: str, value: Any, tp: Any, where: str = "config") -> Any:
    """``value`` (from YAML or the command line) converted to the field type ``tp``;
    ``ValueError`` naming the field otherwise."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
            return None
        errs = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(name, value, a, where)
            except ValueError as e:
                errs.append(str(e))
        raise ValueError(f"{where}: field {name!r}: cannot use {value!r} ({'; '.join(errs)})")
    if value is None:
        raise ValueError(f"{where}: field {name!r} cannot be null")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{where}: field {name!r} expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{where}: field {name!r} expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    f = None
                if f is not None and f.is_integer():
                    return int(f)
        raise ValueError(f"{where}: field {name!r} expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{where}: field {name!r} expects a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{where}: field {name!r} expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{where}: field {name!r} expects a string, got {value!r}")
    if origin is list:
        (elem,) = args or (str,)
        if isinstance(value, str):
            s = value.strip()
            if s.startswith("["):
                import yaml

                value = yaml.safe_load(s)
            else:
                value = [p.strip() for p in s.split(",") if p.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: field {name!r} expects a list, got {value!r}")
        return [coerce(name, v, elem, where) for v in value]
    if origin is Literal:
        for choice in args:  # a choice as written, or its string form from the command line
            if value == choice or (isinstance(value, str) and not isinstance(choice, str) and value == str(choice)):
                return choice
        raise ValueError(f"{where}: field {name!r} expects one of {', '.join(map(repr, args))}, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, str):
            import yaml

            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        if not isinstance(value, dict):
            raise ValueError(f"{where}: field {name!r} expects a mapping (YAML or JSON), got {value!r}")
        return dict(value)
    raise ValueError(f"{where}: field {name!r} has an unsupported type {tp}")


class _Parser(HfArgumentParser):
    """``HfArgumentParser`` whose argparse errors raise ``ValueError`` (one line,
    naming the flag) instead of printing the usage and exiting."""

    def error(self, message):  # noqa: D102 - argparse hook
        raise ValueError(f"command line: {message}")


class _PreParser(argparse.ArgumentParser):
    def error(self, message):  # noqa: D102 - argparse hook; only --config is parsed here
        raise ValueError("command line: --config needs a file")


def _type_name(tp) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _build_parser(cls, usage: str, defaults: dict | None = None) -> HfArgumentParser:
    """The ``transformers.HfArgumentParser`` of ``cls`` (flags ``--field`` and
    ``--field-name``, bools with an optional value, ``--no_field`` for fields that
    default to true, lists with one or more values) plus ``--config FILE``.

    Values are kept as the strings given (argparse ``type=None``) and converted by
    :func:`coerce` after parsing, so that errors name the field, and defaults are
    ``SUPPRESS`` so the namespace holds only the flags given (the ``--help`` text
    shows the real defaults, or the YAML's values when ``--config`` is given)."""
    fields = dataclasses.fields(cls)
    saved = {f.name: f.type for f in fields}
    try:  # HfArgumentParser rewrites ``Field.type`` in place (e.g. ``bool | str`` -> ``bool``): undo that
        parser = _Parser(
            cls,
            usage=usage,
            allow_abbrev=False,
            formatter_class=argparse.HelpFormatter,
            description="Every field can be set in the YAML file given with --config and "
            "overridden here. Lists: --field a b, --field a,b or --field '[a, b]'; "
            "none/null sets an optional field to None.",
        )
    finally:
        for f in fields:
            f.type = saved[f.name]
    hints = field_types(cls)
    defaults = dict(defaults or {})
    for f in fields:
        if f.name in defaults:
            continue
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
        else:
            raise TypeError(f"config field {f.name!r} has no default")
    for action in parser._actions:
        if action.dest not in hints:
            continue
        name = action.dest
        if action.type is not None:
            action.type = None  # raw strings: coerce() converts after parsing
        action.choices = None  # Literal fields: coerce() checks, naming the field
        action.default = argparse.SUPPRESS
        action.required = False
        if isinstance(action, argparse._StoreFalseAction):
            text = f"set {name} to false"
        else:
            text = f"{action.help or ''} ({_type_name(hints[name])}; default: {defaults[name]!r})"
        action.help = text.replace("%", "%%")
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        default=argparse.SUPPRESS,
        help="YAML file of field values (flags given on the command line override it)",
    )
    return parser


def _load_yaml(cfg_path: str, hints: dict) -> dict:
    import yaml

    p = Path(cfg_path)
    if not p.is_file():
        raise ValueError(f"config file {cfg_path} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config file {cfg_path}: invalid YAML: {' '.join(str(e).split())}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {cfg_path}: cannot read: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {cfg_path}: expected a mapping of fields, got {type(data).__name__}")
    for k in data:
        if k not in hints:
            raise ValueError(_unknown(str(k), hints, f"config file {cfg_path}"))
    return {k: coerce(k, v, hints[k], f"config file {cfg_path}") for k, v in data.items()}


def config_help(cls, usage: str, defaults: dict | None = None) -> str:
    """``--help`` text (argparse's, from :func:`_build_parser`): every flag with its
    type, default (``defaults`` overriding the dataclass's) and help."""
    return _build_parser(cls, usage, defaults).format_help()


def parse_config(cls, argv: Sequence[str] | None = None, usage: str = "--config FILE.yaml [--field value ...]"):
    """``--config FILE`` (optional) then ``--field value`` / ``--field=value`` overrides;
    returns ``cls(**fields).validate()``. ``-h``/``--help`` prints :func:`config_help`
    (with the YAML's values as defaults when ``--config`` is given) and exits 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    hints = field_types(cls)
    pre = _PreParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    cfg_path = pre.parse_known_args(argv)[0].config
    data = _load_yaml(cfg_path, hints) if cfg_path is not None else {}
    parser = _build_parser(cls, usage, data)
    ns, rest = parser.parse_known_args(argv)
    if rest:
        a = rest[0]
        if a.startswith("-") and len(a) > 1:
            raise ValueError(_unknown(a.lstrip("-").partition("=")[0].replace("-", "_"), hints, "command line"))
        raise ValueError(f"command line: unexpected argument {a!r} (expected --field value)")
    for k, v in vars(ns).items():
        if k == "config":
            continue
        if isinstance(v, list) and len(v) == 1:  # one value of a list flag: "a,b", "[a, b]", "none"
            v = v[0]
        data[k] = coerce(k, v, hints[k], f"command line --{k}")
    return cls(**data).validate()


def config_from_dict(cls, d: dict | None, where: str = "config"):
    """``cls(**d).validate()`` with every value converted (:func:`coerce`) and unknown keys refused."""
    hints = field_types(cls)
    kw = {}
    for k, v in (d or {}).items():
        if k not in hints:
            raise ValueError(_unknown(k, hints, where))
        kw[k] = coerce(k, v, hints[k], where)
    return cls(**kw).validate()
