"""MMF's own M4C project configs, unmodified (tests/mmf_configs/<version>/, copied from facebookresearch/mmf at
1.0.0rc10 = c02a63d8 and main = b0ffc7fb), placed in the working directory as a user's copy and trained as
`mmf train config=projects/m4c/configs/... datasets=... model=m4c run_type=train_val` plus size overrides.
Renamed MMF keys are read under their new names with one deprecation line each; harmless ones are named once;
command-line overrides stay strict; every problem of a config is reported at once."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmfconfig.errors import ConfigError
from mmfconfig.resolve import build_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIGS = [("textvqa/defaults.yaml", "textvqa"), ("textvqa/joint_with_stvqa.yaml", "textvqa"),
           ("stvqa/defaults.yaml", "stvqa")]
# tiny.yaml's narrow M4C as MMF's -co mapping (the MMF files stay unmodified), and a run of a few updates
NARROW = {"text_bert_init_from_bert_base": False, "fc7_weights_dir": "", "fc7_out_dim": 128,
          "text_bert": {"num_hidden_layers": 1, "hidden_size": 128, "num_attention_heads": 4, "intermediate_size": 256},
          "obj": {"mmt_in_dim": 128}, "ocr": {"mmt_in_dim": 1082},
          "mmt": {"hidden_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 256},
          "classifier": {"ocr_ptr_net": {"hidden_size": 128, "query_key_size": 128}}}
SMALL = ["training.device=cpu", "training.batch_size=8", "training.max_updates=2", "training.num_workers=0",
         "training.log_interval=1", "training.warmup_iterations=1", "training.lr_steps=[]",
         "training.evaluation_interval=1000", "evaluation.batch_size=16", "env.fetch_missing_data=false"]


def user_copy(tmp_path, version):
    """A working directory holding MMF's `projects/` tree of `version`, as a user's checkout would."""
    work = tmp_path / f"work-{version}"
    shutil.copytree(HERE / "mmf_configs" / version, work)
    return work


@pytest.mark.parametrize("version", ["rc10", "main"])
@pytest.mark.parametrize("config,dataset", CONFIGS)
def test_mmf_project_configs_resolve_from_the_working_directory(tmp_path, monkeypatch, version, config, dataset):
    monkeypatch.chdir(user_copy(tmp_path, version))
    notes = []
    cfg = build_config([f"config=projects/m4c/configs/{config}", f"datasets={dataset}", "model=m4c",
                        "run_type=train_val"], environ={}, say=notes.append)
    assert cfg["config"] == str(Path.cwd() / "projects/m4c/configs" / config)  # the user's copy, not ours
    assert cfg["training"]["max_updates"] == 24000 and cfg["training"]["batch_size"] == 128
    assert "max_iterations" not in cfg["training"]
    if version == "rc10":  # one line for the one renamed key, naming the file it is in and the new name
        assert len(notes) == 1 and "training.max_iterations is MMF's old name of training.max_updates" in notes[0]
        assert "defaults.yaml" in notes[0]
    else:
        assert notes == []


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from mmfdata.synth import write_synthetic

    out = tmp_path_factory.mktemp("synth")
    write_synthetic(str(out), questions=24, seed=5, stvqa_questions=24, val_questions=8, test_questions=8)
    return out


@pytest.mark.parametrize("version", ["rc10", "main"])
@pytest.mark.parametrize("config,dataset", CONFIGS)
def test_mmf_project_configs_train_as_they_are(tmp_path, synth, version, config, dataset):
    work = user_copy(tmp_path, version)
    before = {p: p.read_bytes() for p in work.rglob("*.yaml")}
    narrow = json.dumps({"model_config": {"m4c": NARROW}})
    r = subprocess.run([sys.executable, "-m", "mmftrain.cli", "-co", narrow, f"config=projects/m4c/configs/{config}",
                        f"datasets={dataset}", "model=m4c", "run_type=train_val", f"env.data_dir={synth}",
                        f"env.save_dir={tmp_path / 'save'}", *SMALL], cwd=work, capture_output=True, text=True,
                       timeout=400, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert (tmp_path / "save" / "summary.json").is_file() and (tmp_path / "save" / "m4c_final.pth").is_file()
    assert out.count("is MMF's old name of") == (1 if version == "rc10" else 0), out[-3000:]
    log = (tmp_path / "save" / "train.log").read_text()
    assert log.count("is MMF's old name of") == (1 if version == "rc10" else 0)  # the run's record keeps it
    assert {p: p.read_bytes() for p in work.rglob("*.yaml")} == before  # used as they are


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BASE = ["datasets=textvqa", "model=m4c", "run_type=train_val"]


def test_harmless_mmf_keys_are_named_once_in_one_warning(tmp_path):
    # rc10's defaults.yaml sets stdout_capture; main's sets colored_logs and pin_memory: no effect here
    write(tmp_path / "mine.yaml", "includes:\n- projects/m4c/configs/textvqa/defaults.yaml\n"
          "training:\n  stdout_capture: true\n  colored_logs: true\n  pin_memory: false\n")
    child = write(tmp_path / "child.yaml", "includes:\n- ./mine.yaml\ntraining:\n  stdout_capture: false\n")
    notes = []
    cfg = build_config([f"config={child}", *BASE], environ={}, say=notes.append)
    assert len(notes) == 1, notes
    assert all(k in notes[0] for k in ("training.stdout_capture", "training.colored_logs", "training.pin_memory"))
    assert notes[0].count("training.stdout_capture") == 1  # set in two files, named once
    assert not {"stdout_capture", "colored_logs", "pin_memory"} & set(cfg["training"])


def test_renamed_values_and_mmf_upgrade_keys_are_read_under_their_new_names(tmp_path):
    old = write(tmp_path / "old.yaml", "includes:\n- projects/m4c/configs/textvqa/defaults.yaml\n"
                "training:\n  trainer: base_trainer\n  run_type: val\n  resume_best: true\n")
    notes = []
    cfg = build_config([f"config={old}", "datasets=textvqa", "model=m4c"], environ={}, say=notes.append)
    assert cfg["training"]["trainer"] == "mmf" and cfg["run_type"] == "val" and cfg["checkpoint"]["resume_best"]
    assert len(notes) == 3 and all("old name of" in n for n in notes), notes


def test_a_renamed_key_beside_its_new_name_with_another_value_is_refused(tmp_path):
    both = write(tmp_path / "both.yaml", "training:\n  max_iterations: 10\n  max_updates: 20\n")
    with pytest.raises(ConfigError, match="sets both training.max_iterations=10 and training.max_updates=20"):
        build_config([f"config={both}", *BASE], environ={})


def test_an_including_file_wins_over_an_old_key_it_includes(tmp_path):
    write(tmp_path / "old.yaml", "training:\n  max_iterations: 10\n")
    new = write(tmp_path / "new.yaml", "includes:\n- ./old.yaml\ntraining:\n  max_updates: 20\n")
    assert build_config([f"config={new}", *BASE], environ={})["training"]["max_updates"] == 20


@pytest.mark.parametrize("override,message", [
    ("training.max_iterations=5", "training.max_iterations is MMF's old name of training.max_updates; write "
                                  "training.max_updates=VALUE"),
    ("training.stdout_capture=false", "training.stdout_capture has no effect here"),
])
def test_command_line_overrides_stay_strict(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config(["config=projects/m4c/configs/textvqa/defaults.yaml", *BASE, override], environ={})


def test_every_problem_of_a_config_is_reported_at_once(tmp_path):
    bad = write(tmp_path / "bad.yaml", "includes:\n- projects/m4c/configs/textvqa/defaults.yaml\n"
                "training:\n  max_update: 5\n  wandb:\n    enabled: true\n")
    with pytest.raises(ConfigError) as info:
        build_config([f"config={bad}", *BASE, "training.batch_sise=3", "optimizer.params.lr=-1"], environ={})
    lines = str(info.value).splitlines()
    assert lines[0] == "4 problems in the config:", lines
    for needle in ("unknown config key 'training.max_update'", "training.wandb=", "'training.batch_sise'",
                   "optimizer.params.lr must be"):
        assert sum(needle in line for line in lines[1:]) == 1, (needle, lines)


def test_the_cli_prints_every_problem_one_line_each_and_exits_1(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mmftrain.cli", "config=projects/m4c/configs/textvqa/tiny.yaml",
                        *BASE, "training.batch_size=0", "training.seed=x", f"env.save_dir={tmp_path / 's'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: 2 problems in the config:\n") and r.stderr.count("\n") == 3, r.stderr
    assert not (tmp_path / "s").exists()
