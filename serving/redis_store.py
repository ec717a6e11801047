"""The Redis backend of ``serving.store.Store`` (several workers and replicas share one server).

Compare-and-set runs as one Lua script per batch (Redis runs a script atomically); statistics
are hash fields ``"{action}|{i}"`` changed with HINCRBYFLOAT inside MULTI and decayed by one
Lua script (scale every field, note the time); the learner queue is a sorted set by due time,
and ZREM tells exactly one claimer that it removed an id.

Persistence: the store is derived from the decision log, but a Redis that forgets everything at
every restart makes the service refuse (its ``meta:epoch`` is gone) until ``nextbest store
rebuild``. :meth:`RedisStore.ensure_persistence` (called by the service at start) turns the
append-only file on (``CONFIG SET appendonly yes``) or logs once, clearly, why it cannot.
"""

from __future__ import annotations

import logging

import numpy as np
import redis

from nextbest.serving.store import Store

log = logging.getLogger(__name__)

PUT_CHUNK = 5000  # keys per put script: a script blocks the server while it runs
ABSENT = "<absent>"  # values are JSON, so this can never be one
_CAS = """
local ttl = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local cur = redis.call('GET', key)
  local expected = ARGV[2 * i]
  if (cur == false and expected == '<absent>') or cur == expected then
    if ttl > 0 then redis.call('SET', key, ARGV[2 * i + 1], 'PX', ttl) else redis.call('SET', key, ARGV[2 * i + 1]) end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""
# SET of many keys in one call, each with its TTL (ms, 0 = none): a pipeline of SETs cost the client
# about 19 ms per 1,000 keys in redis-py, the event ids of one batch of 1,000 events: a third of its
# engine time
_PUT = """
for i, key in ipairs(KEYS) do
  local ttl = tonumber(ARGV[2 * i])
  if ttl > 0 then redis.call('SET', key, ARGV[2 * i - 1], 'PX', ttl) else redis.call('SET', key, ARGV[2 * i - 1]) end
end
return #KEYS
"""
_DECAY = """
local now = tonumber(ARGV[1])
local last = redis.call('GET', KEYS[1])
if not last then
  redis.call('SET', KEYS[1], ARGV[1])
  return '1'
end
local dt = now - tonumber(last)
local hl, hc = tonumber(ARGV[2]), tonumber(ARGV[4])
if dt < tonumber(ARGV[3]) or (hl <= 0 and hc <= 0) then return '1' end
local f, fc = 1, 1
if hl > 0 then f = 0.5 ^ (dt / hl) end
if hc > 0 then fc = 0.5 ^ (dt / hc) end
local h = redis.call('HGETALL', KEYS[2])
for i = 1, #h, 2 do
  if string.sub(h[i], -5) ~= '|size' then
    local g = f
    if string.sub(h[i], 1, 12) == 'calibration|' then g = fc end
    if string.sub(h[i], 1, 18) == 'calibration-check|' then g = 1 end
    redis.call('HSET', KEYS[2], h[i], string.format('%.17g', tonumber(h[i + 1]) * g))
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('INCR', KEYS[3])
return string.format('%.17g', f)
"""

_RESCALE = """
local size = redis.call('HGET', KEYS[1], ARGV[1] .. '|size')
if not size then return 0 end
local keep = tonumber(ARGV[2])
for i = 0, tonumber(size) - 1 do
  local f = ARGV[1] .. '|' .. i
  local v = tonumber(redis.call('HGET', KEYS[1], f) or '0') * keep + tonumber(ARGV[3 + i])
  redis.call('HSET', KEYS[1], f, string.format('%.17g', v))
end
redis.call('INCR', KEYS[2])
return 1
"""


class RedisStore(Store):
    def __init__(self, url: str, prefix: str = "nextbest"):
        # short connect timeout: an outage is reported (503) at once rather than after 30 s
        self.r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=30, socket_connect_timeout=2)
        self.r.ping()  # fail at start, with the URL, rather than at the first request
        self.p = prefix
        self._cas = self.r.register_script(_CAS)
        self._put = self.r.register_script(_PUT)
        self._decay = self.r.register_script(_DECAY)
        self._rescale = self.r.register_script(_RESCALE)

    def _k(self, ns, key):
        return f"{self.p}:{ns}:{key}"

    def get_many(self, ns, keys):
        return self.r.mget([self._k(ns, k) for k in keys]) if keys else []

    def cas_many(self, ns, items, ttl_s=None):
        if not items:
            return []
        args = [int(ttl_s * 1000) if ttl_s else 0]
        for _, expected, new in items:
            args += [ABSENT if expected is None else expected, new]
        return [bool(x) for x in self._cas(keys=[self._k(ns, k) for k, _, _ in items], args=args)]

    def put_new(self, ns, key, value, ttl_s=None):
        return bool(self.r.set(self._k(ns, key), value, nx=True, px=int(ttl_s * 1000) if ttl_s else None))

    def put_many(self, ns, items):
        for lo in range(0, len(items), PUT_CHUNK):
            chunk = items[lo:lo + PUT_CHUNK]
            args = []
            for _, v, ttl in chunk:
                args += [v, max(1, int(ttl * 1000)) if ttl else 0]  # callers pass only positive ttls
            self._put(keys=[self._k(ns, k) for k, _, _ in chunk], args=args)

    def delete(self, ns, keys):
        if keys:
            self.r.delete(*[self._k(ns, k) for k in keys])

    def add_stats(self, deltas):
        if not deltas:
            return
        pipe = self.r.pipeline(transaction=True)
        for action, delta in deltas.items():
            for i, v in enumerate(np.asarray(delta, np.float64)):
                if v != 0.0:
                    pipe.hincrbyfloat(f"{self.p}:stats", f"{action}|{i}", float(v))
            pipe.hsetnx(f"{self.p}:stats", f"{action}|size", len(delta))
        pipe.incr(f"{self.p}:stats_version")
        pipe.execute()

    def rescale_stats(self, action, keep, add):
        self._rescale(keys=[f"{self.p}:stats", f"{self.p}:stats_version"],
                      args=[action, repr(float(keep)), *(repr(float(v)) for v in np.asarray(add, np.float64))])

    def stats(self):
        pipe = self.r.pipeline(transaction=True)
        pipe.get(f"{self.p}:stats_version")
        pipe.hgetall(f"{self.p}:stats")
        version, raw = pipe.execute()
        sizes = {f[:-5]: int(v) for f, v in raw.items() if f.endswith("|size")}
        out = {a: np.zeros(n) for a, n in sizes.items()}
        for f, v in raw.items():
            action, _, i = f.rpartition("|")
            if i != "size" and action in out:
                out[action][int(i)] = float(v)
        return int(version or 0), out

    def stats_version(self):
        return int(self.r.get(f"{self.p}:stats_version") or 0)

    def decay_stats(self, half_life_s, now_s, every_s, calibration_half_life_s=0.0):
        keys = [f"{self.p}:stats_decayed_at", f"{self.p}:stats", f"{self.p}:stats_version"]
        return float(self._decay(keys=keys, args=[repr(float(now_s)), repr(float(half_life_s)), repr(float(every_s)),
                                                  repr(float(calibration_half_life_s))]))

    def enqueue(self, items):
        if items:
            self.r.zadd(f"{self.p}:queue", {i: t for i, t in items}, nx=True)

    def due(self, before_s, limit=1000):
        return self.r.zrangebyscore(f"{self.p}:queue", "-inf", before_s, start=0, num=limit)

    def claim(self, ids):
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.zrem(f"{self.p}:queue", i)
        return [i for i, removed in zip(ids, pipe.execute()) if removed]

    def prune(self) -> int:
        return 0  # Redis expires keys itself

    def ensure_persistence(self) -> bool:
        """Make sure Redis keeps its data across a restart (AOF); True if it does. Logs a warning
        naming the fix when it is off and cannot be turned on (a managed Redis without CONFIG)."""
        try:
            if self.r.config_get("appendonly").get("appendonly") == "yes":
                return True
            self.r.config_set("appendonly", "yes")
            log.info("Redis persistence: turned the append-only file on (CONFIG SET appendonly yes)")
            return True
        except redis.ResponseError as exc:
            log.warning("Redis persistence is off and cannot be turned on (%s): a restart of Redis empties the "
                        "store and the service then refuses until `nextbest store rebuild`; set `appendonly yes` "
                        "in the Redis configuration", exc)
            return False

    def _keys(self) -> list[str]:
        return list(self.r.scan_iter(match=f"{self.p}:*", count=1000))

    def dump(self) -> dict:
        kv: dict[str, dict] = {}
        special = {f"{self.p}:{k}" for k in ("stats", "stats_version", "stats_decayed_at", "queue")}
        keys = [k for k in self._keys() if k not in special]
        for k, v in zip(keys, self.r.mget(keys) if keys else []):
            if v is not None:
                ns, _, key = k[len(self.p) + 1:].partition(":")
                kv.setdefault(ns, {})[key] = v
        return {"kv": kv, "stats": self.stats()[1], "queue": dict(self.r.zrange(f"{self.p}:queue", 0, -1, withscores=True))}

    def clear(self) -> None:
        keys = self._keys()
        for lo in range(0, len(keys), 1000):
            self.r.delete(*keys[lo:lo + 1000])

    def close(self):
        self.r.close()
