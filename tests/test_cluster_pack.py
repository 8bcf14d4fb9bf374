"""Everything a run reads in one pack, and no network on the offline node.

"The connected machine": a loopback mirror serves a synthetic TextVQA whose BERT vocab and fastText vectors are
not in the dataset's own archives but separate zoo keys (bert-base-uncased, fasttext.wiki_en, as for the real
data), from the run's env.dataset_zoo / env.model_zoo manifests. `mmf zoo pack --for <mmf train options>` lists and
packs them. "The offline node": a new empty data dir, `mmf zoo fetch --from PACK` (the mirror stopped), then
`mmf train`; both run in a network namespace without a network (`unshare -n`, where this user may) and with a
`sitecustomize` audit hook that records every INET socket, connect and name lookup of the process: the record stays
empty from the pack's install to the final predictions.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.zoo_helpers import ROOT, sha256
from zoo.testing.faultserver import FaultServer

TINY = "projects/m4c/configs/textvqa/tiny.yaml"
MICRO = ["model_config.m4c.mmt.num_hidden_layers=1", "training.batch_size=8", "training.max_updates=3",
         "training.evaluation_interval=1000", "training.log_interval=1", "training.warmup_iterations=1",
         "training.lr_steps=[]", "training.num_workers=0"]
AUDIT = '''
import os, socket, sys
_LOG = os.environ.get("NET_AUDIT_LOG")
_INET = (socket.AF_INET, socket.AF_INET6)

def _record(line):
    with open(_LOG, "a") as f:
        f.write(line + "\\n")

def _hook(event, args):
    if event == "socket.__new__" and args[1] in _INET:
        _record(f"{event} family={args[1]}")
    elif event in ("socket.connect", "socket.sendto", "socket.sendmsg") and isinstance(args[1], tuple):
        _record(f"{event} {args[1]!r}")
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"):
        _record(f"{event} {args[0]!r}")

if _LOG:
    sys.addaudithook(_hook)
'''


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


UNSHARE = ["unshare", "-n"] if _can_unshare() else []


def _env(base: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MMF_ZOO_MIRRORS", "MMF_ZOO_OFFLINE", "MMF_DATASET_ZOO", "MMF_MODEL_ZOO")}
    env.update({"MMF_ZOO_MIRROR_ONLY": "1", "MMF_CACHE_DIR": str(base / "cache"), "OMP_NUM_THREADS": "1",
                "MMF_DATA_DIR": str(base / "no-default-data-dir"), "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


def _mmf(args: list[str], env: dict, *, offline_audit: Path | None = None, module: str = "mmfzoo_cli"):
    """`mmf ARGS` in a child; with `offline_audit`, in a namespace without a network (where this user may make one)
    and with every INET socket, connect and name lookup recorded into that file."""
    env = dict(env)
    prefix: list[str] = []
    if offline_audit is not None:
        hook = offline_audit.parent / "audit-site"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(AUDIT)
        env.update({"NET_AUDIT_LOG": str(offline_audit), "PYTHONPATH": f"{hook}{os.pathsep}{env['PYTHONPATH']}"})
        prefix = UNSHARE
    return subprocess.run([*prefix, sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _resource(root: Path, rel: str, data: bytes, compressed: bool = True, size: bool = True) -> dict:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    item = {"url": f"mmf://{rel}", "file_name": path.name, "hashcode": sha256(path), "compressed": compressed}
    return {**item, "size": len(data)} if size else item


def _split_text_files(synth: dict) -> tuple[Path, Path, Path]:
    """The synthetic TextVQA with its BERT vocab and fastText vectors moved out of the dataset's extras into the
    model zoo's bert-base-uncased and fasttext.wiki_en (where the real ones are): (datasets.yaml, models.yaml,
    mirror root). Plus lab.tiny (a zoo model requiring lab.fc7) for checkpoint.resume_zoo's listing."""
    root = Path(synth["archive_root"])
    extras_rel = "datasets/textvqa/defaults/extras.tar.gz"
    with tarfile.open(root / extras_rel) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}
    bert = members.pop("extras/vocabs/bert-base-uncased-vocab.txt")
    vectors = {name.split("/")[-1]: members.pop(name) for name in list(members) if name.startswith("extras/fasttext/")}
    assert set(vectors) == {"wiki.en.npy", "wiki.en.vocab.txt"}, vectors
    datasets = yaml.safe_load(Path(synth["manifest"]).read_text())
    datasets["textvqa"]["defaults"]["resources"]["extras"] = [_resource(root, extras_rel, _tar_gz(members))]
    (root.parent / "datasets.yaml").write_text(yaml.safe_dump(datasets))
    models = {
        "bert-base-uncased": {"version": "synthetic", "resources": [
            _resource(root, "models/bert-base-uncased/vocab.txt", bert, compressed=False)]},
        "fasttext": {"wiki_en": {"version": "synthetic", "resources": [
            _resource(root, "models/fasttext/wiki_en.tar.gz", _tar_gz(vectors))]}, "defaults": "${fasttext.wiki_en}"},
        "lab": {"fc7": {"version": "1", "resources": [_resource(root, "models/lab/fc7.tar.gz", b"fc7", size=False)]},
                "tiny": {"version": "1", "zoo_requirements": "lab.fc7",
                         "resources": [_resource(root, "models/lab/tiny.tar.gz", b"tiny" * 100)]}},
    }
    (root.parent / "models.yaml").write_text(yaml.safe_dump(models))
    return root.parent / "datasets.yaml", root.parent / "models.yaml", root


@pytest.fixture(scope="module")
def connected(tmp_path_factory):
    """The connected machine: the synthetic zoo on a mirror; `mmf zoo pack --for` refuses (nothing fetched yet)
    naming the one fetch command, that command runs, and the pack is written."""
    from mmfdata.synth import write_synthetic

    base = tmp_path_factory.mktemp("connected")
    synth = write_synthetic(str(base / "src"), questions=40, seed=1, archive=True, val_questions=16,
                            test_questions=12)
    datasets, models, mirror_root = _split_text_files(synth)
    data, pack = base / "data", base / "textvqa.pack"
    run = [f"config={TINY}", "datasets=textvqa", "model=m4c", f"env.dataset_zoo={datasets}",
           f"env.model_zoo={models}", *MICRO]
    env = _env(base)
    r = _mmf(["zoo", "pack", "--for", *run, f"env.data_dir={data}", "-o", str(pack)], env)
    assert r.returncode == 1 and not pack.exists(), r.stderr
    fetch = r.stderr.split("run `")[1].split("`")[0]  # the one command the refusal names
    assert fetch == "mmf zoo fetch textvqa.defaults textvqa.ocr_en bert-base-uncased fasttext.wiki_en", r.stderr
    with FaultServer(mirror_root) as srv:
        r = _mmf([*shlex.split(fetch)[1:], "--zoo", str(datasets), "--zoo", str(models), "--data-dir", str(data),
                  "--mirror", srv.url, "-q"], env)
    assert r.returncode == 0, r.stderr
    r = _mmf(["zoo", "pack", "--for", *run, f"env.data_dir={data}", "-o", str(pack)], env)
    assert r.returncode == 0 and pack.is_file(), r.stderr
    return {"base": base, "data": data, "pack": pack, "run": run, "datasets": datasets, "models": models,
            "mirror": mirror_root, "wrote": r.stdout}


def _audit_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_the_audit_records_a_network_attempt(tmp_path):
    """The hook the offline tests rely on sees an INET socket, its connect and a name lookup (else an empty
    record would prove nothing)."""
    log = tmp_path / "net.log"
    code = ("import socket\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.1', 9))\nexcept OSError:\n    pass\n"
            "try:\n    socket.getaddrinfo('example.invalid', 80)\nexcept OSError:\n    pass\n")
    env = _env(tmp_path)
    hook = tmp_path / "audit-site"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(AUDIT)
    env.update({"NET_AUDIT_LOG": str(log), "PYTHONPATH": f"{hook}{os.pathsep}{env['PYTHONPATH']}"})
    subprocess.run([*UNSHARE, sys.executable, "-c", code], env=env, check=True, timeout=60)
    lines = _audit_lines(log)
    assert any(line.startswith("socket.__new__") for line in lines), lines
    assert any(line.startswith("socket.connect ('127.0.0.1', 9)") for line in lines), lines
    assert any(line.startswith("socket.getaddrinfo 'example.invalid'") for line in lines), lines


def test_dry_run_lists_every_key_a_run_reads_with_sizes_and_writes_nothing(connected, tmp_path):
    run, data = connected["run"], connected["data"]
    extra = ["checkpoint.resume_zoo=lab.tiny", "model_config.m4c.fc7_weights_dir=models/lab.fc7"]
    r = _mmf(["zoo", "pack", "--dry-run", "--json", "--for", *run, *extra, f"env.data_dir={data}"], _env(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = {row["key"]: row for row in json.loads(r.stdout)["keys"]}
    assert list(rows) == ["textvqa.defaults", "textvqa.ocr_en", "bert-base-uncased", "fasttext.wiki_en", "lab.fc7",
                          "lab.tiny"]
    assert rows["bert-base-uncased"]["why"] == "textvqa: BERT vocab (text_processor)"
    assert rows["fasttext.wiki_en"]["why"] == "textvqa: fastText vectors (context_processor)"
    assert rows["lab.fc7"]["why"] == "m4c: model_config.m4c.fc7_weights_dir"  # its first reason; also lab.tiny's
    assert rows["lab.tiny"]["why"] == "checkpoint: resume_zoo"
    assert all(rows[k]["state"] == "ready" for k in list(rows)[:4]), rows
    assert rows["lab.tiny"]["state"].startswith("not installed") and rows["lab.tiny"]["size"] == 400
    assert rows["lab.fc7"]["size"] is None  # the manifest gives none: '?' in the table
    kept = sum(p.stat().st_size for k in ("textvqa/defaults", "textvqa/ocr_en") for p in
               (data / "datasets" / k).rglob("*.tar.gz"))
    assert rows["textvqa.defaults"]["size"] + rows["textvqa.ocr_en"]["size"] == kept
    r = _mmf(["zoo", "pack", "--dry-run", "--for", *run, *extra, "--data-dir", str(data)], _env(tmp_path))
    assert r.returncode == 0 and "lab.fc7" in r.stdout and "      ?  not installed" in r.stdout, r.stdout
    assert "dry run: 6 keys, ? in all" in r.stderr and not list(tmp_path.glob("*.pack")), r.stderr


def test_offline_node_installs_the_pack_and_trains_without_a_socket(connected, tmp_path):
    pack, run = connected["pack"], connected["run"]
    install = connected["wrote"].split("install with `")[1].split("`")[0]  # as `mmf zoo pack --for` printed it
    assert install == (f"mmf zoo fetch --from {pack} --zoo {connected['datasets']} --zoo {connected['models']}")
    data, save, audit = tmp_path / "offline-data", tmp_path / "save", tmp_path / "net.log"
    env = _env(tmp_path, MMF_ZOO_MIRRORS="http://127.0.0.1:9/")  # were anything asked of a mirror, it would be here
    r = _mmf([*shlex.split(install)[1:], "--data-dir", str(data)], env, offline_audit=audit)
    assert r.returncode == 0, r.stderr
    for rel in ("models/bert-base-uncased/vocab.txt", "models/fasttext.wiki_en/wiki.en.npy",
                "datasets/textvqa/ocr_en/features/.built.json"):
        assert (data / rel).is_file(), rel
    assert not (data / "datasets/textvqa/defaults/extras/vocabs/bert-base-uncased-vocab.txt").exists()
    r = _mmf([*run, "run_type=train_inference", f"env.data_dir={data}", f"env.save_dir={save}", "env.offline=true"],
             env, offline_audit=audit, module="mmftrain.cli")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _audit_lines(audit) == []
    assert list((save / "reports").glob("*.json")), list(save.rglob("*"))
    assert "fetching it" not in r.stdout + r.stderr


@pytest.mark.parametrize("offline", ["env.offline=true", "MMF_ZOO_OFFLINE=1"])
def test_offline_run_missing_a_key_stops_with_the_pack_command_and_fetches_nothing(connected, tmp_path, offline):
    data, audit = tmp_path / "offline-data", tmp_path / "net.log"
    r = _mmf(["zoo", "fetch", "textvqa.defaults", "bert-base-uncased", "fasttext.wiki_en", "--from",
              str(connected["pack"]), "--zoo", str(connected["datasets"]), "--zoo", str(connected["models"]),
              "--data-dir", str(data), "-q"], _env(tmp_path))
    assert r.returncode == 0, r.stderr
    run = [*connected["run"], "run_type=train_inference", f"env.data_dir={data}", f"env.save_dir={tmp_path / 's'}"]
    with FaultServer(connected["mirror"]) as srv:  # a live mirror the run is told about: it must not be asked
        extra = {"MMF_ZOO_MIRRORS": srv.url}
        if offline.startswith("MMF_ZOO_OFFLINE"):
            extra["MMF_ZOO_OFFLINE"] = "1"
        else:
            run.append(offline)
        r = _mmf(run, _env(tmp_path, **extra), offline_audit=audit, module="mmftrain.cli")
        assert sum(srv.stats.requests.values()) == 0
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert offline.split("=")[0] in lines[0] and "textvqa.ocr_en (textvqa: zoo_requirements)" in lines[0], lines[0]
    assert "bert-base-uncased" not in lines[0] and "nothing was fetched" in lines[0], lines[0]
    assert _audit_lines(audit) == [] and not (data / "datasets/textvqa/ocr_en").exists()
    pack = lines[0].split("run `")[1].split("`")[0]
    assert pack.startswith("mmf zoo pack --for config=") and pack.endswith(" -o textvqa-m4c.pack"), pack
    install = lines[0].split("run `")[2].split("`")[0]
    assert install == shlex.join(["mmf", "zoo", "fetch", "--from", "textvqa-m4c.pack", "--data-dir", str(data),
                                  "--zoo", str(connected["datasets"]), "--zoo", str(connected["models"])])
    # the printed pack command, run on the connected machine (its data dir), packs what this run lacks
    words = shlex.split(pack)[1:]
    r = _mmf([*words[:words.index("-o")], "--dry-run", "--json", "--data-dir", str(connected["data"])],
             _env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert [row["key"] for row in json.loads(r.stdout)["keys"]] == ["textvqa.defaults", "textvqa.ocr_en",
                                                                    "bert-base-uncased", "fasttext.wiki_en"]


def test_fetch_from_a_pack_without_keys_installs_what_it_was_packed_for_and_without_a_pack_is_a_usage_error(
        connected, tmp_path):
    data = tmp_path / "data"
    r = _mmf(["zoo", "fetch", "--from", str(connected["pack"]), "--zoo", str(connected["datasets"]), "--zoo",
              str(connected["models"]), "--data-dir", str(data), "--json"], _env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert {row["key"] for row in json.loads(r.stdout)} == {"textvqa.defaults", "textvqa.ocr_en", "bert-base-uncased",
                                                            "fasttext.wiki_en"}
    r = _mmf(["zoo", "fetch", "--from", str(tmp_path / "offline-data"), "--data-dir", str(data)], _env(tmp_path))
    assert r.returncode == 3 and "no such file" in r.stderr, r.stderr  # as with KEYS: zoo.sources says it
    r = _mmf(["zoo", "fetch", "--from", str(data), "--data-dir", str(data)], _env(tmp_path))
    assert r.returncode == 1 and "holds no pack written by `mmf zoo pack`: name the KEYS" in r.stderr, r.stderr
    r = _mmf(["zoo", "fetch", "--data-dir", str(data)], _env(tmp_path))
    assert r.returncode == 1 and "fetch needs KEYS" in r.stderr and "--help" in r.stderr, r.stderr


def test_offline_run_names_a_missing_resume_zoo_model_and_its_requirement(connected, tmp_path):
    data, audit = tmp_path / "offline-data", tmp_path / "net.log"
    r = _mmf(["zoo", "fetch", "--from", str(connected["pack"]), "--zoo", str(connected["datasets"]), "--zoo",
              str(connected["models"]), "--data-dir", str(data), "-q"], _env(tmp_path))
    assert r.returncode == 0, r.stderr
    run = [*connected["run"], "run_type=train_inference", f"env.data_dir={data}", f"env.save_dir={tmp_path / 's'}",
           "checkpoint.resume_zoo=lab.tiny", "env.offline=true"]
    r = _mmf(run, _env(tmp_path), offline_audit=audit, module="mmftrain.cli")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert ": lab.fc7 (lab.tiny: zoo_requirements), lab.tiny (checkpoint: resume_zoo); nothing was fetched" \
        in lines[0], lines[0]
    assert "checkpoint.resume_zoo=lab.tiny" in lines[0].split("run `")[1] and _audit_lines(audit) == []


def _keys(argv: list[str], monkeypatch, tmp_path) -> dict[str, str]:
    from mmfconfig.resolve import build_config
    from mmfdata.needs import run_needs

    monkeypatch.setenv("MMF_CACHE_DIR", str(tmp_path / "cache"))
    cfg = build_config(["datasets=textvqa", "model=m4c", f"env.data_dir={tmp_path / 'data'}", *argv], environ={})
    return {n.key: n.why for n in run_needs(cfg)}


def test_a_run_needs_the_text_files_only_where_no_local_file_stands_in(monkeypatch, tmp_path):
    """The processors' search decides (mmfdata.lookup): an explicit file option, a vector file in MMF's cache dir, a
    vocab shipped in the data's own tree need no zoo key; with nothing found, the zoo key the search would find."""
    from mmfdata.synth import write_synthetic

    assert list(_keys([f"config={TINY}"], monkeypatch, tmp_path)) == [
        "textvqa.defaults", "textvqa.ocr_en", "bert-base-uncased", "fasttext.wiki_en"]
    full = _keys(["config=projects/m4c/configs/textvqa/defaults.yaml"], monkeypatch, tmp_path)
    assert full["detectron.vmb_weights"] == "m4c: model_config.m4c.fc7_weights_dir", full
    own = _keys([f"config={TINY}", f"dataset_config.textvqa.processors.text_processor.params.vocab_file="
                 f"{tmp_path / 'mine.txt'}"], monkeypatch, tmp_path)
    assert "bert-base-uncased" not in own and "fasttext.wiki_en" in own
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "wiki.en.bin").write_bytes(b"x")
    assert "fasttext.wiki_en" not in _keys([f"config={TINY}"], monkeypatch, tmp_path)
    # data written in place (not by the zoo): its vocab and vectors are the user's own files, no key fetches them
    write_synthetic(str(tmp_path / "data"), questions=8, seed=0)
    assert list(_keys([f"config={TINY}"], monkeypatch, tmp_path)) == ["textvqa.defaults", "textvqa.ocr_en"]
