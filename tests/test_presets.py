"""Settings a researcher can trust: the paper's recipe, config layers and their origins."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from icd_pipeline.cli import config_command
from icd_pipeline.config import (SCHEMA_ORIGIN, ConfigError, format_resolved, load_config, resolve_layers,
                                 resolve_workflow_config, validate)
from icd_pipeline.losses import HEAD_LR_MULT_MODULES, poly_lr, warmup_iterations
from icd_pipeline.models.deeplab import default_head_channels as deeplab_head_channels
from icd_pipeline.models.deeplab import default_rates
from icd_pipeline.models.icd import default_head_channels as icd_head_channels

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "workflow" / "presets"
CONFIG_YAML = ROOT / "config.yaml"

# The paper's recipe, written from ../shared/specs/icd-method.md (section in the comment), not
# from the schema: the test fails when either the schema defaults or the VOC preset drift.
PAPER = {
    # 3: FH(75, 0.8, 75) merged to 64 regions on ImageNet VGG16 conv5_3 (stride 8)
    "superpixels.scale": 75, "superpixels.sigma": 0.8, "superpixels.min_size": 75,
    "superpixels.max_regions": 64, "superpixels.feature_backbone": "vgg16",
    "superpixels.feature_input_scale": 1.0, "superpixels.feature_output_stride": 8,
    # 1.1-1.2: VGG16 DeepLab layout, ImageNet init, conv5 dilated (stride 8), nothing frozen,
    # fc6/fc7 1024 wide (head_channels null -> 1024 on vgg16), dropout 0.5
    "icd.backbone": "vgg16", "icd.pretrained": True, "icd.output_stride": 8, "icd.out_block": None,
    "icd.frozen_stages": 0, "icd.freeze_bn": False, "icd.head_channels": None, "icd.dropout": 0.5,
    # 1.3, 2.7: the ICD BN shift is trained; W ~ N(0, 0.01^2)
    "icd.bn_shift_trainable": True, "icd.w_init_std": 0.01,
    # 4: batch 32, 321 crops, scales 0.5-1.5, 20 epochs, SGD lr 1e-3 momentum 0.9 wd 5e-4
    "icd.input_scale": 1.0, "icd.crop_size": 321, "icd.scales": [0.5, 0.75, 1.0, 1.25, 1.5],
    "icd.batch_size": 32, "icd.epochs": 20, "icd.lr": 0.001, "icd.momentum": 0.9,
    "icd.weight_decay": 0.0005,
    # 2.2, 2.5: bottom-up weight 10, top-down mask |r| > 0.2, warm-up 2 epochs
    "icd.bu_weight": 10.0, "icd.td_mask_threshold": 0.2, "icd.warmup_epochs": 2.0,
    # 2.2: L_bu from single-label images only
    "icd.bottom_up_images": "single",
    # 5.1: extraction single scale, no flip, batch 4
    "maps.scales": [1.0], "maps.flip": False, "maps.batch_size": 4,
    # 5.2, 5.4: seeds (image labels only): background = every present class's T < 0
    "seeds.background": "icd", "seeds.icd_bg_threshold": 1e-5,
    "seeds.saliency_bg_threshold": 0.01, "seeds.saliency_min_area": 0.01, "seeds.saliency_crf": False,
    # 5.4: a salient pixel is foreground only where ICD says so (disagreements 255), ICD's classes
    "seeds.saliency_assign": "agree", "seeds.saliency_classes": "icd",
    # 5.3: CRF on 21 labels, confidence 0.5, Gaussian 3/3, bilateral 80/13/10, 10 iterations
    "pseudo_masks.crf.unary_confidence": 0.5, "pseudo_masks.crf.gaussian_sxy": 3,
    "pseudo_masks.crf.gaussian_compat": 3, "pseudo_masks.crf.bilateral_sxy": 80,
    "pseudo_masks.crf.bilateral_srgb": 13, "pseudo_masks.crf.bilateral_compat": 10,
    "pseudo_masks.crf.iterations": 10, "pseudo_masks.crf.min_posterior": 0.1,
    # 6 (proxy: CIAN): DeepLab-v2 ASPP ResNet-101 (rates null -> 6/12/18/24), stride 8, trained on
    # the ICD+CRF pseudo-masks, 321 crops, scales 0.5-1.5 + flip, batch 16, lr 5e-4 (x10 head),
    # 20 epochs, backbone BN frozen; tested at 0.75/1/1.25 + flip + CRF (3/3, 80/13/10, 5 it.)
    "deeplab.model": "deeplab_v2_aspp", "deeplab.backbone": "resnet101", "deeplab.pretrained": True,
    "deeplab.output_stride": 8, "deeplab.rates": None, "deeplab.head_channels": None,
    "deeplab.pseudo_masks": "icd_crf", "deeplab.input_scale": 1.0, "deeplab.crop_size": 321,
    "deeplab.scales": [0.5, 0.75, 1.0, 1.25, 1.5], "deeplab.flip": True, "deeplab.batch_size": 16,
    "deeplab.epochs": 20, "deeplab.lr": 0.0005, "deeplab.momentum": 0.9, "deeplab.weight_decay": 0.0005,
    "deeplab.head_lr_mult": 10.0, "deeplab.freeze_bn": True, "deeplab.freeze_backbone": False,
    "deeplab.test_scales": [0.75, 1.0, 1.25], "deeplab.test_flip": True, "deeplab.test_crf": True,
    "deeplab.test_crf_params": {"gaussian_sxy": 3, "gaussian_compat": 3, "bilateral_sxy": 80,
                                "bilateral_srgb": 13, "bilateral_compat": 10, "iterations": 5},
}


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and not prefix + key == "deeplab.test_crf_params":
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def drift(config: dict) -> dict:
    """{key: (paper, resolved)} for every key of the paper table the config gets wrong."""
    resolved = flat(config)
    return {k: (v, resolved.get(k, "<missing>")) for k, v in PAPER.items() if resolved.get(k, "<missing>") != v}


def test_voc2012_preset_is_the_paper_recipe_key_by_key(monkeypatch):
    monkeypatch.chdir(ROOT)
    config, origins = resolve_workflow_config([PRESETS / "voc2012.yaml"], default_configfile=CONFIG_YAML)
    assert drift(config) == {}
    # the null defaults resolve to the paper's sizes in the model code
    assert icd_head_channels("vgg16") == 1024 and deeplab_head_channels("resnet101") == 1024
    assert tuple(default_rates("deeplab_v2_aspp", "resnet101")) == (6, 12, 18, 24)
    # nothing the method reads comes from config.yaml (the embedded CPU run)
    assert not [k for k, o in origins.items() if o == "config.yaml"]
    assert config["dataset"]["train_split"] == "train_aug"


def test_paper_recipe_in_code():
    """The parts of the recipe that are code, not keys: 10x lr on fc8 and conv_ft, poly 0.9 per
    epoch (spec 4), warm-up K_w = 2 * 10582 // 32 = 661 iterations (spec 2.5)."""
    assert set(HEAD_LR_MULT_MODULES) == {"fc8", "conv_ft"}
    assert poly_lr(1e-3, 0, 20) == 1e-3 and poly_lr(1e-3, 10, 20) == pytest.approx(1e-3 * 0.5 ** 0.9)
    assert warmup_iterations(2.0, 10582, 32) == 661
    assert warmup_iterations(1.0, 1000, 16) == 62  # the embedded run, as before


def test_base_paper_ignores_whatever_config_yaml_holds(tmp_path):
    odd = tmp_path / "config.yaml"
    odd.write_text("icd: {bn_shift_trainable: false, lr: 0.5, frozen_stages: 5, momentum: 0.5}\n"
                   "pseudo_masks: {crf: {bilateral_compat: 0}}\nseeds: {icd_bg_threshold: 0.6}\n")
    config, _ = resolve_workflow_config([PRESETS / "voc2012.yaml"], default_configfile=odd)
    assert drift(config) == {}
    # a preset without `base: paper` inherits from config.yaml, and the command line wins over all
    config, origins = resolve_workflow_config([PRESETS / "voc2012_sample.yaml"], {"icd": {"epochs": "3"}},
                                              default_configfile=odd)
    assert config["icd"]["momentum"] == 0.5 and origins["icd.momentum"] == "config.yaml"
    assert origins["icd.lr"] == "workflow/presets/voc2012_sample.yaml"
    assert config["icd"]["epochs"] == 3 and origins["icd.epochs"] == "command line"


def test_embedded_departures_are_commented():
    """Every value config.yaml sets away from the schema defaults (the paper) has its reason
    beside it: a comment on its line, or the comment block that opens its section."""
    defaults = flat(validate({}))
    resolved, origins = resolve_layers([("config.yaml", yaml.safe_load(CONFIG_YAML.read_text()))])
    lines = CONFIG_YAML.read_text().splitlines()
    missing = []
    for key, value in flat(resolved).items():
        if origins.get(key) != "config.yaml" or defaults.get(key) == value or key.endswith("num_workers"):
            continue
        section, leaf = key.split(".")[0], key.split(".")[-1]
        start = next(i for i, line in enumerate(lines) if line.startswith(f"{section}:"))
        line = next(line for line in lines[start:] if re.match(rf"\s+{leaf}:", line))
        block = lines[start + 1].lstrip().startswith("#") or "#" in lines[start]
        if "#" not in line and not block:
            missing.append(key)
    assert missing == []


def test_bad_base_is_named(tmp_path):
    with pytest.raises(ConfigError, match="base"):
        resolve_layers([("p.yaml", {"base": "papr"})])


def test_show_prints_every_leaf_with_its_origin_and_reads_back(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # a file's origin is its path from the current folder
    assert config_command(["show", "--configfile", str(PRESETS / "voc2012.yaml"), "--config", "icd={epochs: 3}",
                 "experiment=short"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^  bn_shift_trainable: true +# schema default \(paper\)$", text, re.M)
    assert re.search(r"^  epochs: 3 +# command line$", text, re.M)
    assert re.search(r"^  name: voc2012 +# workflow/presets/voc2012.yaml$", text, re.M)
    # the text is a config file that reproduces the run, whatever config.yaml holds
    expected, _ = resolve_workflow_config([PRESETS / "voc2012.yaml"], {"icd": {"epochs": 3}, "experiment": "short"})
    assert load_config(yaml_text_file(text)) == expected


def yaml_text_file(text: str) -> list[Path]:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "resolved.yaml"
    path.write_text(text)
    return [path]


def test_show_changed_lists_exactly_the_departures():
    config, origins = resolve_layers([("config.yaml", yaml.safe_load(CONFIG_YAML.read_text()))])
    text = format_resolved(config, origins, changed_only=True)
    shown = flat(yaml.safe_load(text))
    shown.pop("base")
    defaults = flat(validate({}))
    assert shown == {k: v for k, v in flat(config).items() if defaults.get(k) != v}
    assert shown["icd.bn_shift_trainable"] is False and "icd.momentum" not in shown
    assert all(o != SCHEMA_ORIGIN for k, o in origins.items() if k in shown)


def test_show_command_line_matches_snakemake_parsing(capsys):
    """The entry point as a user runs it; 1e-5 (YAML 1.1 reads it as a string) becomes a number."""
    proc = subprocess.run([sys.executable, "-m", "icd_pipeline", "config", "show", "--changed", "--config",
                           "seeds={icd_bg_threshold: 1e-5}", "seed=2"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert shown["seed"] == 2 and "seeds" not in shown  # 1e-5 is the paper's value again
    assert config_command(["show", "--config", "icd={epochs: ten}"]) == 2
    assert "icd.epochs" in capsys.readouterr().err


def test_experiment_names_cannot_shadow_shared_folders():
    assert validate({"experiment": "lr_0.01"})["experiment"] == "lr_0.01"
    for bad in ("data", "superpixels", "a/b", ""):
        with pytest.raises(ConfigError, match="experiment"):
            validate({"experiment": bad})
