"""The resolved config is read-only and carries its folder defaults (issue 19, "frozen, typed settings with paths
expanded once"): a component cannot change what validation judged; the run's drawn seed lives in the run's state
and is still what config.yaml and the checkpoints record."""
import copy
import json
import pickle

import pytest
import torch
import yaml

from mmftrain.config import build_config, dump_yaml
from tests.test_train_e2e import data_dir, run, train_cmd  # noqa: F401 (data_dir is a fixture)

M4C = ["config=projects/m4c/configs/textvqa/defaults.yaml", "datasets=textvqa", "model=m4c"]


@pytest.fixture(scope="module")
def cfg():
    return build_config(M4C + ["env.save_dir=/tmp/frozen-save"], environ={})


@pytest.mark.parametrize("mutate", [
    lambda c: c["training"].__setitem__("seed", 3),
    lambda c: c.__setitem__("run_type", "val"),
    lambda c: c["env"].pop("log_dir"),
    lambda c: c["env"].update(save_dir="/elsewhere"),
    lambda c: c["checkpoint"].setdefault("new_key", 1),
    lambda c: c["model_config"]["m4c"].__delitem__("mmt"),
    lambda c: c["training"]["lr_steps"].append(5),
    lambda c: c["training"]["lr_steps"].__setitem__(0, 1),
    lambda c: c["evaluation"]["metrics"].clear(),
    lambda c: c["dataset_config"]["textvqa"].clear(),
], ids=["set", "set-top", "pop", "update", "setdefault", "del", "list-append", "list-set", "list-clear", "clear"])
def test_mutating_the_resolved_config_raises(cfg, mutate):
    before = dump_yaml(cfg)
    with pytest.raises(TypeError, match="the resolved config is read-only"):
        mutate(cfg)
    assert dump_yaml(cfg) == before  # nothing changed on the way to the error


def test_frozen_config_reads_pickles_and_dumps_like_a_dict(cfg):
    assert isinstance(cfg, dict) and isinstance(cfg["training"]["lr_steps"], list)
    again = pickle.loads(pickle.dumps(cfg))  # DataLoader workers receive it this way
    assert again == cfg
    with pytest.raises(TypeError):
        again["training"]["seed"] = 1  # and it stays read-only there
    assert copy.deepcopy(cfg) == cfg
    assert json.loads(json.dumps(cfg)) == yaml.safe_load(dump_yaml(cfg))  # plain YAML, no python/object tags
    assert "!!python" not in dump_yaml(cfg)


def test_run_folder_defaults_are_filled_in_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = build_config(M4C + ["env.save_dir=rel-save"], environ={})["env"]
    save = tmp_path / "rel-save"
    assert env["save_dir"] == str(save)
    assert (env["log_dir"], env["report_dir"], env["tensorboard_logdir"]) == \
        (str(save), str(save / "reports"), str(save / "tensorboard"))
    explicit = build_config(M4C + ["env.save_dir=s", "env.report_dir=r", "env.log_dir=/abs/logs"],
                            environ={"MMF_TENSORBOARD_LOGDIR": "tb"})["env"]
    assert (explicit["log_dir"], explicit["report_dir"], explicit["tensorboard_logdir"]) == \
        ("/abs/logs", str(tmp_path / "r"), str(tmp_path / "tb"))


def test_drawn_seed_is_recorded_though_the_config_stays_as_resolved(data_dir, tmp_path):  # noqa: F811
    save = tmp_path / "save"
    r = run(train_cmd(data_dir, save, "training.max_updates=2", "training.checkpoint_interval=2",
                      "training.seed=-1"))
    assert r.returncode == 0, r.stderr[-3000:]
    seed = json.loads((save / "summary.json").read_text())["seed"]
    assert isinstance(seed, int) and seed != -1
    recorded = yaml.safe_load((save / "config.yaml").read_text())
    assert recorded["training"]["seed"] == seed
    # the folders left to their defaults are recorded as such: reused with another env.save_dir, they follow it
    assert (recorded["env"]["log_dir"], recorded["env"]["report_dir"], recorded["env"]["tensorboard_logdir"]) == \
        ("", "", "")
    state = torch.load(save / "current.ckpt", map_location="cpu", weights_only=True)  # plain types only
    assert state["config"]["training"]["seed"] == seed and state["seed"] == seed
    assert (save / "train.log").is_file()  # env.log_dir "" = the save dir, filled in by mmfconfig
