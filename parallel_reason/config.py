"""Recipe configs: a dataclass of fields, a YAML file, ``--field value`` overrides.

Both trainers declare their config with :func:`config_field` (default and help) and
read it with :func:`parse_config`: ``--config FILE.yaml`` first, then ``--field
value`` overrides (``-`` or ``_`` in names, a bare bool flag means true, lists as
``a,b``, ``none`` for optional fields). Unknown or unconvertible values raise
``ValueError`` naming the field and where it came from. See docs/design.md#trainers.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
from dataclasses import field
from pathlib import Path
from typing import Any, Sequence, Union, get_args, get_origin, get_type_hints


def config_field(default, help: str, **kw):
    """A dataclass field with a default (lists and dicts copied per instance) and a help string."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
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
    raise ValueError(f"{where}: field {name!r} has an unsupported type {tp}")


def _takes_bool(tp) -> bool:
    """``bool`` or a union with ``bool`` (e.g. ``bf16: bool | str``)."""
    return tp is bool or bool in get_args(tp)


def config_help(cls, usage: str) -> str:
    """``--help`` text: every field with its type, default and help."""
    lines = [f"usage: {usage}", "", "Every field of the config can be given in the YAML file and overridden here:", ""]
    hints = field_types(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        tname = getattr(hints[f.name], "__name__", str(hints[f.name]))
        lines.append(f"  --{f.name} ({tname}, default {default!r})\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def parse_config(cls, argv: Sequence[str] | None = None, usage: str = "--config FILE.yaml [--field value ...]"):
    """``--config FILE`` (optional) then ``--field value`` / ``--field=value`` overrides;
    returns ``cls(**fields).validate()``. ``-h``/``--help`` prints :func:`config_help`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    hints = field_types(cls)
    cfg_path = None
    overrides: list[tuple[str, Any]] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            print(config_help(cls, usage))
            raise SystemExit(0)
        if not a.startswith("--"):
            raise ValueError(f"command line: unexpected argument {a!r} (expected --field value)")
        key, eq, val = a[2:].partition("=")
        key = key.replace("-", "_")
        if key == "config":
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError("command line: --config needs a file")
                val = argv[i + 1]
                i += 1
            cfg_path = val
            i += 1
            continue
        if key not in hints:
            raise ValueError(_unknown(key, hints, "command line"))
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            nxt_is_flag = nxt is not None and nxt.startswith("--") and \
                nxt[2:].partition("=")[0].replace("-", "_") in (*hints, "config")
            if nxt is None or nxt_is_flag:
                if not _takes_bool(hints[key]):
                    raise ValueError(f"command line: --{key} needs a value")
                val = "true"  # a bool field given alone
            else:
                val = nxt
                i += 1
        overrides.append((key, val))
        i += 1
    data: dict = {}
    if cfg_path is not None:
        import yaml

        p = Path(cfg_path)
        if not p.is_file():
            raise ValueError(f"config file {cfg_path} does not exist")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config file {cfg_path}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {cfg_path}: expected a mapping of fields, got {type(data).__name__}")
        for k in data:
            if k not in hints:
                raise ValueError(_unknown(k, hints, f"config file {cfg_path}"))
        data = {k: coerce(k, v, hints[k], f"config file {cfg_path}") for k, v in data.items()}
    for k, v in overrides:
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
