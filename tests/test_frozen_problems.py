"""Config validation reports every problem it can find at once: a missing config file, unknown model and
datasets, missing includes and include cycles do not hide the others (issue 19, "one owner per fact")."""
import os
import subprocess
import sys

import pytest

from mmftrain.config import build_config, load_yaml
from mmftrain.errors import ConfigError


def _problems(argv):
    with pytest.raises(ConfigError) as e:
        build_config(argv, environ={})
    return str(e.value).splitlines()


def test_unknown_model_dataset_and_bad_value_all_reported():
    lines = _problems(["config=projects/m4c/configs/textvqa/defaults.yaml", "model=m4cc", "datasets=textvqa,vqa9",
                       "training.batch_size=0", "training.seeed=3"])
    text = "\n".join(lines)
    assert lines[0] == "4 problems in the config:", text
    assert "unknown model 'm4cc'; known models: m4c" in text
    assert "unknown dataset 'vqa9'" in text and "textvqa" in text
    assert "training.batch_size must be an integer >= 1, got 0" in text
    assert "unknown config key 'training.seeed'" in text
    assert "model_config.None" not in text  # the unknown model is named once, not again as a missing section


def test_missing_config_file_does_not_hide_the_rest():
    text = "\n".join(_problems(["config=nope/missing.yaml", "model=m4c", "datasets=stvqaa",
                                "training.max_updates=-5"]))
    assert "nope/missing.yaml" in text and "not found" in text
    assert "unknown dataset 'stvqaa'" in text
    assert "training.max_updates must be an integer >= 1" in text


def test_include_cycle_and_missing_include_reported_with_the_rest(tmp_path):
    (tmp_path / "a.yaml").write_text("includes: [b.yaml, gone.yaml]\ntraining: {batch_size: -1}\n")
    (tmp_path / "b.yaml").write_text("includes: [a.yaml]\ntraining: {lr_ratio: 0}\n")
    text = "\n".join(_problems([f"config={tmp_path / 'a.yaml'}", "model=m4c", "datasets=textvqa",
                                "training.max_updates=-5"]))
    assert "config includes form a cycle" in text and "remove one of the includes" in text
    assert "gone.yaml" in text and "not found" in text
    assert "training.batch_size must be an integer >= 1, got -1" in text
    assert "training.lr_ratio must be a number > 0" in text  # b.yaml's values still merged and checked
    assert "training.max_updates must be an integer >= 1" in text


def test_no_model_and_no_dataset_both_reported():
    text = "\n".join(_problems(["model=", "datasets=", "training.batch_size=0"]))
    assert "no model given" in text and "no dataset given" in text and "training.batch_size" in text


def test_library_load_yaml_still_raises_the_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("includes: [a.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml(tmp_path / "a.yaml")


def test_cli_prints_one_line_per_problem_and_exits_1():
    r = subprocess.run([sys.executable, "-m", "mmftrain.cli", "config=nope/missing.yaml", "model=m4cc",
                        "datasets=vqa9", "training.batch_size=0"], capture_output=True, text=True, timeout=120,
                       env={**os.environ})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 5, r.stderr  # the count line, then one line each
    assert "4 problems" in lines[0]
    for needle in ("missing.yaml", "unknown model 'm4cc'", "unknown dataset 'vqa9'", "training.batch_size"):
        assert sum(needle in l for l in lines[1:]) == 1, (needle, r.stderr)
