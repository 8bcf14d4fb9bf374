"""Build small zoos for tests: real tar.gz/zip archives, an MMF-schema manifest, a mirror tree, and a CLI runner."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import xxhash
import yaml

ROOT = Path(__file__).resolve().parent.parent


def tar_gz(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def chunk_hashes(path: Path, chunk: int) -> list[str]:
    data = Path(path).read_bytes()
    return [xxhash.xxh3_128_hexdigest(data[i:i + chunk]) for i in range(0, len(data), chunk)]


@dataclass
class ToyZoo:
    manifest: Path
    mirror: Path  # a mirror root: datasets/<key>/<variation>/...
    archives: dict[str, Path] = field(default_factory=dict)  # file rel path under mirror -> archive
    trees: dict[str, dict[str, bytes]] = field(default_factory=dict)  # expected files under data_dir


def make_zoo(root: Path, *, key: str = "toyset", feature_bytes: int = 3 << 20, seed: int = 0,
             chunk_hash_size: int | None = None, with_size: bool = True, version: str = "1.0_2026_11_26") -> ToyZoo:
    """A dataset entry with features / annotations / extras archives, laid out like MMF's origin."""
    rng = __import__("random").Random(seed)
    feats = {"open_images/detectron.lmdb/data.mdb": rng.randbytes(feature_bytes),
             "open_images/detectron.lmdb/lock.mdb": rng.randbytes(8192)}
    ann = {"imdb_train.npy": rng.randbytes(50_000), "imdb_val.npy": rng.randbytes(20_000)}
    extras = {"extras/vocabs/fixed_answer_vocab.txt": b"<pad>\n<s>\n</s>\n<unk>\nyes\nno\n"}
    mirror = root / "mirror"
    base = f"datasets/{key}/defaults"
    res = {}
    zoo = ToyZoo(root / "datasets.yaml", mirror)
    for cat, rel, members in (("features", f"{base}/features/features.tar.gz", feats),
                              ("annotations", f"{base}/annotations/annotations.tar.gz", ann),
                              ("extras", f"{base}/extras.tar.gz", extras)):
        path = tar_gz(mirror / rel, members)
        zoo.archives[rel] = path
        item = {"url": f"mmf://{rel}", "file_name": path.name, "hashcode": sha256(path)}
        if with_size:
            item["size"] = path.stat().st_size
        if chunk_hash_size:
            item["chunk_hashes"] = {"chunk_size": chunk_hash_size, "xxh3_128": chunk_hashes(path, chunk_hash_size)}
        res[cat] = [item]
        folder = f"datasets/{key}/defaults" + ("" if cat == "extras" else f"/{cat}")
        zoo.trees[cat] = {f"{folder}/{name}": data for name, data in members.items()}
    zoo.manifest.write_text(yaml.safe_dump({key: {"defaults": {"version": version, "resources": res}}}))
    return zoo


def run_mmf(*args: str, env: dict | None = None, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "mmfzoo_cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=kw.pop("cwd", ROOT), **kw)


def assert_tree(data_dir: Path, zoo: ToyZoo, cats=("features", "annotations", "extras")) -> None:
    for cat in cats:
        for rel, data in zoo.trees[cat].items():
            p = data_dir / rel
            assert p.is_file(), f"missing {p}"
            assert p.read_bytes() == data, f"content differs: {p}"


def custom_install(tmp_path, key: str = "toyset"):
    """A lab's setup: a built-in zoo (MMF_DATASET_ZOO) and a custom.yaml redefining `key` (another version and
    data), installed from the custom one. Returns (builtin, custom, custom.yaml, data dir, env)."""
    builtin = make_zoo(tmp_path / "builtin", feature_bytes=60_000, seed=0)
    custom = make_zoo(tmp_path / "custom", feature_bytes=50_000, seed=7, version="2.0_lab")
    manifest = tmp_path / "custom.yaml"
    manifest.write_text(custom.manifest.read_text())
    env = {"MMF_DATASET_ZOO": str(builtin.manifest), "MMF_ZOO_TRUST_DIR": str(tmp_path / "trust")}
    data = tmp_path / "data"
    r = run_mmf("zoo", "fetch", key, "--zoo", str(manifest), "--mirror", str(custom.mirror), "--data-dir", str(data),
                "-q", env=env)
    assert r.returncode == 0, r.stderr
    return builtin, custom, manifest, data, env
