"""A config node compared with its dataclass (treesynth/settings/schema.py): one line per problem, and the
node read into the dataclass once it has none."""

from __future__ import annotations

import operator
import types
from dataclasses import fields, is_dataclass
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf

from treesynth.errors import TreesynthError
from treesynth.settings.schema import OptionBy, Settings

C = TypeVar("C")


def check_settings(cfg: DictConfig) -> list[str]:
    """One line per problem of the whole config: a described key missing or left `???`, of the wrong type
    or out of range. Keys described nowhere (`+llm.new_knob=...`) are left alone."""
    return node_problems(cfg, Settings, "")


def load(node: Any, cls: type[C], path: str) -> C:
    """`node` (the config at `path`, e.g. cfg.data.hygiene at "data.hygiene") as a `cls` instance, every
    field read from the node; a missing key, a wrong type or a value out of range raises one
    TreesynthError line naming the key. Keys of the node that `cls` does not declare are not read."""
    if not isinstance(node, DictConfig):
        raise TreesynthError(f"{path} must be a group of settings, got {_plain(node)!r}")
    if problems := node_problems(node, cls, f"{path}."):
        raise TreesynthError("; ".join(problems))
    return _build(cls, node, {})


def stray_keys(node: Any, tp: Any, prefix: str = "") -> list[str]:
    """Keys the config sets that the dataclass does not declare (`+llm.new_knob=...`, or a YAML value no
    code reads): what tests/test_settings_match_yaml.py requires to be none for the shipped options."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated and isinstance(node, DictConfig):
        tp, origin, args = _option(tp, node), None, ()
    if origin in (Union, types.UnionType):
        typed = [t for t in args if _is_type(node, t)]
        return stray_keys(node, typed[0], prefix) if typed else []
    if isinstance(node, DictConfig) and is_dataclass(tp):
        hints = get_type_hints(tp, include_extras=True)
        return [f"{prefix}{k}" for k in node.keys() if k not in hints] + [
            p for f in fields(tp) if f.name in node.keys() and not OmegaConf.is_missing(node, f.name)
            for p in stray_keys(node[f.name], hints[f.name], f"{prefix}{f.name}.")]
    if isinstance(node, DictConfig) and origin is dict:
        return [p for k, v in node.items() for p in stray_keys(v, args[1], f"{prefix}{k}.")]
    return []


def node_problems(node: DictConfig, cls: type, prefix: str) -> list[str]:
    """One line per problem of `node` against `cls` (keys named `prefix` + field)."""
    hints = get_type_hints(cls, include_extras=True)
    problems, missing = [], [f.name for f in fields(cls) if f.name not in node.keys()]  # (`in` is false for ???)
    if len(missing) == 1:
        problems.append(f"{prefix}{missing[0]} is missing (set +{prefix}{missing[0]}=... or add it to the option's YAML)")
    elif missing:
        problems.append(f"{prefix.removesuffix('.') or 'the config'} is missing {', '.join(missing)} (set "
                        f"+{prefix}KEY=... or add them to the option's YAML)")
    for f in fields(cls):
        path = f"{prefix}{f.name}"
        if f.name in missing:
            continue
        if OmegaConf.is_missing(node, f.name):
            problems.append(f"{path} is required (set {path}=... on the command line)")
            continue
        try:
            value = node[f.name]
        except Exception as e:  # an interpolation that does not resolve
            problems.append(f"{path}: {str(e).splitlines()[0]}")
            continue
        problems += _problems(path, value, hints[f.name], f.metadata)
    return problems


def _option(tp: Any, value: Any) -> type:
    """The dataclass of a group whose options differ (Annotated with OptionBy) for this node."""
    option = next(a for a in tp.__metadata__ if isinstance(a, OptionBy))
    return option.options.get(str(value.get(option.key)), get_args(tp)[0])


def _problems(path: str, value: Any, tp: Any, meta: Any) -> list[str]:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        if not isinstance(value, DictConfig):
            return [_wrong(path, value, args[0])]
        return node_problems(value, _option(tp, value), f"{path}.")
    if origin in (Union, types.UnionType):
        for t in args:
            if not _problems(path, value, t, meta):
                return []
        # The value has the right type but a bad range: say that, not "must be X or null".
        typed = [t for t in args if _is_type(value, t)]
        return _problems(path, value, typed[0], meta) if typed else [_wrong(path, value, tp)]
    if origin is Literal:
        ok = any(value == a and type(value) is type(a) for a in args)
        return [] if ok else [_wrong(path, value, tp)]
    if origin is list:
        if not isinstance(value, ListConfig):
            return [_wrong(path, value, tp)]
        return [p for i, v in enumerate(value) for p in _problems(f"{path}[{i}]", v, args[0], meta)]
    if origin is dict:
        if not isinstance(value, DictConfig):
            return [_wrong(path, value, tp)]
        return [p for k, v in value.items() for p in _problems(f"{path}.{k}", v, args[1], meta)]
    if is_dataclass(tp):
        return node_problems(value, tp, f"{path}.") if isinstance(value, DictConfig) else [_wrong(path, value, tp)]
    if not _is_type(value, tp):
        return [_wrong(path, value, tp)]
    if "choices" in meta and str(value) not in (choices := list(meta["choices"]())):
        return [f"{path} must be one of {', '.join(choices)}, got {value!r}"]
    if tp in (int, float) and (out := _out_of_range(value, {k: v for k, v in meta.items() if k in _OPS})):
        return [f"{path} must be {out}, got {value}"]
    return []


def _build(tp: Any, value: Any, meta: Any) -> Any:
    """The checked `value` as `tp`: dataclasses for groups, plain lists and dicts, floats for numbers."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _build(_option(tp, value), value, meta)
    if origin in (Union, types.UnionType):
        return _build(next(t for t in args if not _problems("", value, t, meta)), value, meta)
    if is_dataclass(tp):
        hints = get_type_hints(tp, include_extras=True)
        return tp(**{f.name: _build(hints[f.name], value[f.name], f.metadata) for f in fields(tp)})
    if origin is list:
        return [_build(args[0], v, meta) for v in value]
    if origin is dict:
        return {str(k): _build(args[1], v, meta) for k, v in value.items()}
    if tp is float:
        return float(value)
    if tp is str:
        return str(value)
    return _plain(value)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _is_type(value: Any, tp: Any) -> bool:
    """The value's type, not its contents (a group is a mapping, a list a list; a Literal's choices are not
    a type). bool is not a number here (true must not pass as 1); a number passes as a string
    (wandb.group=2024); an integer passes as a float (train.lr=1)."""
    origin = get_origin(tp)
    if tp is Any:
        return True
    if origin is Annotated or origin is dict or is_dataclass(tp):
        return isinstance(value, DictConfig)
    if origin is list:
        return isinstance(value, ListConfig)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    return False


_OPS = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "le": ("<=", operator.le), "lt": ("<", operator.lt)}


def _out_of_range(value: float, bounds: dict[str, float]) -> str | None:
    """None when `value` is within `bounds` (a field's metadata), else the range it must be in."""
    if all(_OPS[op][1](value, b) for op, b in bounds.items()):
        return None
    if len(bounds) == 2:  # a lower and an upper bound: interval notation
        (lo, a), (hi, b) = sorted(bounds.items(), key=lambda kv: kv[0] in ("le", "lt"))
        return f"in {'[' if lo == 'ge' else '('}{a}, {b}{']' if hi == 'le' else ')'}"
    ((op, b),) = bounds.items()
    return f"{_OPS[op][0]} {b}"


def _describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated or is_dataclass(tp) or origin is dict:
        return "a group of settings"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(t) for t in args)
    if origin is Literal:
        return ", ".join(map(str, args)) if len(args) == 1 else "one of " + ", ".join(map(str, args))
    if origin is list:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            type(None): "null"}.get(tp, str(tp))


def _wrong(path: str, value: Any, tp: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    return f"{path} must be {_describe(tp)}, got {value!r}"
