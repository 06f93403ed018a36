"""Login backoff: repeated failures for one account, or from one address, slow logins down.

Each (tenant name, login) as typed and each client address has a failure score that decays
exponentially (halving every `half_life_s`). Before a password is checked, the login waits
`delay_s(...)`: nothing for a fresh key, then `base_s * 2**(score - 1)`, capped at `max_s`.
Waiting BEFORE the check (whatever its outcome) is what makes guessing slow: an attacker who
fires attempts in parallel gets no early answer to the lucky one. The key is the name as
typed, whether or not the account exists, so the delay reveals nothing about which logins
exist. Addresses are forgiven `ADDRESS_FREE_FAILURES` failures before they are slowed, since
an office behind one NAT address shares it.

Memory is bounded: at most `max_entries` keys; past it, the entries that decayed to nothing
are dropped, then the least recently failed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["ADDRESS_FREE_FAILURES", "LoginBackoff"]

ADDRESS_FREE_FAILURES = 5
DEFAULT_HALF_LIFE_S = 600.0
DEFAULT_MAX_ENTRIES = 100_000
_FORGOTTEN_SCORE = 0.05  # below this a key is as good as fresh and may be dropped


class LoginBackoff:
    def __init__(
        self, *, base_s: float, max_s: float, clock_s: Callable[[], float],
        half_life_s: float = DEFAULT_HALF_LIFE_S, max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        """`clock_s` is any monotonic-enough clock in seconds (the server passes its own)."""
        if max_entries < 1 or half_life_s <= 0:
            raise ValueError("max_entries must be >= 1 and half_life_s > 0")
        self._base_s = base_s
        self._max_s = max(max_s, base_s)
        self._clock_s = clock_s
        self._decay_per_s = math.log(2) / half_life_s
        self._max_entries = max_entries
        # key -> (score, time of the last update); insertion order is recency of failure.
        self._scores: dict[object, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._scores)

    def _score(self, key: object, now: float) -> float:
        entry = self._scores.get(key)
        if entry is None:
            return 0.0
        score, since = entry
        return score * math.exp(-self._decay_per_s * max(0.0, now - since))

    def _delay_for(self, score: float) -> float:
        if score < 1.0:
            return 0.0
        return min(self._max_s, self._base_s * 2 ** (score - 1.0))

    def delay_s(self, account: tuple[str, str], address: str) -> float:
        """How long the next login for `account` from `address` waits before the check."""
        now = self._clock_s()
        by_address = self._score(("address", address), now) - ADDRESS_FREE_FAILURES
        return max(self._delay_for(self._score(("account", account), now)),
                   self._delay_for(by_address))

    def failed(self, account: tuple[str, str], address: str) -> None:
        """Count a failed login against the account and the address."""
        now = self._clock_s()
        for key in (("account", account), ("address", address)):
            score = self._score(key, now) + 1.0
            self._scores.pop(key, None)  # re-inserted last: the most recent
            self._scores[key] = (score, now)
        if len(self._scores) > self._max_entries:
            self._prune(now)

    def succeeded(self, account: tuple[str, str]) -> None:
        """A correct password clears the account's score (not the address's: one good login
        must not buy an address more guesses at other accounts)."""
        self._scores.pop(("account", account), None)

    def _prune(self, now: float) -> None:
        for key in [k for k in self._scores if self._score(k, now) < _FORGOTTEN_SCORE]:
            del self._scores[key]
        while len(self._scores) > self._max_entries:
            del self._scores[next(iter(self._scores))]
