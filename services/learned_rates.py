"""The tool-call advisor's learned change rates, kept in the store.

What one agent session learns about how often a tool's result changes (`memory.temporal.rates`)
then survives restarts and serves the tenant's other sessions: one record per namespace under
`RATES_KEY`, no tensors, the `ChangeRateModel.state_dict()` (plain JSON) as its metadata. It is
saved when the model's revision moved; the last writer wins, so two sessions learning at the
same moment may drop one's newest intervals, never mix them.
"""

from __future__ import annotations

import logging

from kv_store import RecordTooLarge, Store
from memory.temporal import ChangeRateModel

RATES_KEY = "agent.tool_rates"

log = logging.getLogger("services.learned_rates")


class StoredRates:
    """Loads `rates` from `store` and saves them back when they changed."""

    def __init__(self, store: Store, rates: ChangeRateModel) -> None:
        self.store = store
        self.rates = rates
        self._saved_revision: int | None = None

    def load(self) -> bool:
        """Replace the rates' evidence with the stored one; False when there is none or it is
        unreadable (then the rates are left as they were, with a warning)."""
        record = self.store.get_tensors(RATES_KEY)
        if record is None:
            return False
        _tensors, meta = record
        try:
            self.rates.load_state_dict(meta.get("rates"))
        except ValueError as err:
            log.warning("tempomem: stored tool change rates ignored: %s", err)
            return False
        self._saved_revision = self.rates.revision
        return True

    def save(self) -> bool:
        """Write the rates if they changed since the last load or save; True if written."""
        if self.rates.revision == self._saved_revision:
            return False
        try:
            self.store.put_tensors(RATES_KEY, {}, meta={"rates": self.rates.state_dict()})
        except RecordTooLarge as err:
            log.warning("tempomem: tool change rates not saved: %s", err)
            return False
        self._saved_revision = self.rates.revision
        return True
