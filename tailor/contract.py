"""The published datasets' column contract, read from where it is written down: docs/outputs.md, one
`## <dataset>` section per dataset with a `| column | type | meaning |` table.

tests/tasks/test_publish.py holds the published files to that document (names and Arrow types), and the BI
tables' JSON schema and DDL (tasks/tables.py) take their descriptions from it, so the document, the files and
the tables describe one contract instead of three that can drift apart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

# The repository's (and an editable install's) copy; a wheel without docs/ gets no descriptions, never an error.
CONTRACT_DOC = Path(__file__).resolve().parents[1] / "docs" / "outputs.md"


@dataclass(frozen=True)
class DocumentedColumn:
    name: str
    arrow_type: str  # as Parquet readers report it, e.g. `string`, `date32[day]`, `list<element: string>`
    meaning: str


def parse_contract(text: str) -> dict[str, dict[str, DocumentedColumn]]:
    """dataset -> column -> its documented type and meaning, in the document's order."""
    datasets: dict[str, dict[str, DocumentedColumn]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            datasets[current] = {}
        elif current is not None and line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            name, arrow_type = cells[0].strip("`"), cells[1]
            # a meaning may itself hold a `|` (none does today): everything after the type is the meaning
            meaning = "|".join(cells[2:]).strip()
            datasets[current][name] = DocumentedColumn(name, arrow_type, meaning)
    return datasets


@lru_cache(maxsize=4)
def load_contract(path: Path = CONTRACT_DOC) -> dict[str, dict[str, DocumentedColumn]]:
    """The contract in docs/outputs.md, or an empty one (with a warning) where the document is not installed."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        log.warning("contract: %s not found; table schemas are published without column descriptions", path)
        return {}
    return parse_contract(text)
