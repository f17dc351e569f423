"""The classes in model order: output k of every model is the product type `codes[k]`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

TARGET = "prdtypecode"


@dataclass(frozen=True)
class LabelMap:
    """Product type codes in model order, and their (community-inferred) category names."""

    codes: tuple[int, ...]
    names: dict[int, str]

    def index(self, codes: pd.Series) -> pd.Series:
        lookup = {code: k for k, code in enumerate(self.codes)}
        return codes.map(lookup).astype("int64")

    def name(self, code: int) -> str:
        return self.names.get(code, str(code))

    def to_json(self) -> dict[str, Any]:
        return {"codes": list(self.codes), "names": {str(c): n for c, n in self.names.items()}}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> LabelMap:
        names = {int(code): name for code, name in payload.get("names", {}).items()}
        return cls(tuple(int(code) for code in payload["codes"]), names)


def category_names(path: Path) -> dict[int, str]:
    """Community-inferred category names (Rakuten never published official ones), if present."""
    if not Path(path).exists():
        return {}
    frame = pd.read_csv(path)
    return dict(zip(frame[TARGET].astype(int), frame["name"].astype(str), strict=True))
