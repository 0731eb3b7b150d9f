import json

import pytest

from lcron.settings import THREE_STAGE, TWO_STAGE, Setting, SettingError, get_setting, load_setting_file


def test_builtin_tables_match_the_spec():
    assert TWO_STAGE.list_size == 40 and THREE_STAGE.list_size == 50
    assert TWO_STAGE.quotas == (30, 20) and THREE_STAGE.quotas == (40, 30, 20)
    assert TWO_STAGE.stage_models == ("dssm", "din")
    assert THREE_STAGE.stage_models == ("dssm", "mlp", "din")
    assert TWO_STAGE.group_slice("coarse_neg") == slice(20, 30)
    assert THREE_STAGE.bce_slots(1) == 40 and THREE_STAGE.bce_slots(2) == 20
    assert TWO_STAGE.icc_reference_cutoffs == (30, 30)
    assert THREE_STAGE.icc_reference_cutoffs == (40, 30, 30)
    assert not TWO_STAGE.lcron_hard_labels and THREE_STAGE.lcron_hard_labels


@pytest.mark.parametrize("spec,expected", [(2, TWO_STAGE), ("3", THREE_STAGE), ("two_stage", TWO_STAGE)])
def test_get_setting(spec, expected):
    assert get_setting(spec) is expected


def test_get_setting_by_stages_keyword():
    assert get_setting(stages=3) is THREE_STAGE
    with pytest.raises(SettingError, match="built-in: 2, 3"):
        get_setting(4)


def test_user_file_json_and_yaml(tmp_path):
    j = tmp_path / "s.json"
    j.write_text(json.dumps({"name": "mine", "base": "two_stage", "quotas": [25, 10]}))
    s = load_setting_file(j)
    assert s.quotas == (25, 10) and s.groups == TWO_STAGE.groups and s.name == "mine"
    y = tmp_path / "s.yaml"
    y.write_text("name: mine3\nbase: three_stage\nquotas: [45, 25, 12]\n")
    assert get_setting(str(y)).quotas == (45, 25, 12)
    assert Setting.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "must hold a mapping"),
    ('{"base": "two_stage", "name": "x", "quotas": [50, 20]}', "exceeds the 40 items"),
    ('{"base": "two_stage", "name": "x", "quotas": [20, 30]}', "exceeds the 20 items"),
    ('{"base": "two_stage", "name": "x", "quotas": [30]}', "'quotas' has 1 entries for 2 stages"),
    ('{"base": "two_stage", "name": "x", "colour": 1}', "unknown field"),
    ('{"base": "two_stage", "name": "x", "groups": ["rank_pos", "bogus"]}', "unknown group"),
    ('{"base": "two_stage", "name": "x", "stage_models": ["din", "din"]}', "first stage must be"),
    ('{"base": "nope", "name": "x"}', "unknown setting"),
])
def test_malformed_setting_files_are_clear_errors(tmp_path, content, match):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(SettingError, match=match) as info:
        load_setting_file(p)
    assert str(p) in str(info.value)


def test_missing_setting_file():
    with pytest.raises(SettingError, match="does not exist"):
        load_setting_file("/nonexistent/setting.json")


def test_integral_floats_are_integers():
    """KFP (kfp.local's protobuf Struct) and some YAML writers deliver every number as a float."""
    s = Setting.from_dict({"name": "f", "base": "two_stage", "quotas": [25.0, 10.0], "group_size": 10.0})
    assert s.quotas == (25, 10) and all(type(q) is int for q in s.quotas) and type(s.group_size) is int
    assert s.list_size == 40 and type(s.list_size) is int
    with pytest.raises(SettingError, match="quota 25.5 of stage 'retrieval' must be a positive integer"):
        Setting.from_dict({"name": "f", "base": "two_stage", "quotas": [25.5, 10]})
