"""parallel_reason.config: HfArgumentParser flags, YAML defaults, errors that name the field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import pytest

from parallel_reason.config import coerce, config_field, config_from_dict, config_help, parse_config


@dataclass
class Cfg:
    lr: float = config_field(1e-3, "learning rate (100% = 1.0)")
    steps: int = config_field(10, "steps")
    name: str | None = config_field(None, "run name")
    limit: int | None = config_field(None, "max samples")
    tags: list[str] = config_field(["a"], "tags")
    weights: list[float] | None = config_field(None, "weights")
    flag: bool = config_field(False, "a switch")
    on: bool = config_field(True, "on by default")
    bf16: bool | str = config_field("auto", "true | false | auto")
    kind: Literal["x", "y"] = config_field("x", "x or y")
    extra: dict = config_field({}, "a mapping")

    def validate(self):
        return self


def parse(*argv):
    return parse_config(Cfg, list(argv), "prog --config FILE.yaml [--field value ...]")


def test_flags_like_hf_argument_parser():
    c = parse("--lr", "0.5", "--steps=3", "--flag", "--name", "run", "--limit", "7")
    assert (c.lr, c.steps, c.flag, c.name, c.limit) == (0.5, 3, True, "run", 7)
    assert parse("--flag", "false").flag is False and parse("--flag=yes").flag is True
    assert parse("--no_on").on is False and parse("--no-on").on is False  # HfArgumentParser's complement
    assert parse("--tags", "b", "c").tags == ["b", "c"]  # TRL style
    assert parse("--tags", "b,c").tags == ["b", "c"] and parse("--tags", "[b, c]").tags == ["b", "c"]
    assert parse("--weights", "1", "0.5").weights == [1.0, 0.5] and parse("--weights", "none").weights is None
    assert parse("--name", "null").name is None and parse("--limit", "none").limit is None
    assert parse("--bf16").bf16 is True and parse("--bf16", "auto").bf16 == "auto"
    assert parse("--bf16", "false").bf16 is False
    assert parse().bf16 == "auto"  # a str default of a bool | str field is not run through string_to_bool
    assert parse("--kind", "y").kind == "y"
    assert parse("--extra", '{"k": 1}').extra == {"k": 1}
    assert parse("--steps", "1", "--steps", "2").steps == 2  # the last one wins
    # HfArgumentParser must not leave its rewritten types on the dataclass fields
    assert {f.name: f.type for f in dataclasses.fields(Cfg)}["bf16"] == "bool | str"


def test_errors_name_the_flag_and_suggest():
    with pytest.raises(ValueError, match=r"command line: unknown config field 'stpes'; did you mean 'steps'"):
        parse("--stpes", "3")
    with pytest.raises(ValueError, match=r"unknown config field 'ste'; did you mean 'steps'"):
        parse("--ste", "3")  # argparse would take a prefix as --steps: allow_abbrev is off
    with pytest.raises(ValueError, match=r"command line --steps: field 'steps' expects an integer, got 'ten'"):
        parse("--steps", "ten")
    with pytest.raises(ValueError, match=r"field 'flag' expects true/false, got 'maybe'"):
        parse("--flag", "maybe")
    with pytest.raises(ValueError, match=r"field 'kind' expects one of 'x', 'y', got 'z'"):
        parse("--kind", "z")
    with pytest.raises(ValueError, match=r"field 'limit': cannot use 'many'"):
        parse("--limit", "many")
    with pytest.raises(ValueError, match=r"command line: argument --steps: expected one argument"):
        parse("--steps")
    with pytest.raises(ValueError, match=r"unexpected argument 'stray'"):
        parse("stray")
    with pytest.raises(ValueError, match=r"--config needs a file"):
        parse("--config")


def test_yaml_then_overrides(tmp_path, capsys):
    y = tmp_path / "c.yaml"
    y.write_text("lr: 1e-4\nsteps: 5\ntags: [p, q]\nname: null\nkind: y\n")
    c = parse("--config", str(y), "--steps", "6")
    assert (c.lr, c.steps, c.tags, c.name, c.kind) == (1e-4, 6, ["p", "q"], None, "y")
    assert parse(f"--config={y}").steps == 5
    bad = tmp_path / "bad.yaml"
    bad.write_text("stesp: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown config field 'stesp'; did you mean 'steps'"):
        parse("--config", str(bad))
    bad.write_text("steps: 1.5\n")
    with pytest.raises(ValueError, match=r"config file .*bad.yaml: field 'steps' expects an integer, got 1.5"):
        parse("--config", str(bad))
    bad.write_text("steps: [1\n")
    with pytest.raises(ValueError, match=r"bad.yaml: invalid YAML") as e:
        parse("--config", str(bad))
    assert "\n" not in str(e.value)
    bad.write_text("- 1\n")
    with pytest.raises(ValueError, match=r"expected a mapping of fields, got list"):
        parse("--config", str(bad))
    with pytest.raises(ValueError, match=r"nope.yaml does not exist"):
        parse("--config", str(tmp_path / "nope.yaml"))
    # --help lists every flag, with the YAML's values as the defaults (as TrlParser shows them)
    with pytest.raises(SystemExit) as e:
        parse("--config", str(y), "--help")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: prog --config FILE.yaml")
    assert "--steps STEPS" in out and "--no_on" in out and "--config FILE.yaml" in out
    assert "(int; default: 5)" in out and "100% = 1.0" in out


def test_config_help_and_dict():
    text = config_help(Cfg, "prog")
    assert "--tags TAGS [TAGS ...]" in text and "--flag [FLAG]" in text and "(float; default: 0.001)" in text
    c = config_from_dict(Cfg, {"steps": "4", "tags": "u,v"}, where="card")
    assert c.steps == 4 and c.tags == ["u", "v"]
    with pytest.raises(ValueError, match=r"card: unknown config field 'step'; did you mean 'steps'"):
        config_from_dict(Cfg, {"step": 4}, where="card")
    assert coerce("k", "y", Literal["x", "y"]) == "y" and coerce("k", "2", Literal[1, 2]) == 2
