"""Calls and what they cost: the calls frame, the call totals, and the sessions' cost columns.

The calls frame (every stored call, the judges' under role ``judge:<name>``) is as long as the
verdicts when judging goes item by item, so it is built from column batches
(``Store.call_batches``) with its text kept as ``object`` pointers to one copy of each string; the
reports read only the totals, summed per session, role and model in SQL (``Store.call_totals``).
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np
import pandas as pd

from therasim.evaluation.analysis.columnar import Dictionary
from therasim.evaluation.analysis.columns import (
    CALL_COLUMNS,
    CALL_TOTAL_COLUMNS,
    SESSION_COST_COLUMNS,
)
from therasim.simulations.records import JUDGE_ROLE_PREFIX
from therasim.simulations.store import Store

__all__ = ["add_session_costs", "calls_frame", "stored_call_totals", "sum_calls"]


#: The calls frame's machine-typed columns (``array`` typecodes); the rest are text.
_CALL_NUMERIC = {
    "idx": "q",
    "cached": "b",
    "latency_s": "d",
    "input_tokens": "q",
    "cached_input_tokens": "q",
    "output_tokens": "q",
    "cost_usd": "d",
    "attempts": "q",
}


def calls_frame(store: Store) -> pd.DataFrame:
    """Every stored call, streamed a batch of columns at a time (an empty frame when the store
    holds none). As for the verdicts, each batch becomes machine values at once (text as codes
    into one copy of each string), so no Python object per row and column is held: a study
    judged item by item stores about as many calls as verdicts. The frame is value for value
    the one a row-by-row build gives: text as ``object``, ``cost_usd`` float with NaN for an
    unknown price, or ``object`` ``None`` throughout when no call has a price."""
    text = {c: Dictionary() for c in CALL_COLUMNS if c not in _CALL_NUMERIC}
    data: dict[str, array[Any]] = {c: array("i") for c in text}
    data |= {c: array(t) for c, t in _CALL_NUMERIC.items()}
    dtypes = {c: np.dtype(a.typecode) for c, a in data.items()}
    dtypes["cached"] = np.dtype(bool)
    priced = False
    for batch in store.call_batches():
        for column, dictionary in text.items():
            data[column].frombytes(dictionary.codes(getattr(batch, column)).tobytes())
        costs = batch.cost_usd
        priced = priced or any(c is not None for c in costs)
        for column in _CALL_NUMERIC:
            values = costs if column == "cost_usd" else getattr(batch, column)
            dtype = np.float64 if column == "cost_usd" else dtypes[column]
            data[column].frombytes(np.asarray(values, dtype=dtype).tobytes())  # None -> NaN
    if not data["idx"]:
        return pd.DataFrame()
    out: dict[str, Any] = {}
    for name in CALL_COLUMNS:  # each buffer is dropped once converted: one column at a time
        values = np.frombuffer(data.pop(name), dtype=dtypes[name])
        if name in text:
            strings = np.array(list(text[name]), dtype=object)
            out[name] = pd.Series(strings[values], dtype=object)
        elif name == "cost_usd" and not priced:
            out[name] = pd.Series(np.full(len(values), None, dtype=object))
        else:
            out[name] = values
        del values
    return pd.DataFrame(out, columns=list(CALL_COLUMNS), copy=False)


def stored_call_totals(store: Store) -> pd.DataFrame:
    """The store's call totals (``CALL_TOTAL_COLUMNS``), summed in SQL."""
    rows = [row.__dict__ for row in store.call_totals()]
    return pd.DataFrame(rows, columns=list(CALL_TOTAL_COLUMNS))


def sum_calls(calls: pd.DataFrame) -> pd.DataFrame:
    """``CALL_TOTAL_COLUMNS`` from a calls frame, summed per session, role and model (a frame
    built by hand may lack the optional columns)."""

    def column(name: str, default: object) -> pd.Series:
        return calls[name] if name in calls.columns else pd.Series(default, index=calls.index)

    cost = pd.to_numeric(column("cost_usd", 0.0), errors="coerce")
    parts = pd.DataFrame(
        {
            "session_id": calls["session_id"].astype(str),
            "role": calls["role"].astype(str),
            "model": column("model", "").astype(str),
            "calls": 1,
            "cache_hits": column("cached", False).astype(bool).astype(int),
            **{c: column(c, 0) for c in ("input_tokens", "cached_input_tokens", "output_tokens")},
            "cost_usd": cost.fillna(0.0),
            "unpriced": cost.isna().astype(int),
        }
    )
    keys = ["session_id", "role", "model"]
    return parts.groupby(keys, sort=True)[list(CALL_TOTAL_COLUMNS[3:])].sum().reset_index()


def add_session_costs(sessions: pd.DataFrame, totals: pd.DataFrame) -> None:
    """Add ``SESSION_COST_COLUMNS`` to ``sessions``, in place, from the call totals: the
    session's own cached-prompt tokens, its judges' calls, tokens and cost, and the totals over
    both."""
    ids = sessions["session_id"]
    sums = ["calls", "input_tokens", "cached_input_tokens", "output_tokens", "cost", "unpriced"]
    own = judged = pd.DataFrame(0, index=pd.Index(ids), columns=sums)
    if not totals.empty:
        parts = totals.assign(
            judge=totals["role"].astype(str).str.startswith(JUDGE_ROLE_PREFIX),
            cost=totals["cost_usd"].astype(float),
        )
        grouped = parts.groupby(["judge", "session_id"])[sums].sum()
        own, judged = (
            grouped.xs(flag, level="judge").reindex(ids, fill_value=0)
            if flag in grouped.index.get_level_values("judge")
            else pd.DataFrame(0, index=pd.Index(ids), columns=sums)
            for flag in (False, True)
        )
    judge_cost = judged["cost"].astype(float).where(judged["unpriced"] == 0)
    own_cost = pd.to_numeric(sessions["cost_usd"], errors="coerce").to_numpy()
    values = {
        "cached_input_tokens": own["cached_input_tokens"],
        "judge_calls": judged["calls"],
        "judge_input_tokens": judged["input_tokens"],
        "judge_cached_input_tokens": judged["cached_input_tokens"],
        "judge_output_tokens": judged["output_tokens"],
        "judge_cost_usd": judge_cost,
        "total_tokens": sessions["input_tokens"].to_numpy()
        + sessions["output_tokens"].to_numpy()
        + judged["input_tokens"].to_numpy()
        + judged["output_tokens"].to_numpy(),
        "total_cost_usd": own_cost + judge_cost.to_numpy(),
    }
    for column in SESSION_COST_COLUMNS:
        value = values[column]
        sessions[column] = value.to_numpy() if isinstance(value, pd.Series) else value
