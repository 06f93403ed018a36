"""Login backoff: how long a password check waits, from the failures before it.

Failure scores decay exponentially (halving every `half_life_s`) and are kept for three keys:
an account from one address (`(tenant name, login)` as typed, and the client address), an
address across every account, and an account across every address. A score asks for nothing
while fresh (or forgotten), else `base_s * 2**(score - 1)`, capped at `max_s`; a check waits
`delay_s(...)`, the longest of:

- the account's failures from this same address (a guesser slows only itself);
- the address's failures at any account, past `ADDRESS_FREE_FAILURES` (an office behind one
  NAT address shares it, and its staff mistype);
- the account's failures from every address, but only once they came from at least
  `ACCOUNT_LOCK_ADDRESSES` distinct addresses within a half-life: an account-wide lock, which
  one address alone cannot put on somebody else's account.

The key is the name as typed, whether or not the account exists, so the delay reveals nothing
about which logins exist. The delay alone does not stop parallel guessing (N attempts that
arrive together would wait it side by side): `appliance.gateway.login_gate` runs the attempts of a
key one at a time, and this module only says how long each one waits.

Memory is bounded: at most `max_entries` keys; past it, the entries that decayed to nothing
are dropped, then the least recently failed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ACCOUNT_LOCK_ADDRESSES", "ADDRESS_FREE_FAILURES", "Delay", "LoginBackoff"]

ADDRESS_FREE_FAILURES = 5
ACCOUNT_LOCK_ADDRESSES = 3
DEFAULT_HALF_LIFE_S = 600.0
DEFAULT_MAX_ENTRIES = 100_000
_FORGOTTEN_SCORE = 0.05  # below this a key is as good as fresh and may be dropped

Account = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Delay:
    """How long a check waits, and which score asks for it (for the server's log)."""

    seconds: float
    cause: str  # "" (no wait), "account from this address", "address" or "account locked"


class _Entry:
    __slots__ = ("addresses", "score", "since")

    def __init__(self, score: float, since: float) -> None:
        self.score = score
        self.since = since
        # Accounts only: the last distinct addresses that failed it, and when.
        self.addresses: dict[str, float] = {}


class LoginBackoff:
    def __init__(
        self, *, base_s: float, max_s: float, clock_s: Callable[[], float],
        half_life_s: float = DEFAULT_HALF_LIFE_S, max_entries: int = DEFAULT_MAX_ENTRIES,
        lock_addresses: int = ACCOUNT_LOCK_ADDRESSES,
    ) -> None:
        """`clock_s` is any monotonic-enough clock in seconds (the server passes its own)."""
        if max_entries < 1 or half_life_s <= 0 or lock_addresses < 2:
            raise ValueError("max_entries must be >= 1, half_life_s > 0, lock_addresses >= 2")
        self._base_s = base_s
        self._max_s = max(max_s, base_s)
        self._clock_s = clock_s
        self._half_life_s = half_life_s
        self._decay_per_s = math.log(2) / half_life_s
        self._max_entries = max_entries
        self._lock_addresses = lock_addresses
        # key -> entry; insertion order is recency of failure.
        self._entries: dict[object, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def lock_addresses(self) -> int:
        """How many distinct addresses failing an account within a half-life lock it."""
        return self._lock_addresses

    def _score(self, key: object, now: float) -> float:
        entry = self._entries.get(key)
        if entry is None:
            return 0.0
        return entry.score * math.exp(-self._decay_per_s * max(0.0, now - entry.since))

    def _delay_for(self, score: float) -> float:
        if score < _FORGOTTEN_SCORE:  # not `< 1`: one failure, decayed a moment, still counts
            return 0.0
        return min(self._max_s, self._base_s * 2 ** (score - 1.0))

    def _locked(self, account: Account, now: float) -> bool:
        entry = self._entries.get(("account", account))
        if entry is None:
            return False
        recent = [at for at in entry.addresses.values() if now - at < self._half_life_s]
        return len(recent) >= self._lock_addresses

    def locked(self, account: Account) -> bool:
        """Whether failures from several addresses have locked `account` for every address."""
        return self._locked(account, self._clock_s())

    def delay(self, account: Account, address: str) -> Delay:
        """How long the next check for `account` from `address` waits, and why."""
        now = self._clock_s()
        candidates = [
            (self._delay_for(self._score(("pair", account, address), now)),
             "account from this address"),
            (self._delay_for(self._score(("address", address), now) - ADDRESS_FREE_FAILURES),
             "address"),
        ]
        if self._locked(account, now):
            candidates.append((self._delay_for(self._score(("account", account), now)),
                               "account locked"))
        seconds, cause = max(candidates, key=lambda candidate: candidate[0])
        return Delay(seconds, cause if seconds > 0 else "")

    def delay_s(self, account: Account, address: str) -> float:
        """`delay(...).seconds`."""
        return self.delay(account, address).seconds

    def failed(self, account: Account, address: str) -> None:
        """Count a failed check against the account, the address, and the two together."""
        now = self._clock_s()
        for key in (("account", account), ("address", address), ("pair", account, address)):
            score = self._score(key, now)
            entry = self._entries.pop(key, None) or _Entry(0.0, now)  # re-inserted last
            entry.score, entry.since = score + 1.0, now
            self._entries[key] = entry
        addresses = self._entries[("account", account)].addresses
        addresses.pop(address, None)
        addresses[address] = now
        while len(addresses) > self._lock_addresses:  # the oldest are not needed to tell
            del addresses[next(iter(addresses))]
        if len(self._entries) > self._max_entries:
            self._prune(now)

    def succeeded(self, account: Account, address: str) -> None:
        """A correct password clears the account's score (and its lock) and its score from
        this address; not the address's own (one good login must not buy an address more
        guesses at other accounts), nor the account's from other addresses (the real user's
        login must not buy a guesser elsewhere fresh guesses)."""
        self._entries.pop(("account", account), None)
        self._entries.pop(("pair", account, address), None)

    def _prune(self, now: float) -> None:
        for key in [k for k in self._entries if self._score(k, now) < _FORGOTTEN_SCORE]:
            del self._entries[key]
        while len(self._entries) > self._max_entries:
            del self._entries[next(iter(self._entries))]
