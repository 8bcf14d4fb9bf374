"""The `mmf zoo` command lines other packages print (mmf train's offline refusal, pack's install hint): the zoo
owns its commands' syntax."""
from __future__ import annotations

import shlex


def pack_command(argv: list[str], out: str = "run.pack") -> str:
    """`mmf zoo pack --for <the run's options> -o OUT` (what env.offline=true asks for on a connected machine)."""
    return f"mmf zoo pack --for {shlex.join(_run_options(argv))} -o {shlex.quote(str(out))}"


def install_command(pack: str, data_dir: str | None = None, manifests=()) -> str:
    """`mmf zoo fetch --from PACK` into `data_dir`, with the run's extra manifests (env.dataset_zoo/model_zoo) so the
    pack's entries are judged against the manifests the run reads."""
    words = ["mmf", "zoo", "fetch", "--from", str(pack)]
    words += ["--data-dir", str(data_dir)] if data_dir else []
    for item in manifests:  # (kind, path) pairs as mmfconfig.paths.zoo_manifests gives them, or --zoo paths
        words += ["--zoo", str(item[1] if isinstance(item, tuple) else item)]
    return shlex.join(words)


def _run_options(argv: list[str]) -> list[str]:
    """`argv` without --local_rank (torch.distributed.launch's, one per process: not the run's)."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == "--local_rank":
            skip = True
        elif not word.startswith("--local_rank="):
            out.append(word)
    return out
