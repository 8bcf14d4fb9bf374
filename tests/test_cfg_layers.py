"""The packages' layering: config resolution (`mmfconfig`) sits below both `mmfdata` and `mmftrain`, and no import
runs back up (mmfdata never imports mmftrain; mmfconfig imports neither). Checked on the source (AST), so an import
inside a function counts too."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_packages(package: str) -> dict[str, set[str]]:
    """{module file: top-level packages it imports}, every import statement of `package`'s modules."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("package,forbidden", [("mmfdata", {"mmftrain", "mmfzoo_cli"}),
                                               ("mmfconfig", {"mmfdata", "mmftrain", "mmfzoo_cli", "torch"}),
                                               ("zoo", {"mmfconfig", "mmfdata", "mmftrain", "torch"})])
def test_no_import_runs_back_up(package, forbidden):
    offending = {f: sorted(names & forbidden) for f, names in imported_packages(package).items() if names & forbidden}
    assert offending == {}


def test_the_check_sees_imports_inside_functions():
    # mmfdata.configs imports the resolver inside a function: the walk must see it (or the test above proves nothing)
    assert "mmfconfig" in imported_packages("mmfdata")["mmfdata/configs.py"]
