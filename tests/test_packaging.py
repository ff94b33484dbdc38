"""The installed (non-editable) package holds every subpackage: pyproject lists its packages by hand."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "reprscope").rglob("__init__.py")}
    assert found - listed == set(), f"subpackages missing from pyproject.toml [tool.setuptools] packages: {sorted(found - listed)}"
    assert conf["package-dir"]["reprscope_cli"] == "cli" and "reprscope_cli" in listed
