"""The one reader of this project's YAML files: configs, study files and benchmark files.

Every file is a tree of frozen dataclasses. A field's type checks the value, its metadata (see
``spec``) bounds it, and an unknown key is refused with the valid keys of its section and the
closest match. A file may start from another of its kind (``base: NAME``), changing only what
it sets.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import ConfigError


def spec(default=dataclasses.MISSING, *, factory=dataclasses.MISSING, low=None, high=None, above=None,
         choices=None, ge=None):
    """A field with bounds: ``low <= v <= high``, ``v > above``, ``v in choices``; ``ge`` names
    another field of the same section the value may not fall below (checked by ``check``)."""
    meta = {k: v for k, v in (("low", low), ("high", high), ("above", above), ("choices", choices), ("ge", ge))
            if v is not None}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(key: str, value: Any, typ: Any, noun: str = "config key") -> Any:
    """Check ``value`` against the field type; ints are accepted where floats are expected."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif typ is dict:
        if isinstance(value, dict):
            return value
    elif typ is tuple:  # a YAML list of anything (its reader checks the entries)
        if isinstance(value, (list, tuple)):
            return tuple(value)
    elif typing.get_origin(typ) is tuple:  # tuple[int, ...] or tuple[float, ...]: a YAML list
        inner = typing.get_args(typ)[0]
        if isinstance(value, str):
            # "96,96,80", "96x96x80" or a printed tuple "(96, 96, 80)"
            value = [v for v in value.strip().strip("()[]").replace("x", ",").split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return tuple(coerce(f"{key}[{i}]", v, inner, noun) for i, v in enumerate(value))
        raise ConfigError(f"{noun} '{key}' expects a list of {getattr(inner, '__name__', inner)}, got {value!r}")
    raise ConfigError(f"{noun} '{key}' expects {getattr(typ, '__name__', typ)}, got {value!r}")


def unknown(dotted: str, prefix: str, names: list[str], moved: dict[str, str], noun: str = "config key"
            ) -> typing.NoReturn:
    """The error for a key no section has: where it moved, or the valid keys and the closest."""
    if dotted in moved:
        raise ConfigError(f"'{dotted}' is no longer a config key: {moved[dotted]}")
    section = prefix.rstrip(".") or "<top level>"
    close = difflib.get_close_matches(dotted.rsplit(".", 1)[-1], names, n=1)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown {noun} '{dotted}'{hint}; valid keys in {section}: {', '.join(names)}")


def build(cls, data: dict, prefix: str = "", moved: dict | None = None, noun: str = "config key"):
    """Dataclass ``cls`` from a nested dict, checked (``check``); every other field keeps its default."""
    obj = merge(cls(), data, prefix, moved, noun)
    check(obj, prefix, noun)
    return obj


def merge(obj, changes: dict, prefix: str = "", moved: dict | None = None, noun: str = "config key"):
    """A copy of ``obj`` with the nested ``changes`` applied and type-checked."""
    moved = moved or {}
    if not isinstance(changes, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {changes!r}")
    types = hints(type(obj))
    names = [f.name for f in fields(obj)]
    kwargs = {}
    for key, value in changes.items():
        dotted = prefix + str(key)
        if key not in names:
            # a moved section given whole names its first moved key ('diffusion.steps', not 'diffusion')
            leaves = [f"{dotted}.{k}" for k in flat_keys(value)] if isinstance(value, dict) else []
            unknown(next((k for k in leaves if k in moved), dotted), prefix, names, moved, noun)
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{noun} '{dotted}' is a section; set its fields like {dotted}.<field>=..., "
                                  f"got {value!r}")
            kwargs[key] = merge(current, value, dotted + ".", moved, noun)
        else:
            kwargs[key] = coerce(dotted, value, types[key], noun)
    return replace(obj, **kwargs)


def check(obj, prefix: str = "", noun: str = "config key") -> None:
    """The bounds of every field (``spec``), and finite numbers everywhere, section by section."""
    for f in fields(obj):
        value, key = getattr(obj, f.name), prefix + f.name
        if is_dataclass(value):
            check(value, key + ".", noun)
            continue
        for v in value if isinstance(value, tuple) else (value,):  # NaN passes every comparison: first
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{noun} '{key}' must be a finite number, got {v}")
        m = f.metadata
        if "choices" in m and value not in m["choices"]:
            raise ConfigError(f"{noun} '{key}' = {value!r}; choose one of {', '.join(map(str, m['choices']))}")
        if "low" in m and value < m["low"]:
            raise ConfigError(f"{noun} '{key}' must be >= {m['low']}, got {value}")
        if "above" in m and value <= m["above"]:
            raise ConfigError(f"{noun} '{key}' must be > {m['above']}, got {value}")
        if "high" in m and value > m["high"]:
            # sizes past these are typos, and some overflow what follows
            raise ConfigError(f"{noun} '{key}' = {value} is beyond any sane setting (at most {m['high']})")


def flat_keys(data: dict, prefix: str = "") -> list[str]:
    """The dotted keys of a nested dict's leaves."""
    out = []
    for k, v in data.items():
        out += flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def to_dict(obj) -> dict:
    """Plain data (lists, not tuples): what YAML and JSON give back, so a tree round-trips."""
    return _plain(dataclasses.asdict(obj))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_flat(obj, prefix: str = "") -> dict[str, Any]:
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            out.update(to_flat(value, prefix + f.name + "."))
        else:
            out[prefix + f.name] = value
    return out


def nest(flat: dict[str, Any]) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}}; nested dicts are merged, so both forms may be mixed."""
    out: dict = {}
    for key, value in flat.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{key}' conflicts with a value set for '{part}'")
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = deep_merge(node[parts[-1]], value)
        else:
            node[parts[-1]] = value
    return out


def deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value parsed as YAML (so 0.5 is a float and true a bool)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


# ----------------------------------------------------------------------------- files
def resolve_shipped(name_or_path: str | Path, directory: Path, what: str) -> Path:
    """A file path, or the name of a YAML file shipped in ``directory``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = directory / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in directory.glob("*.yaml")))
    raise ConfigError(f"{what} file '{name_or_path}' not found (shipped {what} files: {known})")


class StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""


def _no_duplicates(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping (lines {seen[key] + 1} and "
                f"{key_node.start_mark.line + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_text(path: Path, what: str) -> str:
    """A text file the project reads (configs, study and benchmark files, lists): UTF-8, or an
    error naming the file."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} file '{path}' is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file '{path}': {exc.strerror}") from None


def read_yaml(path: Path, what: str) -> dict:
    text = read_text(path, what)
    try:
        data = yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} file '{path}' is not valid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"{what} file '{path}' is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file '{path}' must be a mapping of keys to values, got {type(data).__name__}")
    return data


def read_inherited(name_or_path: str | Path, directory: Path, what: str,
                   merge_fn: Callable[[dict, dict], dict] = deep_merge, _seen: tuple = ()) -> tuple[Path, dict]:
    """A YAML file whose ``base: OTHER`` (a shipped name or a path, relative to the file) is read
    first and overlaid by the file's own keys. Returns the file's path and the merged mapping."""
    path = resolve_shipped(name_or_path, directory, what)
    if path.resolve() in _seen:
        raise ConfigError(f"{what} file '{path}': 'base' makes a loop ({' -> '.join(str(p) for p in _seen)})")
    data = read_yaml(path, what)
    base = data.pop("base", None)
    if base is None:
        return path, data
    relative = path.parent / str(base)
    try:
        _, parent = read_inherited(relative if relative.is_file() else base, directory, what, merge_fn,
                                   _seen + (path.resolve(),))
    except ConfigError as exc:
        raise ConfigError(f"{path}: base {base!r}: {exc}") from None
    return path, merge_fn(parent, data)
