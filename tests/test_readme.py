import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_exactly_the_readme_test_command():
    setup = readme_commands()[:2]
    assert setup[0] == "pip install -e . && python -m vit_jax.main --config=configs/digits.py --workdir=workdirs/digits"
    assert setup[1] == 'pip install -e ".[test]" && python -m pytest -n 2'
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == [setup[1]]


def test_the_readme_is_a_front_door_and_its_links_resolve():
    assert len((ROOT / "README.md").read_text().encode()) <= 12 * 1024
    for page in PAGES:
        for target in re.findall(r"\]\(([^)]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
    linked = set(re.findall(r"\]\(docs/([^)#]+)", (ROOT / "README.md").read_text()))
    assert {p.name for p in (ROOT / "docs").glob("*.md")} <= linked, "every docs page is linked from the README"


@pytest.mark.slow
def test_docs_variants_table_is_current(capsys):
    """scripts/update_docs.py --check, in this process (its imports are the tests' own)."""
    spec = importlib.util.spec_from_file_location("update_docs", ROOT / "scripts" / "update_docs.py")
    update_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(update_docs)
    assert update_docs.main(["--check"]) == 0, capsys.readouterr().err
