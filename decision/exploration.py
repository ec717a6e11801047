"""Exploration: turn option values into a probability for every option, then draw one.

Options are the columns of a value matrix ``(n, A)``: column 0 is "suppress" (no message), the
others are the policy's (channel, offer) pairs at their best local hour (the hour is a
deterministic function of the pair, so the probability of a column is the probability of the
exact action suppress | channel + hour + offer). ``-inf`` marks an option the rules do not allow;
it always gets probability 0.

Every method is a mixture of the greedy option (the highest mean value) and an exploration
distribution ``q``::

    p = (1 - lam) * onehot(greedy) + lam * q

- ``greedy``: ``lam = 0``.
- ``epsilon_greedy``: ``q`` uniform over the allowed options, ``lam = epsilon``.
- ``softmax``: ``q = softmax(mean / temperature)`` over the allowed options, ``lam = 1``.
- ``thompson``: ``q[a]`` = probability that ``a`` is the best option under a draw from the
  online learner's posterior, ``lam = 1``.

**Exploration budget.** ``budget`` caps the probability a decision puts on options other than
the greedy one: ``lam`` is lowered per decision to ``min(lam, budget / (1 - q[greedy]))``, so
``1 - p[greedy] <= budget`` always.

**Thompson propensities (Monte Carlo).** ``q`` is estimated with ``samples`` posterior draws per
decision: ``q_hat[a]`` = share of draws in which ``a`` wins. The option is then drawn from
``p_hat = (1 - lam) onehot + lam q_hat`` itself, so the logged propensity ``p_hat[action]`` is the
*exact* probability with which the logged action was chosen given the draws (the draws are
independent of the reward, which is all inverse-propensity estimators need); the chosen action
always has ``p_hat >= lam / samples > 0``. What is approximate is only how close ``q_hat`` is to
ideal Thompson sampling: each ``q_hat[a]`` has standard error ``sqrt(q (1 - q) / samples) <=
0.5 / sqrt(samples)``, and by Hoeffding's inequality plus a union bound over ``A`` options
``max_a |q_hat[a] - q[a]| <= sqrt(ln(2 A / delta) / (2 samples))`` with probability ``1 - delta``
(512 draws, 16 options, delta = 0.05: at most 0.080; the mixture scales this by ``lam``, and
``tests/training/test_exploration.py`` checks it empirically).

**Random control group.** A customer whose salted hash of ``customer_id`` falls below
``control_share`` gets no marketing message at all, ever (until the salt changes), so the
incrementality of the whole program can always be measured against them (the Braze/Pega
"global control group"). Membership is a fixed function of the customer id, so for a control
customer the logged action (suppress) has propensity 1, and for everyone else the propensity is
the exploration probability above; both are exact and conditional on the membership, which is
logged with the decision (``control``). Transactional requests ignore the control group.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

from nextbest.features.config import Config, ConfigError

METHODS = ("greedy", "epsilon_greedy", "softmax", "thompson")


@dataclass(frozen=True)
class Exploration:
    """How a deployment explores; read from the ``exploration`` section of the config."""

    method: str
    epsilon: float
    temperature: float
    samples: int
    budget: float
    control_share: float
    control_salt: str

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"exploration.method: expected one of {METHODS}, got {self.method!r}")
        for name in ("epsilon", "budget", "control_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"exploration.{name}: expected a share in [0, 1], got {v!r}")
        if not self.temperature > 0:
            raise ConfigError(f"exploration.temperature: expected a positive number, got {self.temperature!r}")
        if self.samples < 1:
            raise ConfigError(f"exploration.samples: expected a positive integer, got {self.samples!r}")

    @classmethod
    def from_config(cls, config: Config) -> "Exploration":
        s = config.exploration  # typed; the values are checked in __post_init__
        return cls(s.method, s.epsilon, s.temperature, s.samples, s.budget, s.control_share, s.control_salt)

    def with_(self, **changes) -> "Exploration":
        return replace(self, **changes)

    # ------------------------------------------------------------------ control group
    def in_control(self, customer_ids) -> np.ndarray:
        """Whether each customer belongs to the random control group, bool (n,)."""
        if self.control_share <= 0:
            return np.zeros(len(customer_ids), dtype=bool)
        salt = self.control_salt.encode()
        u = np.array([int.from_bytes(hashlib.blake2b(salt + str(c).encode(), digest_size=8).digest(), "big")
                      for c in customer_ids], dtype=np.float64) / 2.0**64
        return u < self.control_share

    # ------------------------------------------------------------------ probabilities
    def distribution(self, mean: np.ndarray, sd: np.ndarray | None = None, rng=None) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities of every option.

        Parameters
        ----------
        mean : array (n, A)
            Expected value of each option (``-inf``: not allowed; at least one allowed per row).
        sd : array (n, A), optional
            Posterior standard deviation of each value (needed by ``thompson``; a draw of the
            value of option ``a`` is ``mean + sd z``, independent across options and draws).
        rng : numpy Generator

        Returns
        -------
        probs : array (n, A), rows sum to one, zero where not allowed
        greedy : int array (n,)
        """
        allowed = np.isfinite(mean)
        if not allowed.any(axis=1).all():
            raise ValueError("every row needs at least one allowed option")
        n, A = mean.shape
        greedy = np.where(allowed, mean, -np.inf).argmax(axis=1)
        onehot = np.zeros((n, A))
        onehot[np.arange(n), greedy] = 1.0
        if self.method == "greedy":
            return onehot, greedy
        if self.method == "epsilon_greedy":
            q = allowed / allowed.sum(axis=1, keepdims=True)
            lam = np.full(n, self.epsilon)
        elif self.method == "softmax":
            z = np.where(allowed, mean / self.temperature, -np.inf)
            z = np.exp(z - z.max(axis=1, keepdims=True))
            q = z / z.sum(axis=1, keepdims=True)
            lam = np.ones(n)
        else:
            if sd is None:
                raise ValueError("thompson sampling needs the values' posterior standard deviations")
            q = self._thompson(mean, sd, allowed, rng)
            lam = np.ones(n)
        off = 1.0 - q[np.arange(n), greedy]
        lam = np.minimum(lam, np.where(off > 0, self.budget / np.maximum(off, 1e-300), 1.0))
        probs = (1.0 - lam)[:, None] * onehot + lam[:, None] * q
        return probs, greedy

    def _thompson(self, mean, sd, allowed, rng, chunk_cells: int = 2_000_000) -> np.ndarray:
        """Monte Carlo win shares ``q_hat`` (n, A) from ``samples`` draws per row, in row chunks."""
        n, A = mean.shape
        M = self.samples
        q = np.zeros((n, A))
        step = max(1, chunk_cells // (M * A))
        # not allowed: -inf with no spread, so a draw never wins there (float32 is plenty for a win)
        mu = np.where(allowed, mean, -np.inf).astype(np.float32)
        sdev = np.where(allowed, sd, 0.0).astype(np.float32)
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            v = rng.standard_normal((hi - lo, M, A)).astype(np.float32, copy=False)
            v *= sdev[lo:hi, None, :]
            v += mu[lo:hi, None, :]
            win = v.argmax(axis=2)                             # (rows, M)
            cell = (np.arange(hi - lo)[:, None] * A + win).ravel()
            q[lo:hi] = np.bincount(cell, minlength=(hi - lo) * A).reshape(hi - lo, A)
        return q / M


class KeyedRandom:
    """Random numbers drawn row by row from each row's own key (e.g. a request id).

    With a numpy Generator a row's draws depend on its position in the batch; with this, a
    decision depends only on its key, so a request decided alone or inside a batch of 10,000 gets
    the same answer. Stands in for the Generator in :meth:`Exploration.distribution` and
    :func:`draw`: ``standard_normal`` serves consecutive row chunks in order (as ``_thompson``
    asks for them), ``random`` one number per row.
    """

    def __init__(self, keys):
        self.seeds = [int.from_bytes(hashlib.blake2b(str(k).encode(), digest_size=8).digest(), "big") for k in keys]
        self._gens = [None] * len(self.seeds)  # one generator per row, made when first needed
        self._row = 0

    def _gen(self, i: int) -> np.random.Generator:
        if self._gens[i] is None:
            self._gens[i] = np.random.Generator(np.random.PCG64(self.seeds[i]))
        return self._gens[i]

    def standard_normal(self, shape) -> np.ndarray:
        rows, lo = shape[0], self._row
        if lo + rows > len(self.seeds):
            raise ValueError(f"asked for rows {lo}..{lo + rows} of {len(self.seeds)} keys")
        self._row += rows
        out = np.empty(shape, dtype=np.float32)  # float32 draws: plenty for a win share, twice as fast
        for i in range(rows):
            self._gen(lo + i).standard_normal(shape[1:], dtype=np.float32, out=out[i])
        return out

    def random(self, n: int) -> np.ndarray:
        if n != len(self.seeds):
            raise ValueError(f"asked for {n} numbers from {len(self.seeds)} keys")
        return np.array([self._gen(i).random() for i in range(n)])


def draw(probs: np.ndarray, rng) -> np.ndarray:
    """One option per row of ``probs`` (n, A), by inverse-CDF sampling; int (n,)."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cum[:, -1]
    choice = (cum <= u[:, None]).sum(axis=1)
    # guard against rounding at the top: never land on a zero-probability column
    over = probs[np.arange(len(probs)), np.minimum(choice, probs.shape[1] - 1)] <= 0
    choice = np.minimum(choice, probs.shape[1] - 1)
    if over.any():
        choice[over] = probs[over].argmax(axis=1)
    return choice
