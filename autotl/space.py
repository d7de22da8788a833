"""Search-space files -> Optuna distributions; ``Space.suggest(trial)`` -> :class:`TrialParams`.

A space file (YAML) names the backbones and adapters to choose from, the sampler and pruner,
and the recipe knobs. Each knob is either a fixed value, a range ``{low, high, log, step}``, or
``{choices: [...]}``; ``when: {other_knob: value}`` samples it only when it applies. See
``docs/user-guide.md`` for the syntax.
"""
from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from .composite import SEPARATOR, composite_modality, composite_names
from .errors import AutotlError, PluginError, RegistryError, SpaceError, warn
from .heads import blocked_plugins, export_target, plain_head_adapter
from .selection import DEFAULT_RULE

#: Core knobs: (python type, default, lowest allowed, highest allowed). docs/user-guide.md explains each.
CORE_PARAMS: Dict[str, Tuple[type, Any, Any, Any]] = {
    "strategy": (str, "freeze_depth", None, None),
    "freeze_depth": (float, 0.0, 0.0, 1.0),
    "lp_fraction": (float, 0.25, 0.0, 0.9),
    "surgical_group": (float, 1.0, 0.0, 1.0),
    "optimizer": (str, "adamw", None, None),
    "momentum": (float, 0.9, 0.0, 0.999),
    "head_lr": (float, 1e-3, 1e-7, 1.0),
    "backbone_lr": (str, "multiplier", None, None),
    "backbone_lr_mult": (float, 0.1, 0.0, 10.0),
    "layer_decay": (float, 0.75, 0.0, 1.0),
    "weight_decay": (float, 0.05, 0.0, 1.0),
    "batch_size": (int, 32, 1, 4096),
    "schedule": (str, "cosine", None, None),
    "warmup_epochs": (int, 1, 0, 1000),
    "label_smoothing": (float, 0.0, 0.0, 0.5),
    "crop_scale": (float, 1.0, 0.05, 1.0),
    "hflip": (float, 0.0, 0.0, 1.0),
    "translate": (float, 0.0, 0.0, 0.5),
    "augmentation": (str, "none", None, None),
    "aug_magnitude": (int, 9, 1, 9),
    "mixup_alpha": (float, 0.0, 0.0, 10.0),
    "cutmix_alpha": (float, 0.0, 0.0, 10.0),
    "drop_path": (float, 0.0, 0.0, 0.9),
    "grad_clip": (float, 0.0, 0.0, 1000.0),
    "l2sp": (str, "off", None, None),
    "l2sp_weight": (float, 0.01, 0.0, 10.0),
    # Sets the source's data_config["max_length"] (text: tokens per input) when it has one; None keeps the source's.
    "max_length": (int, None, 1, 8192),
    # A composite source's text part (image+text): its own freeze depth (None: freeze_depth's) and a
    # multiplier of its learning rate on top of the backbone's (None: 1).
    "text_freeze_depth": (float, None, 0.0, 1.0),
    "text_lr_mult": (float, None, 0.0, 100.0),
}
CHOICES = {"backbone_lr": ("multiplier", "layer_decay"), "strategy": ("freeze_depth", "lp_ft", "surgical"),
           "optimizer": ("adamw", "sgd"), "schedule": ("cosine", "linear", "constant"),
           "augmentation": ("none", "randaugment", "trivialaugment"), "l2sp": ("off", "on")}
#: Knobs that ``when`` may name besides the sampled ones: fixed by the data, not searched.
CONTEXT_KEYS = ("backbone", "adapter", "task", "modality")
#: Knobs whose default applies only under another knob's value (None otherwise, so the report shows what applied).
DEPENDENT_DEFAULTS = {"backbone_lr_mult": ("backbone_lr", "multiplier"), "layer_decay": ("backbone_lr", "layer_decay"),
                      "lp_fraction": ("strategy", "lp_ft"), "surgical_group": ("strategy", "surgical"),
                      "momentum": ("optimizer", "sgd"), "l2sp_weight": ("l2sp", "on"),
                      "aug_magnitude": ("augmentation", ("randaugment", "trivialaugment"))}
#: Values that older space files used, and what replaces them.
RETIRED_CHOICES = {("augmentation", "light"): "augmentation 'light' (crop and flip) is now two knobs: "
                                              "write crop_scale: 0.6 and hflip: 0.5 (and augmentation: none)"}
TOP_KEYS = {"description", "epochs", "min_epochs", "backbones", "adapters", "sampler", "pruner", "selection",
            "params", "adapter_params", "default_trials"}
#: Default-recipe trials when neither the space file nor --default-trials says how many.
DEFAULT_RECIPE_TRIALS = 3
SPEC_KEYS = {"low", "high", "log", "step", "choices", "when"}
SAMPLERS = {"tpe": {"n_startup_trials", "multivariate", "constant_liar", "cover_backbones"}, "random": set()}
PRUNERS = {"hyperband": {"reduction_factor"}, "asha-promotion": {"reduction_factor"},
           "median": {"n_startup_trials", "n_warmup_steps"}, "none": set()}
#: How a trial's epochs become its score (see autotl.selection): the rule and its options.
SELECTIONS = {"best": set(), "last": set(), "smoothed": {"window"}}

BUILTIN_SPACES = ("default", "quick", "full")


@dataclass(frozen=True)
class ParamSpec:
    """One knob: fixed (``value``), a range, or choices; ``when`` gates it on earlier knobs."""

    name: str
    kind: str  # "fixed" | "float" | "int" | "categorical"
    value: Any = None
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: Tuple[Any, ...] = ()
    when: Mapping[str, Tuple[Any, ...]] = field(default_factory=dict)
    optuna_name: Optional[str] = None  # differs from name for the variants of one knob

    def applies(self, sampled: Mapping[str, Any]) -> bool:
        return all(sampled.get(k) in allowed for k, allowed in self.when.items())

    def suggest(self, trial: Any, optuna_name: str) -> Any:
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return trial.suggest_categorical(optuna_name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(optuna_name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_float(optuna_name, self.low, self.high, log=self.log, step=self.step)


@dataclass(frozen=True)
class TrialParams:
    """Everything one trial trains with: the sampled knobs plus the fixed ones."""

    backbone: str
    adapter: str
    freeze_depth: float
    head_lr: float
    backbone_lr: str
    backbone_lr_mult: Optional[float]
    layer_decay: Optional[float]
    weight_decay: float
    batch_size: int
    warmup_epochs: int
    label_smoothing: float
    adapter_params: Mapping[str, Any] = field(default_factory=dict)
    strategy: str = "freeze_depth"
    lp_fraction: Optional[float] = None
    surgical_group: Optional[float] = None
    optimizer: str = "adamw"
    momentum: Optional[float] = None
    schedule: str = "cosine"
    crop_scale: float = 1.0
    hflip: float = 0.0
    translate: float = 0.0
    augmentation: str = "none"
    aug_magnitude: Optional[int] = None
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    drop_path: float = 0.0
    grad_clip: float = 0.0
    l2sp: str = "off"
    l2sp_weight: Optional[float] = None
    max_length: Optional[int] = None
    text_freeze_depth: Optional[float] = None
    text_lr_mult: Optional[float] = None

    def data_knobs(self) -> Dict[str, Any]:
        """The knobs that set keys of the source's data config (:data:`autotl.model.DATA_KNOBS`)."""
        return {"max_length": self.max_length} if self.max_length is not None else {}

    def as_dict(self) -> Dict[str, Any]:
        flat = asdict(self)
        flat.pop("adapter_params")
        flat.update({f"{self.adapter}.{k}": v for k, v in self.adapter_params.items()})
        return flat


@dataclass(frozen=True)
class SpaceFile:
    """A parsed and checked space file, not yet tied to the registries."""

    path: str
    description: str
    epochs: int
    min_epochs: int
    include: Tuple[str, ...]
    exclude: Tuple[str, ...]
    adapters: Tuple[str, ...]
    sampler: Mapping[str, Any]
    pruner: Mapping[str, Any]
    params: Tuple[ParamSpec, ...]
    adapter_params: Mapping[str, Mapping[str, Any]]
    selection: Mapping[str, Any] = field(default_factory=lambda: {"name": DEFAULT_RULE})
    default_trials: int = DEFAULT_RECIPE_TRIALS  # a new study's default-recipe trials (--default-trials overrides)


@dataclass(frozen=True)
class Space:
    """A space resolved against the registries: ready to sample trials."""

    file: SpaceFile
    backbones: Tuple[str, ...]
    adapters: Tuple[str, ...]
    adapter_specs: Mapping[str, Tuple[ParamSpec, ...]]
    epochs: int
    task: str = "multiclass"
    modality: str = "image"  # the data's input kind: ``when: {modality: image}`` gates image-only knobs
    #: the first of ``adapters`` registered with ``plain_head=True``: the default recipe's adapter.
    plain_head: Optional[str] = None

    def suggest(self, trial: Any) -> TrialParams:
        """Sample one trial's params; knobs gated by ``when`` are sampled only when they apply.

        Of a knob's variants (a list of specs in the file), the first that applies is sampled.
        A knob that depends on another one (``momentum`` on ``optimizer: sgd``, ...) is None when
        that other knob rules it out, whatever the file says.
        """
        backbone = trial.suggest_categorical("backbone", list(self.backbones))
        adapter = trial.suggest_categorical("adapter", list(self.adapters))
        sampled: Dict[str, Any] = {"backbone": backbone, "adapter": adapter, "task": self.task,
                                   "modality": self.modality}
        core = {name: spec[1] for name, spec in CORE_PARAMS.items()}
        for spec in self.file.params:
            if spec.name not in sampled and spec.applies(sampled):
                sampled[spec.name] = core[spec.name] = spec.suggest(trial, spec.optuna_name or spec.name)
        for name, (parent, value) in DEPENDENT_DEFAULTS.items():
            if core[parent] not in (value if isinstance(value, tuple) else (value,)):
                core[name] = None
        adapter_values: Dict[str, Any] = {}
        for spec in self.adapter_specs.get(adapter, ()):
            if spec.name not in adapter_values and spec.applies({**sampled, **adapter_values}):
                adapter_values[spec.name] = spec.suggest(trial, f"{adapter}.{spec.optuna_name or spec.name}")
        return TrialParams(backbone=backbone, adapter=adapter, adapter_params=adapter_values,
                           **{k: (CORE_PARAMS[k][0](v) if v is not None else None) for k, v in core.items()})


def _fail(path: str, key: str, problem: str, fix: str) -> SpaceError:
    return SpaceError(f"{path}: {key}: {problem}", fix)


def _number(path: str, key: str, value: Any, typ: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, key, f"expected a number, got {value!r}", "write a plain number")
    if typ is int and float(value) != int(value):
        raise _fail(path, key, f"expected a whole number, got {value!r}", "write an integer")
    return typ(value)


def _on_off(value: Any) -> Any:
    """YAML 1.1 reads a bare on/off as a boolean; the knobs that take them want the words."""
    return ("on" if value else "off") if isinstance(value, bool) else value


def parse_param(path: str, name: str, raw: Any, typ: type, lo: Any = None, hi: Any = None,
                choices: Optional[Sequence[Any]] = None) -> ParamSpec:
    """Check one knob's spec against its type and allowed range."""
    key = f"params.{name}"

    def check(value: Any) -> Any:
        if isinstance(value, bool) and choices is not None and "on" in choices:
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if choices is not None:
            if (name, value) in RETIRED_CHOICES:
                raise _fail(path, key, f"{value!r} is no longer a choice", RETIRED_CHOICES[(name, value)])
            if value not in choices:
                raise _fail(path, key, f"{value!r} is not one of {list(choices)}", "pick an allowed value")
            return value
        if typ is str:
            return str(value)
        if typ is object:
            return value
        value = _number(path, key, value, typ)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise _fail(path, key, f"{value!r} is outside [{lo}, {hi}]", f"keep it within [{lo}, {hi}]")
        return value

    if not isinstance(raw, Mapping):
        return ParamSpec(name=name, kind="fixed", value=check(raw))
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise _fail(path, f"{key}.{sorted(unknown)[0]}", "unknown key", f"use only {sorted(SPEC_KEYS)}")
    when = raw.get("when") or {}
    if not isinstance(when, Mapping):
        raise _fail(path, f"{key}.when", "expected a mapping such as {backbone_lr: multiplier}", "fix the when clause")
    when = {k: tuple(_on_off(x) for x in (v if isinstance(v, (list, tuple)) else (v,))) for k, v in when.items()}
    if "choices" in raw:
        if set(raw) & {"low", "high", "log", "step"}:
            raise _fail(path, key, "has both choices and a range", "use one of them")
        opts = raw["choices"]
        if not isinstance(opts, list) or not opts:
            raise _fail(path, f"{key}.choices", "expected a non-empty list", "list the values to choose from")
        return ParamSpec(name=name, kind="categorical", choices=tuple(check(v) for v in opts), when=when)
    if "low" not in raw or "high" not in raw:
        raise _fail(path, key, "a range needs both low and high", "add low and high, or give a fixed value")
    if typ is str or choices is not None:
        raise _fail(path, key, "takes choices, not a range", "write {choices: [...]}")
    low, high = check(raw["low"]), check(raw["high"])
    log = bool(raw.get("log", False))
    step = raw.get("step")
    if low >= high:
        raise _fail(path, key, f"low ({low}) must be below high ({high})", "swap or widen the range")
    if log and low <= 0:
        raise _fail(path, key, f"a log range needs low > 0, got {low}", "raise low or drop log")
    if step is not None:
        step = _number(path, f"{key}.step", step, typ)
        if step <= 0 or log:
            raise _fail(path, f"{key}.step", "step must be positive and cannot be combined with log",
                        "drop log or step")
    kind = "int" if typ is int else "float"
    return ParamSpec(name=name, kind=kind, low=low, high=high, log=log, step=step, when=when)


def _string_list(path: str, key: str, value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(path, key, f"expected a list of names or globs, got {value!r}", "write e.g. ['timm/*']")
    return tuple(value)


def _adapter_list(path: str, raw: Mapping[str, Any]) -> Tuple[str, ...]:
    """The file's ``adapters``; empty when it gives none, which :func:`resolve_space` reads as the
    registered plain head (``plain_head=True``), so no adapter name is hard-coded here."""
    if "adapters" not in raw:
        return ()
    names = _string_list(path, "adapters", raw["adapters"])
    if not names:
        raise _fail(path, "adapters", "the list is empty", "list at least one adapter, or leave adapters out "
                                                           "for the plain linear head")
    return names


def _section(path: str, key: str, raw: Any, allowed: Mapping[str, set], default: str) -> Dict[str, Any]:
    raw = raw or {"name": default}
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping) or raw.get("name") not in allowed:
        raise _fail(path, f"{key}.name", f"unknown {key} {raw.get('name') if isinstance(raw, Mapping) else raw!r}",
                    f"use one of {sorted(allowed)}")
    extra = set(raw) - {"name"} - allowed[raw["name"]]
    if extra:
        raise _fail(path, f"{key}.{sorted(extra)[0]}", "unknown key", f"{raw['name']} takes {sorted(allowed[raw['name']])}")
    return dict(raw)


def _selection(path: str, raw: Any) -> Dict[str, Any]:
    """The ``selection`` section: a rule name, or ``{name: smoothed, window: K}``."""
    section = _section(path, "selection", raw, SELECTIONS, DEFAULT_RULE)
    if "window" in section:
        window = _number(path, "selection.window", section["window"], int)
        if window < 1:
            raise _fail(path, "selection.window", f"must be 1 or more, got {window}", "use e.g. window: 3")
        section["window"] = window
    return section


def resolve_space_path(name_or_path: str) -> Path:
    """A built-in space name (``default``, ``quick``) or a path to a YAML file."""
    if name_or_path in BUILTIN_SPACES:
        return Path(str(resources.files("autotl_search_spaces").joinpath(f"{name_or_path}.yaml")))
    path = Path(name_or_path)
    if not path.is_file():
        raise SpaceError(f"search space {name_or_path!r} is neither a built-in space nor a file",
                         f"use one of {list(BUILTIN_SPACES)} or a path to a .yaml file")
    return path


def load_space_file(name_or_path: str) -> SpaceFile:
    """Read and check a space file; every error names the file and the key."""
    path = resolve_space_path(name_or_path)
    shown = str(path) if name_or_path not in BUILTIN_SPACES else f"{name_or_path}.yaml"
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpaceError(f"{shown}: not valid YAML ({str(exc).splitlines()[0]})", "fix the YAML syntax") from exc
    if not isinstance(raw, Mapping):
        raise SpaceError(f"{shown}: expected a mapping at the top level", "see docs/user-guide.md for the format")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise _fail(shown, sorted(unknown)[0], "unknown key", f"use only {sorted(TOP_KEYS)}")
    epochs = _number(shown, "epochs", raw.get("epochs", 10), int)
    min_epochs = _number(shown, "min_epochs", raw.get("min_epochs", 1), int)
    if epochs < 1 or not 1 <= min_epochs <= epochs:
        raise _fail(shown, "epochs", f"need 1 <= min_epochs ({min_epochs}) <= epochs ({epochs})", "fix the two values")
    default_trials = _number(shown, "default_trials", raw.get("default_trials", DEFAULT_RECIPE_TRIALS), int)
    if default_trials < 0:
        raise _fail(shown, "default_trials", f"expected a number >= 0, got {default_trials}", "write 0 or more")
    bb = raw.get("backbones", {"include": ["*"]})
    if not isinstance(bb, Mapping):
        bb = {"include": bb}
    if set(bb) - {"include", "exclude"}:
        raise _fail(shown, f"backbones.{sorted(set(bb) - {'include', 'exclude'})[0]}", "unknown key",
                    "use include and exclude")
    params_raw = raw.get("params") or {}
    if not isinstance(params_raw, Mapping):
        raise _fail(shown, "params", "expected a mapping of knob: spec", "see docs/user-guide.md")
    params: List[ParamSpec] = []
    for name, spec in params_raw.items():
        if name not in CORE_PARAMS:
            raise _fail(shown, f"params.{name}", "unknown knob",
                        f"known knobs: {', '.join(CORE_PARAMS)} (adapter knobs go under adapter_params)")
        typ, _default, lo, hi = CORE_PARAMS[name]
        params += parse_variants(shown, name, spec, lambda n, raw: parse_param(shown, n, raw, typ, lo, hi,
                                                                                CHOICES.get(n)))
    _check_when(shown, "params", params, defined=set(CONTEXT_KEYS))
    adapter_params = raw.get("adapter_params") or {}
    if not isinstance(adapter_params, Mapping) or not all(isinstance(v, Mapping) for v in adapter_params.values()):
        raise _fail(shown, "adapter_params", "expected {adapter: {knob: spec}}", "see docs/user-guide.md")
    return SpaceFile(
        path=shown, description=str(raw.get("description", "")), epochs=epochs, min_epochs=min_epochs,
        include=_string_list(shown, "backbones.include", bb.get("include", ["*"])),
        exclude=_string_list(shown, "backbones.exclude", bb.get("exclude", [])) if bb.get("exclude") else (),
        adapters=_adapter_list(shown, raw),
        sampler=_section(shown, "sampler", raw.get("sampler"), SAMPLERS, "tpe"),
        pruner=_section(shown, "pruner", raw.get("pruner"), PRUNERS, "hyperband"),
        selection=_selection(shown, raw.get("selection")),
        params=tuple(params), adapter_params={k: dict(v) for k, v in adapter_params.items()},
        default_trials=default_trials,
    )


def parse_variants(path: str, name: str, raw: Any, parse: Any) -> List[ParamSpec]:
    """One knob's spec, or a list of ``when``-gated variants of it (e.g. ``head_lr`` per optimizer).

    Each variant of a listed knob is its own Optuna parameter (``head_lr@optimizer=sgd``), so a
    sampler never mixes two ranges under one name.
    """
    if not isinstance(raw, list):
        return [parse(name, raw)]
    if not raw:
        raise _fail(path, f"params.{name}", "an empty list of variants", "give one spec, or a list of specs with when")
    specs = []
    for i, item in enumerate(raw):
        spec = parse(name, item)
        if not spec.when and i < len(raw) - 1:
            raise _fail(path, f"params.{name}[{i}]", "a variant without when hides the ones after it",
                        "give every variant but the last a when clause")
        label = ",".join(f"{k}={'|'.join(map(str, v))}" for k, v in spec.when.items()) or "otherwise"
        specs.append(ParamSpec(**{**spec.__dict__, "optuna_name": f"{name}@{label}"}))
    return specs


def _check_when(path: str, section: str, specs: Sequence[ParamSpec], defined: set) -> None:
    """A ``when`` clause may only name knobs sampled before it; anything else would never hold."""
    defined = set(defined)
    for p in specs:
        for dep in p.when:
            if dep not in defined and dep != p.name:
                raise _fail(path, f"{section}.{p.name}.when.{dep}", "depends on a knob not defined above it",
                            "define that knob earlier in the file or drop the when clause")
        defined.add(p.name)


def _adapter_specs(file: SpaceFile, adapter: Any) -> Tuple[ParamSpec, ...]:
    """The adapter's own fragment, with the space file's overrides applied."""
    fragment = dict(adapter.space)
    overrides = file.adapter_params.get(adapter.name, {})
    unknown = set(overrides) - set(fragment)
    if unknown:
        raise _fail(file.path, f"adapter_params.{adapter.name}.{sorted(unknown)[0]}", "unknown knob",
                    f"adapter {adapter.name!r} takes {sorted(fragment) or 'no knobs'}")
    fragment.update(overrides)
    label = f"{file.path} (adapter {adapter.name})"
    specs = tuple(v for name, spec in fragment.items()
                  for v in parse_variants(label, name, spec, lambda n, raw: parse_param(label, n, raw, _infer_type(raw))))
    _check_when(label, f"adapter_params.{adapter.name}", specs,
                defined={*CONTEXT_KEYS, *(p.name for p in file.params)})
    return specs


def _infer_type(spec: Any) -> type:
    """The type of an adapter knob, read off its spec: int ranges stay int, anything else as given."""
    if isinstance(spec, Mapping) and "low" in spec:
        ints = all(isinstance(spec.get(k), int) and not isinstance(spec.get(k), bool) for k in ("low", "high"))
        return int if ints else float
    return object


def usable_sources(plugins: Any, names: Sequence[str], key: str) -> List[str]:
    """``names`` without the sources whose ``precheck`` says they cannot be built on this machine.

    Sources left out for the same reason (e.g. hub weights with no network to fetch them) share
    one warning line that names them and says how to get them back. When nothing is left, the
    space cannot be searched here: a ``SpaceError`` with the same fix.
    """
    usable: List[str] = []
    left_out: Dict[Tuple[str, str], List[str]] = {}
    for name in names:
        source = plugins.sources.get(name)
        try:
            if source.precheck is not None:
                source.precheck()
        except AutotlError as exc:
            left_out.setdefault((exc.what, exc.fix), []).append(name)
            continue
        except Exception as exc:  # a plugin's bug in its check: say so, and leave the source out
            left_out.setdefault((f"their precheck raised {type(exc).__name__}: {exc}",
                                 f"fix the plugin {plugins.sources.owner(name)!r} or exclude them with --backbones"),
                                []).append(name)
            continue
        usable.append(name)
    if not usable:
        (what, fix), _ = next(iter(left_out.items()))
        more = f" (and {len(left_out) - 1} other reason(s))" if len(left_out) > 1 else ""
        raise SpaceError(f"{key}: none of the {len(names)} matching source model(s) can be used here: "
                         f"{what}{more}", fix or "pick other backbones")
    for (what, fix), skipped in left_out.items():
        warn(f"{key}: left out {len(skipped)} source model(s) ({', '.join(skipped)}): {what}", fix)
    return usable


def _of_modality(plugins: Any, names: Sequence[str], key: str, modality: str, warn_left_out: bool) -> List[str]:
    """The sources among ``names`` that read ``modality`` input. A space file's globs (``*``) are
    narrowed silently; sources the user named with ``--backbones`` are left out with one warning."""
    from .types import source_modality

    kinds = {name: source_modality(plugins.sources.get(name)) for name in names}
    fit = [name for name in names if kinds[name] == modality]
    other = [name for name in names if kinds[name] != modality]
    if not fit:
        found = ", ".join(sorted(set(kinds.values())))
        raise SpaceError(f"{key}: none of the {len(names)} matching source model(s) reads {modality} input "
                         f"(they read {found})",
                         f"pass --backbones with {modality} source models (autotl backbones lists each one's input)")
    if other and warn_left_out:
        warn(f"{key}: left out {len(other)} source model(s) that do not read {modality} input ({', '.join(other[:5])}"
             f"{', ...' if len(other) > 5 else ''})", f"narrow --backbones to {modality} source models")
    return fit


def resolve_space(file: SpaceFile, plugins: Any, backbones: Optional[Sequence[str]] = None,
                  epochs: Optional[int] = None, task: str = "multiclass", modality: str = "image") -> Space:
    """Tie a space file to the registries: expand backbone globs, check adapters and their knobs.

    Args:
        backbones: ``--backbones`` globs; they replace the file's include list and its excludes.
        epochs: ``--epochs``; replaces the file's max epochs per trial.
        modality: the data's input kind; sources of another kind are left out (with a warning when
            ``--backbones`` named them), and a ``SpaceError`` says so when none is left.
    """
    include, exclude = (tuple(backbones), ()) if backbones else (file.include, file.exclude)
    key = "--backbones" if backbones else f"{file.path}: backbones"
    try:
        composite = composite_modality(modality, plugins)
    except PluginError as exc:
        raise SpaceError(exc.what, exc.fix) from None
    if composite is not None:  # every combination of part sources (image+text: each image x each text source)
        include = tuple(piece for pattern in include for piece in pattern.split(SEPARATOR))
    try:
        names = plugins.sources.match(include, exclude)
    except RegistryError as exc:
        raise SpaceError(f"{key}: {exc.what}", exc.fix or "run `autotl backbones` to see the registered names") from None
    if not names:
        raise SpaceError(f"{key}: every matching source model is excluded",
                         "widen the include globs or drop some excludes")
    if composite is not None:
        names = composite_names(plugins.sources, composite, include, exclude)
        if not names:
            kinds = " and ".join(composite.parts)
            raise SpaceError(f"{key}: {modality} data needs a {kinds} source model each, and the patterns do not "
                             f"match one of every kind", f"name both, e.g. --backbones 'zoo/*,text/*' "
                             "(autotl backbones lists each one's input)")
    else:
        names = _of_modality(plugins, names, key, modality, warn_left_out=bool(backbones))
    names = usable_sources(plugins, names, key)
    adapter_specs = {}
    usable = []
    listed = file.adapters or (_plain_head_name(file, plugins),)
    blocked = blocked_plugins(plugins)
    for name in listed:
        if name not in plugins.adapters:
            hint = f" (blocked with --block-plugin: {', '.join(blocked)}; drop that flag if one of them registers " \
                   "it)" if blocked else ""
            raise SpaceError(f"{file.path}: adapters: unknown target adapter {name!r}",
                             f"registered: {', '.join(plugins.adapters.names()) or 'none'}{hint}")
        adapter = plugins.adapters.get(name)
        try:
            export_target(adapter, plugins)  # checked now, not when the first trial is exported
        except PluginError as exc:
            raise SpaceError(f"{file.path}: adapters: {exc.what}", exc.fix) from None
        missing = [m for m in adapter.requires if importlib.util.find_spec(m) is None]
        if missing:
            warn(f"{file.path}: adapter {name!r} needs {', '.join(missing)}, which is not installed; "
                 "searching without it", f"pip install {' '.join(missing)}, or drop {name!r} from adapters")
            continue
        usable.append(name)
        adapter_specs[name] = _adapter_specs(file, adapter)
    if not usable:
        raise SpaceError(f"{file.path}: adapters: none of {list(listed)} can be used here",
                         "install what the warnings name, or list another adapter")
    for name in file.adapter_params:
        if name not in listed:  # listed but missing its requirements is fine
            raise _fail(file.path, f"adapter_params.{name}", "adapter is not in the adapters list",
                        "add it to adapters or drop its params")
    max_epochs = epochs if epochs is not None else file.epochs
    if max_epochs < 1:
        raise SpaceError(f"--epochs must be at least 1, got {max_epochs}", "pass --epochs 1 or more")
    plain = next((n for n in usable if getattr(plugins.adapters.get(n), "plain_head", False)), None)
    return Space(file=file, backbones=tuple(names), adapters=tuple(usable), adapter_specs=adapter_specs,
                 epochs=max_epochs, task=task, modality=modality, plain_head=plain)


def _plain_head_name(file: SpaceFile, plugins: Any) -> str:
    """The adapter a space without an ``adapters`` list searches: the registered plain head."""
    try:
        return plain_head_adapter(plugins, "a space without an adapters list").name
    except PluginError as exc:
        raise SpaceError(f"{file.path}: adapters: {exc.what}", exc.fix) from None
