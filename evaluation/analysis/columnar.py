"""Column builders for the frames: each repeated string stored once, ordered-categorical
values held as their codes, so a 1,000-session study's frames are built without a Python object
per row and column (see :mod:`therasim.evaluation.analysis.frames` for the budget)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, TypeVar, cast

import numpy as np
import pandas as pd

from therasim.evaluation.analysis.columns import ORDERED

T = TypeVar("T")

__all__ = ["Codes", "Columns", "Dictionary"]


class Codes:
    """Codes of the ordered-categorical values (``ORDERED``), shared by a store's frames: the
    vocabulary's order first, a value outside it the next code."""

    def __init__(self) -> None:
        self.categories = {column: list(order) for column, order in ORDERED.items()}
        self._index = {c: {v: i for i, v in enumerate(o)} for c, o in self.categories.items()}

    def code(self, column: str, value: str) -> int:
        """The code of ``value`` in ``column``, a new value taking the next one."""
        index = self._index[column]
        found = index.get(value)
        if found is None:
            found = index[value] = len(self.categories[column])
            self.categories[column].append(value)
        return found

    def dtype(self, column: str) -> pd.CategoricalDtype:
        """The ordered dtype of ``column``: its vocabulary, then the values seen outside it."""
        return pd.CategoricalDtype(self.categories[column], ordered=True)


class Columns:
    """Rows collected as tuples and turned into columns once; equal hashable values (ids, names,
    code tuples) stored once, ordered-categorical columns (given ``codes``) as their codes."""

    def __init__(
        self,
        columns: Sequence[str],
        numeric: Mapping[str, str] | None = None,
        codes: Codes | None = None,
    ) -> None:
        self.columns = list(columns)
        self.codes = codes
        self.typecodes = dict(numeric or {})
        if codes is not None:
            self.typecodes.update({c: "h" for c in self.columns if c in codes.categories})
        self._rows: list[tuple[Any, ...]] = []
        self._seen: dict[Hashable, Any] = {}

    @property
    def rows(self) -> int:
        """Rows added since the last ``frame``."""
        return len(self._rows)

    def share(self, value: T) -> T:
        """The one stored copy of ``value`` (a str or tuple repeated across rows)."""
        return cast(T, self._seen.setdefault(value, value))

    def add(self, *values: Any) -> None:
        """One row, a value per column (a tuple appended: no work per column until ``frame``)."""
        self._rows.append(values)

    def frame(self) -> pd.DataFrame:
        """The frame (every column ``object`` when there are no rows, as ``pd.DataFrame([],
        columns=...)`` gives); the builder is emptied."""
        rows, self._rows, self._seen = self._rows, [], {}
        if not rows:
            return pd.DataFrame(columns=self.columns)
        # Text stays ``object``: a pointer per cell to the one shared string, where pandas' default
        # string dtype (Arrow-backed when pyarrow is installed) would copy every row's bytes and
        # make each later Python-level pass over the column convert it back.
        data = list(zip(*rows, strict=True))
        del rows
        columns: dict[str, Any] = {}
        for i, name in enumerate(self.columns):
            values, data[i] = data[i], ()  # each column dropped once converted
            typecode = self.typecodes.get(name)
            if typecode == "h" and self.codes is not None:
                codes = np.array(values, dtype=np.int16)
                columns[name] = pd.Categorical.from_codes(codes, dtype=self.codes.dtype(name))
            elif typecode is not None:
                columns[name] = pd.Series(np.array(values, dtype=np.dtype(typecode)))
            elif isinstance(values[0], str):
                columns[name] = pd.Series(list(values), dtype=object)
            else:
                columns[name] = pd.Series(list(values))
            del values
        return pd.DataFrame(columns, columns=self.columns, copy=False)


class Dictionary(dict[str, int]):
    """Value -> code, a new value taking the next code: ``codes(values)`` codes a column at C
    speed (a dict lookup per value)."""

    def __missing__(self, key: str) -> int:
        code = self[key] = len(self)
        return code

    def codes(self, values: Sequence[str]) -> np.ndarray:
        """Each value's code, new values taking the next codes."""
        return np.fromiter(map(self.__getitem__, values), dtype=np.int32, count=len(values))

    def categorical(self, codes: np.ndarray) -> pd.Categorical:
        """``codes`` as a Categorical whose categories are this dictionary's values, sorted (so
        grouping and sorting by the column give the order its strings would), unused ones left
        out."""
        values = list(self)
        used = np.zeros(len(values), dtype=bool)
        used[codes] = True
        order = sorted((i for i in range(len(values)) if used[i]), key=values.__getitem__)
        recode = np.full(len(values), -1, dtype=np.int32)
        recode[order] = np.arange(len(order), dtype=np.int32)
        return pd.Categorical.from_codes(
            recode[codes], dtype=pd.CategoricalDtype([values[i] for i in order])
        )
