"""`mmf train` takes exactly what MMF's `mmf_run` takes (mmf/utils/flags.py + configuration.py): key=value options
or alternating `key value` words, after the flags -co/--config_override and --local_rank. MMF ships the
`mmf_run` script itself, so ours is `mmf train`."""
import pytest

from mmftrain.config import build_config
from mmftrain.errors import ConfigError
from tests.zoo_helpers import run_mmf

TINY = ["config=projects/m4c/configs/textvqa/tiny.yaml", "datasets=textvqa", "model=m4c"]


def test_alternating_key_value_words_as_mmf():
    cfg = build_config(["config", "projects/m4c/configs/textvqa/tiny.yaml", "datasets", "textvqa", "model", "m4c",
                        "training.seed", "7"])
    assert cfg["training"]["seed"] == 7 and cfg["datasets"] == ["textvqa"]


@pytest.mark.parametrize("flag", [["-co", "{training: {seed: 3}}"], ["--config_override", '{"training": {"seed": 3}}'],
                                  ["--config_override={training: {seed: 3}}"]])
def test_config_override_sits_over_the_config_file(flag):
    assert build_config(flag + TINY)["training"]["seed"] == 3
    # MMF's order: the key=value options win over the override
    assert build_config(flag + TINY + ["training.seed=4"])["training"]["seed"] == 4


@pytest.mark.parametrize("flag", [["--local_rank=1"], ["--local_rank", "0"]])
def test_local_rank_as_torch_distributed_launch_passes_it(flag):
    assert build_config(flag + ["-co", "{training: {seed: 3}}"] + TINY)["training"]["seed"] == 3


@pytest.mark.parametrize("argv, says", [
    (["-co", "{training: {sed: 3}}"], "unknown config key 'training.sed' in --config_override; nearest: training.seed"),
    (["-co", "[1, 2]"], "--config_override must be a mapping"),
    (["-co", "{a: [}"], "--config_override '{a: [}' is not YAML/JSON"),
    (["--local_rank", "x"], "--local_rank must be a rank number"),
])
def test_bad_flag_values_are_one_line_errors(argv, says):
    with pytest.raises(ConfigError) as info:
        build_config(argv + TINY)
    assert says in str(info.value)


def test_flags_through_the_command_line():
    """The whole path (typer's pass-through, run_from_argv): a bad override stops before anything runs."""
    r = run_mmf("train", "--local_rank=0", "-co", "{training: {sed: 1}}", *TINY, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: unknown config key 'training.sed' in --config_override")
    r = run_mmf("train", "-co", timeout=120)
    assert r.returncode == 1 and "option -co needs a value" in r.stderr
