"""Regenerates the table of model variants in docs/models.md from `vit_jax.summary`, so its figures stay true.

    python scripts/update_docs.py           # rewrite the table
    python scripts/update_docs.py --check   # exit 1 if the table is stale (the tests run this)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from vit_jax.models import create_model
from vit_jax.summary import markdown_table, summarize

PAGE = Path(__file__).resolve().parent.parent / "docs" / "models.md"
VARIANTS = ("Ti/16", "S/16", "B/16", "B/32", "L/16", "H/14", "S/8x16")
TABLE = re.compile(r"(<!-- variants:start[^\n]*-->\n)(.*?)(<!-- variants:end -->)", re.S)


def variants_table() -> str:
    summaries = [summarize(create_model(v, num_classes=1000), (224, 224, 3), name=f"ViT-{v}") for v in VARIANTS]
    return markdown_table(summaries)


def with_table(page: str, table: str) -> str:
    if not TABLE.search(page):
        raise ValueError(f"{PAGE} has no '<!-- variants:start ... -->' ... '<!-- variants:end -->' block")
    return TABLE.sub(lambda m: m.group(1) + table + "\n" + m.group(3), page)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if the table is stale")
    args = parser.parse_args(argv)
    current = PAGE.read_text()
    updated = with_table(current, variants_table())
    if args.check:
        if updated != current:
            print(f"{PAGE.name}: the variants table is stale; run python scripts/update_docs.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
