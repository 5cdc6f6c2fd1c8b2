"""A search space file: dotted config keys → distributions, read, checked against the config schema, sampled.

    train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    model.dim: {type: int, low: 32, high: 128, step: 32}
    train.num_negatives: {type: categorical, choices: [32, 64, 128]}
    model.regularizer: [none, n3]                       # a list is a categorical
    model.regularizer_weight: {type: float, low: 1.0e-4, high: 0.1, log: true,
                               when: {model.regularizer: [n3]}}   # sampled only when the regulariser is on

A key under ``when`` is sampled only if every named key (an earlier parameter, or the base config's value)
has one of the listed values; otherwise the base config's value stays. Optuna names each parameter by its key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..config import Config, _leaves, config_from, number_from_text, read_yaml_file, to_dict
from ..errors import ConfigError

TYPES = ("float", "int", "categorical")
OPTIONS = {"float": {"type", "low", "high", "log", "step", "when"},
           "int": {"type", "low", "high", "log", "step", "when"},
           "categorical": {"type", "choices", "when"}}


@dataclass(frozen=True)
class Param:
    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    when: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """The parameter as a space file writes it (study.yaml records the space)."""
        out: dict = {"type": self.type}
        if self.type == "categorical":
            out["choices"] = list(self.choices)
        else:
            out.update(low=self.low, high=self.high, log=self.log)
            if self.step is not None:
                out["step"] = self.step
        if self.when:
            out["when"] = {k: list(v) for k, v in self.when.items()}
        return out

    def suggest(self, trial):
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


def read_space(path: str) -> list[Param]:
    """The parameters of a space file, in file order; ConfigError naming the file and key on anything else."""
    if not os.path.isfile(path):
        raise ConfigError(f"search space {path}: not found (expected a YAML file of dotted config keys)")
    return parse_space(read_yaml_file(path, "search space"), path)


def parse_space(tree, where: str = "search space") -> list[Param]:
    if not isinstance(tree, dict) or not tree:
        raise ConfigError(f"{where}: expected a mapping of dotted config keys to distributions, e.g. "
                          f"'train.lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}'")
    return in_condition_order([_param(str(key), spec, where) for key, spec in tree.items()], where)


def in_condition_order(params: list[Param], where: str = "search space") -> list[Param]:
    """The parameters in file order, except that each comes after the parameters its ``when`` names (a
    condition reads the value sampled for them, whatever the order of keys in the file); a cycle is refused."""
    by_key = {p.key: p for p in params}
    ordered, placed, visiting = [], set(), []

    def place(p: Param) -> None:
        if p.key in placed:
            return
        if p.key in visiting:
            cycle = " -> ".join([*visiting[visiting.index(p.key):], p.key])
            raise ConfigError(f"{where}: when: conditions form a cycle ({cycle}); a condition must name a key "
                              f"that does not depend back on it")
        visiting.append(p.key)
        for cond in p.when:
            if cond in by_key and cond != p.key:
                place(by_key[cond])
        visiting.pop()
        placed.add(p.key)
        ordered.append(p)

    for p in params:
        place(p)
    return ordered


def _param(key: str, spec, where: str) -> Param:
    at = f"{where}: {key}"
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{at}: expected {{type: float|int|categorical, ...}} or a list of choices, got {_cut(spec)}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise ConfigError(f"{at}: type {kind!r}; expected one of {', '.join(TYPES)}")
    unknown = set(spec) - OPTIONS[kind]
    if unknown:
        raise ConfigError(f"{at}: unknown option(s) {sorted(unknown)} for type {kind}; known: "
                          f"{sorted(OPTIONS[kind])}")
    when = spec.get("when") or {}
    if not isinstance(when, dict) or not all(isinstance(v, list) and v for v in when.values()):
        raise ConfigError(f"{at}: when: expected {{dotted.key: [values]}}, got {_cut(when)}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{at}: choices: expected a non-empty list")
        nested = [c for c in choices if not _scalar(c)]
        if nested:
            raise ConfigError(f"{at}: choices: {_cut(nested[0])} is a {type(nested[0]).__name__}; each choice must "
                              f"be a single value (a number, a string, true/false or null) — Optuna stores only "
                              f"those")
    for cond, values in when.items():
        nested = [v for v in values if not _scalar(v)]
        if nested:
            raise ConfigError(f"{at}: when: {cond}: {_cut(nested[0])} is not a single value")
    if kind == "categorical":
        return Param(key, kind, choices=tuple(choices), when=when)
    low, high = spec.get("low"), spec.get("high")
    number = int if kind == "int" else (int, float)
    for name, value in (("low", low), ("high", high)):
        value = number_from_text(value)
        if not isinstance(value, number) or isinstance(value, bool):
            raise ConfigError(f"{at}: {name}: expected a{'n int' if kind == 'int' else ' number'}, got {value!r}")
    low, high = number_from_text(low), number_from_text(high)
    if not low < high:
        raise ConfigError(f"{at}: low ({low}) must be below high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool) or (log and low <= 0):
        raise ConfigError(f"{at}: log: expected true/false, and log scale needs low > 0 (low is {low})")
    step = number_from_text(spec.get("step"))
    if step is not None and (not isinstance(step, number) or step <= 0 or log):
        raise ConfigError(f"{at}: step: expected a positive number, and no step on a log scale")
    return Param(key, kind, float(low) if kind == "float" else low, float(high) if kind == "float" else high,
                 log, step, when=when)


def _scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _cut(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_space(params: list[Param], base: Config) -> None:
    """Every key is a config key, and every value the space can produce makes a valid config (the ends of a
    range, every choice); conditions name keys of the space or the config."""
    leaves = _leaves(to_dict(base))
    for p in params:
        if p.key not in leaves:
            close = [k for k in leaves if k.endswith("." + p.key.split(".")[-1])]
            hint = f"; did you mean {' or '.join(close[:3])}?" if close else ""
            raise ConfigError(f"search space: {p.key}: not a config key (see `mmkgc-dist config`){hint}")
        for cond in p.when:
            if cond not in leaves:
                raise ConfigError(f"search space: {p.key}: when: {cond} is not a config key")
            if cond == p.key:
                raise ConfigError(f"search space: {p.key}: when: a key cannot depend on itself")
        values = list(p.choices) if p.type == "categorical" else [p.low, p.high]
        if p.key == "model.scoring":           # names are checked when a model is built: check them here
            from ..model.scorers import SCORERS
            unknown = [v for v in values if v not in SCORERS]
            if unknown:
                raise ConfigError(f"search space: model.scoring: unknown scoring function(s) {unknown}; known: "
                                  f"{sorted(SCORERS)} (a scorer of your own: register it before tuning)")
        for value in values:
            try:
                config_from(base, {**{k: v[0] for k, v in p.when.items()}, p.key: value})
            except ConfigError as exc:
                raise ConfigError(f"search space: {p.key} = {value!r} makes an invalid config: {exc}") from None


def sample(trial, params: list[Param], base: Config) -> dict:
    """{key: value} for one trial: each parameter in file order, a conditional one only when its condition
    holds (on the values sampled so far, else the base config's)."""
    leaves = _leaves(to_dict(base))
    chosen: dict = {}
    for p in params:
        if all(chosen.get(k, leaves.get(k)) in values for k, values in p.when.items()):
            chosen[p.key] = p.suggest(trial)
    return chosen


def base_values(params: list[Param], base: Config) -> dict:
    """The base config's value of each (applicable) parameter: the hand-set trial. ConfigError when one lies
    outside the space (the hand-set config could not be compared as a trial of the study)."""
    leaves = _leaves(to_dict(base))
    values = {p.key: leaves[p.key] for p in params if all(leaves.get(k) in v for k, v in p.when.items())}
    for p in params:
        if p.key not in values:
            continue
        value = values[p.key]
        inside = value in p.choices if p.type == "categorical" else p.low <= value <= p.high
        if not inside:
            span = f"among {list(p.choices)}" if p.type == "categorical" else f"in [{p.low}, {p.high}]"
            raise ConfigError(f"search space: {p.key}: the base config's value {value!r} is not {span}; the study's "
                              f"first trial is the base config (the hand-set reference) — widen the space, set "
                              f"{p.key} in the base config, or pass --no-baseline")
    return values
