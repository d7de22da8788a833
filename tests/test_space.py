"""Search-space files: built-ins load, bad files fail with one line naming file and key."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import optuna
import pytest

from autotl import SpaceError, get_plugin_manager
from autotl.space import BUILTIN_SPACES, load_space_file, resolve_space
from conftest import FIXTURE_PLUGINS


def write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.mark.parametrize("name", BUILTIN_SPACES)
def test_builtin_spaces_load_and_sample(name, plugins):
    space = resolve_space(load_space_file(name), plugins, backbones=["timm/test_*"])
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        params = space.suggest(study.ask())
        assert params.backbone.startswith("timm/test_")
        assert 0.0 <= params.freeze_depth <= 1.0
        assert params.head_lr > 0
        assert (params.backbone_lr_mult is not None) == (params.backbone_lr == "multiplier")
        assert (params.layer_decay is not None) == (params.backbone_lr == "layer_decay")


def test_default_space_excludes_test_models(tmp_path):
    # resnet50's weights are local here; the other hub sources, without a network or a cached copy, are
    # left out with a warning (tests/test_offline.py)
    (Path(os.environ["AUTOTL_TIMM_WEIGHTS"]) / "resnet50.a1_in1k.safetensors").touch()
    with pytest.warns(UserWarning, match="left out 7 source model"):
        space = resolve_space(load_space_file("default"), get_plugin_manager())
    assert not any(b.startswith("timm/test_") for b in space.backbones)
    assert "timm/resnet50.a1_in1k" in space.backbones


def test_conditional_knobs_are_sampled_only_when_they_apply(tmp_path, plugins):
    path = write(tmp_path, """
        backbones: ["timm/test_resnet"]
        params:
          backbone_lr: {choices: [multiplier, layer_decay]}
          backbone_lr_mult: {low: 0.01, high: 1.0, log: true, when: {backbone_lr: multiplier}}
          layer_decay: {low: 0.5, high: 1.0, when: {backbone_lr: layer_decay}}
    """)
    space = resolve_space(load_space_file(path), plugins)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        params = space.suggest(trial)
        seen.add(params.backbone_lr)
        if params.backbone_lr == "multiplier":
            assert "backbone_lr_mult" in trial.params and "layer_decay" not in trial.params
        else:
            assert "layer_decay" in trial.params and "backbone_lr_mult" not in trial.params
        study.tell(trial, 0.5)
    assert seen == {"multiplier", "layer_decay"}


def test_fixed_values_and_int_knobs(tmp_path, plugins):
    path = write(tmp_path, """
        backbones: ["timm/test_resnet"]
        params:
          head_lr: 0.005
          batch_size: {low: 8, high: 64, step: 8}
    """)
    space = resolve_space(load_space_file(path), plugins)
    trial = optuna.create_study(direction="maximize").ask()
    params = space.suggest(trial)
    assert params.head_lr == 0.005 and "head_lr" not in trial.params
    assert isinstance(params.batch_size, int) and params.batch_size % 8 == 0


def test_adapter_fragment_is_sampled_with_prefix(tmp_path):
    plugins = get_plugin_manager([str(FIXTURE_PLUGINS / "custom_net.py")])
    path = write(tmp_path, """
        backbones: ["acme/tiny"]
        adapters: [dropout_linear]
        adapter_params:
          dropout_linear: {dropout: {low: 0.1, high: 0.2}}
    """)
    space = resolve_space(load_space_file(path), plugins)
    trial = optuna.create_study(direction="maximize").ask()
    params = space.suggest(trial)
    assert 0.1 <= params.adapter_params["dropout"] <= 0.2
    assert "dropout_linear.dropout" in trial.params
    assert params.as_dict()["dropout_linear.dropout"] == params.adapter_params["dropout"]


@pytest.mark.parametrize("body, pattern", [
    ("colour: red\n", r"space.yaml: colour: unknown key"),
    ("params:\n  learning_rate: 0.1\n", r"space.yaml: params.learning_rate: unknown knob"),
    ("params:\n  head_lr: {low: 0.1, high: 0.01}\n", r"params.head_lr: low \(0.1\) must be below high \(0.01\)"),
    ("params:\n  head_lr: {low: 0.0000000001, high: 0.1, log: true}\n", r"params.head_lr: 1e-10 is outside"),
    ("params:\n  freeze_depth: {low: 0.0, high: 2.0}\n", r"params.freeze_depth: 2.0 is outside \[0.0, 1.0\]"),
    ("params:\n  weight_decay: {low: 0.0, high: 0.1, log: true}\n", r"params.weight_decay: a log range needs low > 0"),
    ("params:\n  backbone_lr: sideways\n", r"params.backbone_lr: 'sideways' is not one of"),
    ("params:\n  head_lr: {low: 0.01}\n", r"params.head_lr: a range needs both low and high"),
    ("params:\n  head_lr: {low: 0.001, high: 0.01, spread: 2}\n", r"params.head_lr.spread: unknown key"),
    ("params:\n  batch_size: {low: 8.5, high: 64}\n", r"params.batch_size: expected a whole number"),
    ("params:\n  layer_decay: {low: 0.5, high: 0.9, when: {optimizer: sgd}}\n", r"params.layer_decay.when.optimizer"),
    ("params:\n  layer_decay: {low: 0.5, high: 0.9, when: {backbone_lr: layer_decay}}\n  backbone_lr: layer_decay\n",
     r"params.layer_decay.when.backbone_lr: depends on a knob not defined above it"),
    ("sampler: {name: cmaes}\n", r"sampler.name: unknown sampler"),
    ("pruner: {name: hyperband, patience: 3}\n", r"pruner.patience: unknown key"),
    ("epochs: 0\n", r"space.yaml: epochs"),
    ("default_trials: -1\n", r"space.yaml: default_trials: expected a number >= 0"),
    ("default_trials: two\n", r"space.yaml: default_trials: expected a number"),
    ("params: [1, 2]\n", r"params: expected a mapping"),
    ("params: {head_lr: 0.1\n", r"space.yaml: not valid YAML"),
])
def test_bad_space_files(tmp_path, plugins, body, pattern):
    path = write(tmp_path, body)
    with pytest.raises(SpaceError, match=pattern) as info:
        resolve_space(load_space_file(path), plugins)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("body, pattern", [
    ("backbones: ['acme/*']\n", r"space.yaml: backbones: no source model matches 'acme/\*'"),
    ("backbones: ['timm/test_resnt']\n", r"did you mean 'timm/test_resnet'"),
    ("adapters: [lorra]\n", r"space.yaml: adapters: unknown target adapter 'lorra'"),
    ("adapter_params: {linear: {rank: 4}}\n", r"adapter_params.linear.rank: unknown knob"),
    ("backbones: {include: ['timm/test_vit'], exclude: ['timm/*']}\n", r"every matching source model is excluded"),
])
def test_space_checked_against_registries(tmp_path, plugins, body, pattern):
    with pytest.raises(SpaceError, match=pattern):
        resolve_space(load_space_file(write(tmp_path, body)), plugins)


def test_unknown_space_name():
    with pytest.raises(SpaceError, match="'huge' is neither a built-in space nor a file"):
        load_space_file("huge")


def test_cli_backbones_override_and_unknown(plugins):
    space = resolve_space(load_space_file("default"), plugins, backbones=["timm/test_vit"])
    assert space.backbones == ("timm/test_vit",)
    with pytest.raises(SpaceError, match="--backbones: no source model matches 'nope/\\*'"):
        resolve_space(load_space_file("default"), plugins, backbones=["nope/*"])


@pytest.mark.parametrize("space", ["default", "quick", "full"])
def test_every_builtin_space_samples_valid_trainable_configurations(space, plugins):
    """A property test: many random trials of each space, each built on a tiny backbone, set up
    for its strategy, given its optimizer, and taken through one training step."""
    import optuna
    import torch

    from autotl.freeze import set_trainable, trainable_groups
    from autotl.model import build_model
    from autotl.regularize import set_drop_path
    from autotl.space import CHOICES, CORE_PARAMS, DEPENDENT_DEFAULTS, load_space_file, resolve_space
    from autotl.trainer import make_optimizer

    resolved = resolve_space(load_space_file(space), plugins, ["timm/test_vit", "timm/test_resnet"], 4)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(24):
        trial = study.ask()
        params = resolved.suggest(trial)
        for name, (typ, _default, lo, hi) in CORE_PARAMS.items():
            value = getattr(params, name)
            parent = DEPENDENT_DEFAULTS.get(name)
            allowed = parent[1] if parent and isinstance(parent[1], tuple) else parent[1:] if parent else ()
            if parent and getattr(params, parent[0]) not in allowed:
                assert value is None, (name, params)  # sampled only when it applies
                continue
            if value is None and _default is None:  # unset: the source's own value (max_length)
                continue
            assert isinstance(value, typ), (name, value)
            if name in CHOICES:
                assert value in CHOICES[name]
            elif lo is not None:
                assert lo <= value <= hi, (name, value)
        seen.add((params.adapter, params.strategy, params.optimizer))
        adapter = plugins.adapters.get(params.adapter)
        model = build_model(plugins.sources.get(params.backbone), adapter, 3, params.adapter_params)
        set_drop_path(model.module, params.drop_path)
        set_trainable(model, trainable_groups(len(model.groups), strategy=params.strategy,
                                              freeze_depth=params.freeze_depth, surgical_group=params.surgical_group))
        optimizer, _ = make_optimizer(model, params, epochs=4, steps_per_epoch=2)
        loss = model.module(torch.randn(4, *model.data_config["input_size"])).logsumexp(1).mean()
        loss.backward()
        optimizer.step()
        study.tell(trial, float(loss.detach()))
    if space == "full":
        assert {a for a, _, _ in seen} >= {"linear", "mlp", "bitfit", "cosine"}
        assert {s for _, s, _ in seen} == {"freeze_depth", "lp_ft", "surgical"}
        assert {o for _, _, o in seen} == {"adamw", "sgd"}


def test_variants_are_separate_optuna_parameters_and_the_task_gates_knobs(plugins):
    import optuna

    from autotl.space import load_space_file, resolve_space

    for task, smoothing in (("multiclass", True), ("regression", False)):
        resolved = resolve_space(load_space_file("full"), plugins, ["timm/test_vit"], 2, task=task)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
        names = set()
        for _ in range(20):
            trial = study.ask()
            params = resolved.suggest(trial)
            names |= set(trial.params)
            lr_name = "head_lr@optimizer=adamw" if params.optimizer == "adamw" else "head_lr@optimizer=sgd"
            assert trial.params[lr_name] == params.head_lr
            assert (params.momentum is not None) == (params.optimizer == "sgd")
            assert (params.l2sp_weight is not None) == (params.l2sp == "on")
            study.tell(trial, 0.0)
        assert {"head_lr@optimizer=adamw", "head_lr@optimizer=sgd"} <= names and "head_lr" not in names
        assert ("label_smoothing" in names) == smoothing


@pytest.mark.parametrize("body, pattern", [
    ("params:\n  head_lr: []\n", r"params.head_lr: an empty list of variants"),
    ("params:\n  head_lr:\n    - {low: 0.001, high: 0.01}\n    - {low: 0.01, high: 0.1, when: {optimizer: sgd}}\n",
     r"params.head_lr\[0\]: a variant without when hides the ones after it"),
    ("params:\n  strategy: {choices: [freeze_depth, distill]}\n", r"'distill' is not one of"),
    ("params:\n  l2sp: maybe\n", r"params.l2sp: 'maybe' is not one of \['off', 'on'\]"),
    ("selection: luckiest\n", r"selection.name: unknown selection 'luckiest'"),
    ("selection: {name: smoothed, window: 0}\n", r"selection.window: must be 1 or more"),
    ("selection: {name: last, window: 3}\n", r"selection.window: unknown key"),
])
def test_bad_variants_and_choices(tmp_path, body, pattern):
    from autotl.space import load_space_file

    path = tmp_path / "space.yaml"
    path.write_text(body)
    with pytest.raises(SpaceError, match=pattern):
        load_space_file(str(path))


def test_bare_on_off_in_yaml_means_the_words(tmp_path, plugins):
    import optuna

    from autotl.space import load_space_file, resolve_space

    path = tmp_path / "space.yaml"
    path.write_text("params:\n  l2sp: on\n  l2sp_weight: {low: 0.001, high: 0.01, log: true, when: {l2sp: on}}\n")
    params = resolve_space(load_space_file(str(path)), plugins, ["timm/test_vit"], 2).suggest(optuna.create_study().ask())
    assert params.l2sp == "on" and 0.001 <= params.l2sp_weight <= 0.01


@pytest.mark.parametrize("space_name, image_only", [
    ("default", {"hflip", "translate"}),
    ("full", {"crop_scale", "hflip", "translate", "augmentation", "mixup_alpha", "cutmix_alpha"}),
])
def test_image_only_knobs_are_sampled_for_images_and_not_for_text(plugins, space_name, image_only):
    """``when: {modality: image}``: augmentation knobs that do nothing to text are not searched on text."""
    file = load_space_file(space_name)
    for modality, expected in (("image", image_only), ("text", set())):
        backbones = ["timm/test_resnet"] if modality == "image" else ["text/test-bert"]
        space = resolve_space(file, plugins, backbones, modality=modality)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        sampled = set()
        for _ in range(6):
            trial = study.ask()
            space.suggest(trial)
            sampled |= set(trial.params)
            study.tell(trial, 0.5)
        assert sampled & image_only == expected, modality
