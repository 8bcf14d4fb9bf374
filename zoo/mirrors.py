"""Where a resource can be fetched from: `mmf://` expansion against ordered mirror roots (URL-root policy; the
health of a mirror during a transfer is zoo/transfer/mirror.py).

Order of roots: `--mirror NAME|URL` (first, in the order given), `MMF_ZOO_MIRRORS`, the `default: true` roots of
configs/zoo/mirrors.yaml (the origin among them). With `mirror_only` (or MMF_ZOO_MIRROR_ONLY=1) only the roots
given on the command line and in MMF_ZOO_MIRRORS are used: nothing reaches the origin. A resource's own `mirrors:`
list is appended. Local folders and file:// roots are mirrors too. A manifest URL that points into a known root
(MMF's manifests carry the origin's full https URL) is re-rooted onto the mirrors like an `mmf://` one.

The transfer contacts a default root (the origin) only when the mirrors listed before it cannot serve the file
(`fallback_urls`), so a machine that reaches only its --mirror sees no retries against the origin.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from zoo import safeyaml
from zoo.errors import ManifestError
from zoo.manifest import CONFIG_DIR, Resource

ORIGIN = "https://dl.fbaipublicfiles.com/mmf/data/"
MMF_PREFIX = "mmf://"


def load_named_mirrors(path: Path | None = None) -> dict[str, dict]:
    path = Path(path or CONFIG_DIR / "mirrors.yaml")
    if not path.exists():
        return {"origin": {"url": ORIGIN, "default": True}}
    try:
        data = safeyaml.load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"mirror list {path} cannot be read ({exc}); check the file") from None
    except safeyaml.YamlError as exc:
        raise ManifestError(f"mirror list {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"mirror list {path} must map names to URLs, not hold a {type(data).__name__}")
    out = {}
    for name, spec in data.items():
        if isinstance(spec, str):
            spec = {"url": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("url"), str):
            raise ManifestError(f"mirror list {path}: '{name}' needs a url")
        if not isinstance(spec.get("default", False), bool):
            raise ManifestError(f"mirror list {path}: '{name}.default' must be true or false")
        out[str(name)] = {"url": spec["url"], "default": spec.get("default", False)}
    return out


def normalize_root(root: str) -> str:
    """A root as a URL ending in '/': local folders become file:// URLs."""
    root = root.strip()
    if "://" not in root:
        path = Path(root).expanduser().resolve()
        root = "file://" + quote(str(path))
    return root if root.endswith("/") else root + "/"


def mirror_roots(cli: list[str] | None = None, *, mirror_only: bool | None = None,
                 named: dict[str, dict] | None = None, env: dict | None = None) -> list[str]:
    """The ordered, de-duplicated mirror roots for `mmf://` URLs."""
    env = os.environ if env is None else env
    named = load_named_mirrors() if named is None else named
    if mirror_only is None:
        mirror_only = env.get("MMF_ZOO_MIRROR_ONLY", "") not in ("", "0", "false", "no")

    def expand(item: str) -> str:
        item = item.strip()
        if item in named:
            return normalize_root(named[item]["url"])
        if "://" in item or item.startswith(("/", ".", "~")) or Path(item).exists():
            return normalize_root(item)
        raise ManifestError(f"unknown mirror '{item}': not a name in configs/zoo/mirrors.yaml "
                            f"({', '.join(sorted(named))}), nor a URL or an existing folder")

    roots = [expand(m) for m in cli or []]
    roots += [expand(m) for m in env.get("MMF_ZOO_MIRRORS", "").split(",") if m.strip()]
    if not mirror_only:
        roots += _default_roots(named)
    return list(dict.fromkeys(roots))


def _default_roots(named: dict[str, dict] | None = None) -> list[str]:
    named = load_named_mirrors() if named is None else named
    return [normalize_root(spec["url"]) for spec in named.values() if spec.get("default")]


@dataclass(frozen=True)
class Source:
    """A full URL of a resource and whether it lies under a default root (the origin): the transfer contacts such
    a URL only when the others cannot serve (see `fallback_urls`), without reading mirrors.yaml again."""

    url: str
    origin: bool = False


def resource_sources(res: Resource, roots: list[str], named: dict[str, dict] | None = None) -> list[Source]:
    """Every full URL of a resource, in preference order, each with its origin flag."""
    named = load_named_mirrors() if named is None else named
    urls = resource_urls(res, roots, named)
    fallback = fallback_urls(urls, named)
    return [Source(u, u in fallback) for u in urls]


def resource_urls(res: Resource, roots: list[str], named: dict[str, dict] | None = None) -> list[str]:
    """Every full URL of a resource, in preference order."""
    rel = None
    if res.url.startswith(MMF_PREFIX):
        rel = res.url[len(MMF_PREFIX):].lstrip("/")
    else:
        rel = next((res.url[len(r):] for r in _default_roots(named) if res.url.startswith(r)), None)
    urls = [root + rel for root in roots] if rel is not None else []
    if not urls and not res.url.startswith(MMF_PREFIX):
        urls = [res.url]  # an absolute URL outside every root, or no roots at all: as the manifest says
    return list(dict.fromkeys(urls + list(res.mirrors)))


def fallback_urls(urls: list[str], named: dict[str, dict] | None = None) -> set[str]:
    """The URLs under a default root (the origin) when other URLs exist: contacted only if those fail."""
    roots = _default_roots(named)
    fallback = {u for u in urls if any(u.startswith(r) for r in roots)}
    return fallback if len(fallback) < len(urls) else set()


def is_local(url: str) -> bool:
    return url.startswith("file://")


def local_path(url: str) -> Path:
    return Path(unquote(urlparse(url).path))


def local_slice(url: str) -> tuple[Path, int, int | None]:
    """file:///bundle.tar#bytes=START-END addresses one member inside a pack; plain file:// the whole file."""
    parsed = urlparse(url)
    frag = parsed.fragment
    if frag.startswith("bytes="):
        a, b = frag[len("bytes="):].split("-")
        return Path(unquote(parsed.path)), int(a), int(b) - int(a) + 1
    return Path(unquote(parsed.path)), 0, None
