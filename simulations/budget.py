"""The study's budget, metered live across simulation and judging.

What counts is what the gateway actually sent: every call not served from the cache, in every
role (subject, patient, appraiser, questionnaires, judges), with its tokens and cost. Spending
of earlier runs on the same store counts too: the sessions' uncached calls are in the store,
and judging's spending is kept in the store's meta (``judging_spent``).

Judges' calls are stored as call rows too (role ``judge:<name>``), but the budget reads
judging's spending from the meta only, so it is counted once: the meta is a running total that
also keeps passes whose call rows a re-judging replaced or ``judge --replace`` dropped, and calls
the gateway made inside one structured call (output-mode fallbacks, repair rounds) that no row
shows. Right after a first judging pass the two agree: the meta equals the uncached judge call
rows. The meter is read at turn boundaries (an
in-flight session stops there, ``budget_exhausted``), before a session starts, and before a
session is judged, so a run overshoots by at most one turn or one session's judging per
session in flight; a session that had just started may add its pre-session questionnaires
(they run before its first turn boundary).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from therasim.agents.llm import Gateway
from therasim.agents.llm.usage import Totals
from therasim.errors import BudgetExhausted
from therasim.simulations.store import Store
from therasim.simulations.study import Budget

JUDGING_SPENT = "judging_spent"  # store meta: tokens and cost that judging has spent so far


def _judging_spent(store: Store) -> Totals:
    """What judging has spent on this store (a store from before the split counted only the
    total tokens: they are read as input tokens)."""
    doc: dict[str, Any] = store.get_meta(JUDGING_SPENT) or {}
    return Totals(
        int(doc.get("input_tokens", doc.get("tokens", 0))),
        int(doc.get("output_tokens", 0)),
        float(doc.get("cost_usd", 0)),
        cached_input_tokens=int(doc.get("cached_input_tokens", 0)),
    )


def spent_in_store(store: Store) -> Totals:
    """What earlier runs on this store spent: the sessions' uncached calls, the attempts a
    re-run replaced (their rows are gone), plus judging (from the meta; the judges' call rows
    are not added again)."""
    return store.uncached_totals() + store.replaced_spending() + _judging_spent(store)


def _sent(gateway: Gateway) -> Totals:
    return Totals.sum(gateway.accounting.roles.values())


def is_spent(budget: Budget, spent: Totals) -> bool:
    """Whether ``spent`` reaches the budget's token or cost limit."""
    return (budget.max_tokens is not None and spent.total_tokens >= budget.max_tokens) or (
        budget.max_cost_usd is not None and spent.cost_usd >= budget.max_cost_usd
    )


class SharedSpending:
    """What each worker process of one run has sent, in shared memory: their one budget.

    One slot (input tokens, output tokens, cost) per worker; a worker writes its own slot and
    reads them all, so a worker that finishes early leaves what it did not spend to the others
    (a budget divided among the workers stranded it). Made by the parent and inherited by the
    workers at their start (``multiprocessing`` shares it only that way)."""

    _FIELDS = 3

    def __init__(self, workers: int, context: Any) -> None:
        self._slots = context.RawArray("d", self._FIELDS * workers)

    def publish(self, worker: int, sent: Totals) -> None:
        """Record what worker ``worker`` has sent in all so far."""
        i = self._FIELDS * worker
        self._slots[i : i + self._FIELDS] = [sent.input_tokens, sent.output_tokens, sent.cost_usd]

    def total(self) -> Totals:
        """What every worker has sent, summed."""
        values = list(self._slots)
        return Totals(
            input_tokens=int(sum(values[0 :: self._FIELDS])),
            output_tokens=int(sum(values[1 :: self._FIELDS])),
            cost_usd=float(sum(values[2 :: self._FIELDS])),
        )


@dataclass
class BudgetMeter:
    """Live spending against a study's budget (tokens and cost): earlier runs plus what this
    gateway has sent since the meter was made; in a worker process, plus what the other workers
    have sent (``shared``, this worker's slot ``slot``)."""

    budget: Budget
    gateway: Gateway
    before: Totals = field(default_factory=Totals)
    shared: SharedSpending | None = None
    slot: int = 0
    _start: Totals = field(init=False)

    def __post_init__(self) -> None:
        self._start = _sent(self.gateway)

    @property
    def limited(self) -> bool:
        """Whether the budget sets any cap."""
        return self.budget.max_tokens is not None or self.budget.max_cost_usd is not None

    def since_start(self) -> Totals:
        """What this gateway has spent since the meter started."""
        return _sent(self.gateway) - self._start

    def spent(self) -> Totals:
        """Everything spent so far: earlier runs plus this one (every worker's, when shared)."""
        if self.shared is None:
            return self.before + self.since_start()
        self.shared.publish(self.slot, self.since_start())
        return self.before + self.shared.total()

    def exhausted(self) -> bool:
        """True once the tokens or the cost reach their limit."""
        return self.limited and is_spent(self.budget, self.spent())

    def check(self) -> None:
        """Raise :class:`BudgetExhausted` once the budget is spent."""
        if self.exhausted():
            spent, b = self.spent(), self.budget
            limits = ", ".join(
                part
                for part in (
                    f"{spent.total_tokens:,} of {b.max_tokens:,} tokens" if b.max_tokens else "",
                    f"${spent.cost_usd:,.2f} of ${b.max_cost_usd:,.2f}" if b.max_cost_usd else "",
                )
                if part
            )
            raise BudgetExhausted(f"the study's budget is spent ({limits})")


def record_judging(store: Store, meter: BudgetMeter) -> None:
    """Add what this meter's gateway spent judging to the store's running total."""
    done = meter.since_start()
    if done.total_tokens or done.cost_usd:
        total = _judging_spent(store) + done
        store.set_meta(
            JUDGING_SPENT,
            {
                "input_tokens": total.input_tokens,
                "output_tokens": total.output_tokens,
                "cached_input_tokens": total.cached_input_tokens,
                "tokens": total.total_tokens,
                "cost_usd": total.cost_usd,
            },
        )
