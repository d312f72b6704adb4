"""configuration.py: the enum table and the config-file reader."""

from __future__ import annotations

import pytest

from configs import x4
from lfcsr_jax import configuration


def test_the_paper_config_has_no_enum_problems_and_each_bad_value_is_named():
    config = x4.get_config()
    assert configuration.enum_problems(config) == []
    config.admm.lowpass = "box"
    config.model.dtype = "int8"
    problems = configuration.enum_problems(config)
    assert len(problems) == 2
    assert any(p.startswith("config.admm.lowpass='box': expected one of") for p in problems)
    assert any("config.model.dtype='int8'" in p for p in problems)


def test_every_enum_field_of_the_table_exists_in_the_config():
    config = x4.get_config()
    for field, allowed in configuration.ENUM_FIELDS:
        group, name = field.split(".")
        assert config[group][name] in allowed, field


def test_load_config_file_reads_the_variant(tmp_path):
    assert configuration.load_config_file("configs/x4.py:tiny") == x4.get_config("tiny")
    assert configuration.load_config_file("configs/x4.py") == x4.get_config()
    # A variant file that imports configs.x4 (the repo root is on sys.path, as for main).
    po = configuration.load_config_file("configs/ablation_po.py")
    assert po.admm.constrained_band == "high"
    with pytest.raises(FileNotFoundError, match="config file not found"):
        configuration.load_config_file(tmp_path / "absent.py")
