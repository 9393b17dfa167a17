import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_exactly_the_readme_test_command():
    setup = readme_commands()[:2]
    assert setup[0] == "pip install -e . && python -m vit_jax.main --config=configs/digits.py --workdir=workdirs/digits"
    assert setup[1] == 'pip install -e ".[test]" && python -m pytest -n 2'
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == [setup[1]]


@pytest.mark.slow
def test_readme_variants_table_is_current():
    result = subprocess.run([sys.executable, str(ROOT / "scripts/update_readme.py"), "--check"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
