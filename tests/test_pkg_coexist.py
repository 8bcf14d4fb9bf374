"""mmf-zoo installs beside MMF: no shared top-level name, console script or file, in either install order, and
uninstalling either leaves the other working. Real wheels, real venvs, real pip.

Our wheel is built from a copy of the checkout (offline, --no-build-isolation). MMF's rc10 is an sdist with a C
extension, so its wheel is built outside the tests, where the network is allowed: `.ci/run` does
`pip wheel --no-deps mmf==1.0.0rc10 -w $MMF_ZOO_TEST_WHEELS`; without it the install tests skip, saying so.
The venvs have no system site-packages; our dependencies come from this interpreter's site-packages through a
folder of links to everything there except mmf-zoo and MMF themselves (no editable hook, no dist-info of either).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.zoo_helpers import ROOT

# What MMF ships, read from the rc10 wheel and from master's setup.py (facebookresearch/mmf b0ffc7fb).
MMF_TOP_LEVEL = {"mmf", "mmf_cli"}
MMF_SCRIPTS = {"mmf_run", "mmf_predict", "mmf_convert_hm", "mmf_interactive"}
MMF_WHEEL_GLOB = "mmf-1.0.0rc10-*.whl"
FETCH_MMF = "pip wheel --no-deps mmf==1.0.0rc10 -w DIR && export MMF_ZOO_TEST_WHEELS=DIR"
VERSION = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
WHERE = "from zoo.project import CONFIGS_DIR, checkout; print(CONFIGS_DIR, checkout())"
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "NOTICE", "zoo", "mmfconfig", "mmfdata", "mmftrain", "mmfzoo_cli",
           "configs")


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """A copy of the checkout, so builds leave no build/ or egg-info in it."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    return src


@pytest.fixture(scope="module")
def our_wheel(source_copy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(out), str(source_copy)], check=True, capture_output=True, timeout=300)
    return next(out.glob("mmf_zoo-*.whl"))


@pytest.fixture(scope="module")
def mmf_wheel() -> Path:
    folder = os.environ.get("MMF_ZOO_TEST_WHEELS")
    found = sorted(Path(folder).glob(MMF_WHEEL_GLOB)) if folder else []
    if not found:
        pytest.skip(f"MMF's rc10 wheel is not in $MMF_ZOO_TEST_WHEELS ({folder or 'unset'}); "
                    f"build it with: {FETCH_MMF}")
    return found[-1]


@pytest.fixture(scope="module")
def deps_dir(tmp_path_factory) -> Path:
    """Links to this interpreter's installed packages, without mmf-zoo's or MMF's own (names starting `mmf`,
    `zoo`, editable hooks, .pth files: those are processed only in a real site dir, and must not be here)."""
    farm = tmp_path_factory.mktemp("deps")
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for entry in Path(site).iterdir():
            name = entry.name.lower()
            if name.startswith(("mmf", "zoo", "__editable__", "configs")) or name.endswith(".pth"):
                continue
            if not (farm / entry.name).exists():
                (farm / entry.name).symlink_to(entry)
    return farm


def _venv(path: Path, deps: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "zz_test_deps.pth").write_text(f"{deps}\n")  # after the venv's own site-packages on sys.path
    return python


def _installed_files(python: Path, dist: str) -> set[Path]:
    """Every file `dist`'s RECORD lists, as absolute paths (what `pip uninstall` would delete)."""
    code = ("import importlib.metadata as m, json, sys; d = m.distribution(sys.argv[1]); "
            "print(json.dumps([str(d.locate_file(f).resolve()) for f in d.files]))")
    out = subprocess.run([str(python), "-c", code, dist], capture_output=True, text=True, check=True).stdout
    return {Path(p) for p in json.loads(out)}


def _wheel_names(wheel: Path) -> tuple[set[str], set[str]]:
    """(top-level names, console scripts) a wheel installs."""
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next((z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")), "")
    top = {n.split("/")[0] for n in names if ".dist-info/" not in n and ".data/" not in n}
    top = {t[:-3] if t.endswith(".py") else t for t in top}
    scripts, section = set(), None
    for line in entry_points.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[console_scripts]" and "=" in line:
            scripts.add(line.split("=")[0].strip())
    return top, scripts


def test_wheel_names_are_ours(our_wheel):
    top, scripts = _wheel_names(our_wheel)
    assert top == {"zoo", "mmfconfig", "mmfdata", "mmftrain", "mmfzoo_cli", "mmfzoo_configs"}
    assert scripts == {"mmf"}
    assert not top & MMF_TOP_LEVEL and not scripts & MMF_SCRIPTS


def test_wheel_holds_the_whole_checkout(our_wheel):
    """pyproject lists packages by name: a package or YAML file added to the tree but not to that list fails here."""
    with zipfile.ZipFile(our_wheel) as z:
        names = set(z.namelist())
    want = {str(p.relative_to(ROOT)) for pkg in ("zoo", "mmfconfig", "mmfdata", "mmftrain", "mmfzoo_cli")
            for p in (ROOT / pkg).rglob("*.py")}
    want |= {"mmfzoo_configs/" + str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.yaml")}
    assert want - names == set()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert any(n.endswith(".dist-info/licenses/NOTICE") for n in names)


def test_mmf_wheel_names_are_as_recorded(mmf_wheel, our_wheel):
    """The names above are what the real rc10 wheel ships (master adds mmf_interactive)."""
    top, scripts = _wheel_names(mmf_wheel)
    assert top == MMF_TOP_LEVEL and scripts <= MMF_SCRIPTS and "mmf_run" in scripts
    ours_top, ours_scripts = _wheel_names(our_wheel)
    assert not top & ours_top and not scripts & ours_scripts


def _run(python: Path, *args: str) -> str:
    """Run a command of the venv from / with no PYTHONPATH, so nothing of the checkout can be picked up."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    r = subprocess.run([str(python.parent / args[0]), *args[1:]], capture_output=True, text=True, timeout=120,
                       env=env, cwd="/")
    assert r.returncode == 0, f"{args}: {r.stderr[-2000:]}"
    return r.stdout


def _check_ours(python: Path, files: set[Path]) -> None:
    missing = sorted(str(p) for p in files if not p.exists())
    assert not missing, f"mmf-zoo files gone: {missing[:5]}"
    assert _run(python, "mmf", "--version").strip() == f"mmf-zoo {VERSION}"
    assert "textvqa" in _run(python, "mmf", "zoo", "list")  # the manifests shipped inside the install
    where = _run(python, "python", "-c", WHERE)
    assert Path(where.split()[0]).name == "mmfzoo_configs" and where.split()[1] == "None"
    # MMF's spelling of shipped paths (env.dataset_zoo: configs/zoo/datasets.yaml) resolves inside the install
    code = ("from mmfdata.configs import run_config; from mmftrain.config import find_config_file as f; "
            "c = run_config('textvqa'); print(f(c['env']['dataset_zoo']), f('configs/defaults.yaml'))")
    for path in _run(python, "python", "-c", code).split():
        assert Path(path).is_file() and Path(path).is_relative_to(python.parent.parent), path


def _check_mmf(python: Path, files: set[Path]) -> None:
    """MMF's own CLI needs torch, omegaconf and more to run; what an uninstall could break is its files."""
    missing = sorted(str(p) for p in files if not p.exists())
    assert not missing, f"MMF files gone: {missing[:5]}"
    for script in ("mmf_run", "mmf_predict", "mmf_convert_hm"):
        assert "mmf_cli" in (python.parent / script).read_text()
    # `import mmf` pulls in torch, omegaconf, ...: check that the import system finds MMF's modules in this venv
    code = "import mmf_cli, importlib.util as u; assert u.find_spec('mmf_cli.run').origin.startswith(sys.prefix)"
    subprocess.run([str(python), "-c", "import sys; " + code], check=True, capture_output=True, cwd="/", timeout=60)


@pytest.mark.parametrize("first", ["mmf-zoo", "mmf"])
def test_installed_beside_mmf(first, our_wheel, mmf_wheel, deps_dir, tmp_path):
    python = _venv(tmp_path / "venv", deps_dir)
    wheels = {"mmf-zoo": our_wheel, "mmf": mmf_wheel}
    second = "mmf" if first == "mmf-zoo" else "mmf-zoo"
    for dist in (first, second):
        _pip(python, "install", "--no-deps", "--no-index", str(wheels[dist]))
    ours, theirs = _installed_files(python, "mmf-zoo"), _installed_files(python, "mmf")
    assert ours and theirs
    shared = ours & theirs
    assert not shared, f"files both install: {sorted(map(str, shared))[:5]}"
    site = Path(sysconfig.get_paths(vars={"base": str(python.parent.parent)})["purelib"])
    assert not (site / "configs").exists()
    _check_ours(python, ours)
    _check_mmf(python, theirs)

    _pip(python, "uninstall", "-y", "mmf-zoo")
    assert not (python.parent / "mmf").exists() and not (site / "zoo").exists()
    _check_mmf(python, theirs)

    _pip(python, "install", "--no-deps", "--no-index", str(our_wheel))
    _pip(python, "uninstall", "-y", "mmf")
    assert not (python.parent / "mmf_run").exists() and not (site / "mmf_cli").exists()
    _check_ours(python, ours)


def test_editable_install_reads_the_checkout(source_copy, deps_dir, tmp_path):
    """`pip install -e`: the configs are the checkout's own (edits apply at once), the version is pyproject's."""
    python = _venv(tmp_path / "venv", deps_dir)
    _pip(python, "install", "--no-deps", "--no-index", "--no-build-isolation", "-e", str(source_copy))
    assert _run(python, "mmf", "--version").strip() == f"mmf-zoo {VERSION}"
    where = _run(python, "python", "-c", WHERE)
    assert where.split() == [str(source_copy / "configs"), str(source_copy)]
    assert "textvqa" in _run(python, "mmf", "zoo", "list")
