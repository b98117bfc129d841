from pathlib import Path

import pytest

from icd_pipeline.config import ConfigError, load_config, section_json, validate

ROOT = Path(__file__).resolve().parents[1]


def test_default_config_is_valid_and_complete():
    cfg = load_config([ROOT / "config.yaml"])
    assert cfg["dataset"]["source"] == "synthetic"
    assert cfg["icd"]["backbone"] == "efficientnet_lite0"
    assert cfg["pseudo_masks"]["crf"]["iterations"] == 10


@pytest.mark.parametrize("preset", sorted((ROOT / "workflow" / "presets").glob("*.yaml")), ids=lambda p: p.name)
def test_presets_are_valid(preset):
    load_config([ROOT / "config.yaml", preset])


def test_defaults_are_filled_for_missing_sections():
    cfg = validate({})
    assert cfg["seed"] == 0 and cfg["pseudo_masks"]["crf"]["bilateral_srgb"] == 13


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"icd\.learning_rate \(unknown key\)"):
        validate({"icd": {"learning_rate": 0.1}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"icd\.epochs"):
        validate({"icd": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match=r"maps\.flip"):
        validate({"maps": {"flip": "False"}})  # strings are not booleans


def test_json_sections_and_bad_json(tmp_path):
    cfg = load_config(json_text='{"seed": 3, "icd": {"epochs": 2}}')
    assert cfg["seed"] == 3 and cfg["icd"]["epochs"] == 2
    assert section_json(cfg, "seed") == '{"seed":3}'
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(json_text="{oops")
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "missing.yaml"])


def test_later_files_override_earlier(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("icd: {epochs: 3, lr: 0.5}\n")
    b.write_text("icd: {epochs: 4}\n")
    cfg = load_config([a, b])
    assert cfg["icd"]["epochs"] == 4 and cfg["icd"]["lr"] == 0.5


def test_cli_strings_are_coerced_to_schema_types():
    from icd_pipeline.config import coerce_cli_strings

    cfg = {"icd": {"epochs": "5", "scales": ["0.5", "1"], "pretrained": "false"},
           "dataset": {"name": "123", "root": "/x"}, "seeds": {"background": "saliency"}}
    coerce_cli_strings(cfg)
    assert cfg["icd"] == {"epochs": 5, "scales": [0.5, 1], "pretrained": False}
    assert cfg["dataset"]["name"] == "123" and cfg["seeds"]["background"] == "saliency"
    validate(cfg)
    bad = coerce_cli_strings({"icd": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match="icd.epochs"):
        validate(bad)


BROKEN_YAML = "icd:\n  lr: 0.1\n  scales: [1, 2\nmaps: {}\n"  # the flow sequence is never closed


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN_YAML)
    with pytest.raises(ConfigError) as err:
        load_config([ROOT / "config.yaml", broken])
    assert str(err.value) == (f"{broken}:4:5: YAML syntax error: expected ',' or ']', but got ':' "
                              "(while parsing a flow sequence at line 3, column 11)")
    tabs = tmp_path / "tabs.yaml"
    tabs.write_text("icd:\n\tlr: 0.1\n")
    with pytest.raises(ConfigError, match=r"tabs\.yaml:2:1: YAML syntax error: .*YAML indents with spaces, not tabs"):
        load_config([tabs])


def test_entry_point_names_the_broken_line(tmp_path, capsys):
    from icd_pipeline.stages import train_icd

    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN_YAML)
    assert train_icd.main(["--config", str(broken), "--data-root", str(tmp_path), "--grid-superpixels", "8",
                           "--out-dir", str(tmp_path / "out")]) == 1
    assert f"error: {broken}:4:5: YAML syntax error" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
