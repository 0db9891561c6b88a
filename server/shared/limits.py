"""Per-key request, token and stream limits counted in Redis, so every instance sees one count.

The same token buckets as the in-process limits: a bucket holds up to the per-minute limit and
refills continuously at that rate; a new key starts full. Each check-and-take is one Lua script,
so it is atomic across instances, and it reads Redis's own clock (TIME), so instances whose clocks
differ still agree. A key's hash expires an hour after its last take or give-back (a refused take
changes nothing, and keeps nothing alive), or after the last renewal of a lease on its slots.

Stream slots are counted per instance, under a lease: field `s:<instance>` counts the key's slots an
instance holds, `x:<instance>` is when its lease lapses (Redis time). A take that asks for a slot
counts the live leases' slots, deletes the lapsed ones, and renews its own instance's lease; each
instance also renews its leases every third of `redis.slot_lease_seconds` (limit_store.py). So an
instance that died (SIGKILL, a lost node) holds its slots for at most a lease, where one shared
count kept them for as long as the key was in use, and a key at its `max_streams` was refused
everywhere for good. Each renewal also sets the instance's count to the slots it holds, unless a
take, give-back or undo of the key is on its way (or owed: one whose reply never came may still
land), or one sent after the renewal read its count landed first (each change carries a stamp,
`o:<instance>` keeps the highest landed, see _RENEW): that mends a count a lost give-back left
wrong, and brings back one that lapsed while its instance lives (cut off from Redis, or frozen,
for a lease). A count at 0 stays, with its lease and stamp, until the lease lapses.
Field `s` is the one shared count of instances from before leases: these instances count it, but
those do not count the leased ones, so during a rolling upgrade the older instances may admit more
than `max_streams`; and a slot an older instance left there is never swept (delete field `s` of
`<prefix>:limit:*` once the upgrade is done).

A give-back carries an id, and the script applies an id once. When Redis ran a give-back but its
reply was lost (a timeout, a dropped connection), the caller cannot tell, and sends it again once
Redis answers: counted twice, the key's stream count fell below its live streams (a stream more
than `max_streams` could start) and its unused tokens came back twice. An id is remembered for
`GIVEN_SECONDS`, far longer than a blip or a stall delays that retry; a retry later still is
applied, as one whose first try never reached Redis must be.

A take carries an id too, for the same lost reply: Redis took (a request, tokens, a stream slot)
while the caller, seeing Redis unreachable, counted the request in its process or refused it, and
nothing would ever give that back (an active key kept the slot for good). So a take that takes
records its id (`<prefix>:limit-taken:<id>`), in the same script and round trip, for
`TAKEN_SECONDS`; the caller that saw no reply sends `undo` under that id once Redis answers, which
gives back what the take asked for if the record says it took, and leaves the id undone (sent
again, it gives back nothing more). A take that never ran leaves no record and its undo changes
nothing; one that runs after its undo (still on its way when the undo came) finds the id undone
and takes nothing. An undo later than `TAKEN_SECONDS` after its take finds no record and gives
back nothing: the take then stays until the key's hash expires, as before.

A key's hash has an epoch: Redis's time, in microseconds, when a take made it (field `e`). A take
returns it, and a give-back carries the epoch of the tokens it gives back; tokens from another
epoch, or finding no hash, give nothing: Redis restarted empty (run without persistence, as
advised), the tokens of requests from before came back to a bucket that never lent them. Stream
slots need no epoch: each instance's count holds only the slots it runs, an empty restart lost it
whole, and the instance's next renewal sets it again to every slot it still holds (the streams from
before the restart too, which still run), so a slot leaves it whatever the epoch. A
hash that expired after its idle hour and was made again is a new epoch too; one Redis restarted
with (RDB, AOF) keeps its epoch, and give-backs count there as before. An undo needs none: its
take's record lives `TAKEN_SECONDS`, less than the hash lives after that take, and an empty Redis
lost both.

Redis down raises LimitsUnavailableError; what to do then (`[redis] fail_open`) is the caller's.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError

from .link import UNREACHABLE, RedisLink

IDLE_SECONDS = 3600
# How long a give-back's id is remembered. Not longer: each costs a small key (a few MB at 100 streams/s).
GIVEN_SECONDS = 600
# How long a take's id is remembered: its undo comes once Redis answers the caller again, and this
# counts from when the take ran (a stalled take runs when Redis wakes). Each take costs a small key
# for that long: about 130 bytes, some 16 MB at 100 streams/s (a stream takes twice on a key with a tpm).
TAKEN_SECONDS = 600

# The scripts read the buckets the same way: Redis's own clock, then each level refilled since
# its last take at capacity per minute.
_READ_BUCKETS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local h = redis.call('HMGET', KEYS[1], 'rl', 'ra', 'tl', 'ta', 's', 'e')
local function level(value, at, capacity)
  if not value then return capacity end
  return math.min(capacity, tonumber(value) + (now - tonumber(at)) * capacity / 60)
end
-- The key's live stream slots: each instance's count ('s:<instance>') while its lease ('x:<instance>')
-- runs, plus 's', the one shared count of instances from before leases. `sweep` deletes lapsed leases,
-- with their counts and stamps ('o:<instance>', see _RENEW).
local function live_streams(sweep)
  local total, counts, leases = tonumber(h[5] or '0'), {}, {}
  local fields = redis.call('HGETALL', KEYS[1])
  for i = 1, #fields, 2 do
    local kind, instance = string.sub(fields[i], 1, 2), string.sub(fields[i], 3)
    if kind == 's:' then counts[instance] = tonumber(fields[i + 1])
    elseif kind == 'x:' then leases[instance] = tonumber(fields[i + 1]) end
  end
  for instance, lease in pairs(leases) do
    if lease > now then total = total + (counts[instance] or 0)
    elseif sweep then redis.call('HDEL', KEYS[1], 's:' .. instance, 'x:' .. instance, 'o:' .. instance) end
  end
  -- A stamp without its lease: one an instance from before stamps swept the lease of.
  if sweep then
    for i = 1, #fields, 2 do
      if string.sub(fields[i], 1, 2) == 'o:' and not leases[string.sub(fields[i], 3)] then
        redis.call('HDEL', KEYS[1], fields[i])
      end
    end
  end
  return total
end
"""

# An instance's change of its count of a key's stream slots, sent with `stamp` (see _RENEW): the
# count keeps the highest stamp landed. Highest, not last: a change whose reply never came (a take
# cancelled on its way) may land after one sent later, and must not hide that one from a renewal.
_STAMP = """
local function stamp_slots(instance, stamp)
  local field = 'o:' .. instance
  if stamp ~= '0' and tonumber(redis.call('HGET', KEYS[1], field) or '0') < tonumber(stamp) then
    redis.call('HSET', KEYS[1], field, stamp)
  end
end
"""

# Takes from one instance's count of a key's stream slots. A count at 0 stays, with its lease and
# stamp, until the lease lapses: a renewal crossing this give-back must still find the stamp. A
# count already swept (lapsed) is left to the instance's next renewal, which sets it.
_RELEASE_SLOTS = (
    _STAMP
    + """
local function release_slots(instance, streams, stamp)
  local held = redis.call('HGET', KEYS[1], 's:' .. instance)
  if not held then return end
  redis.call('HSET', KEYS[1], 's:' .. instance, math.max(0, tonumber(held) - streams))
  stamp_slots(instance, stamp)
end
"""
)

# KEYS[1]: the key's hash, KEYS[2]: the take's id, which says '1' once it took and '0' once undone.
# ARGV: rpm, tpm, max_streams, requests, tokens, streams (0 = no limit), the hash's idle seconds,
# the id's, the instance, its slot lease's seconds, the take's stamp. Returns {exceeded ('' when
# allowed; 'undone' for an id undone already, a reply no one reads), requests level, tokens level,
# retry after, the key's live streams (0 unless it asked for a slot), the hash's epoch ('0' when
# refused)}.
_TAKE = (
    _STAMP
    + """
if redis.call('GET', KEYS[2]) == '0' then return {'undone', '0', '0', '0', 0, '0'} end
local rpm, tpm, max_streams = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local requests, tokens, streams = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
"""
    + _READ_BUCKETS
    + """local rl, tl = level(h[1], h[2], rpm), level(h[3], h[4], tpm)
local s = streams > 0 and live_streams(true) or 0
local exceeded, retry, epoch = '', 0, '0'
-- A take over the whole tpm goes on a full bucket (see Lease.reserve): waiting for all of it, it never would.
local wanted = math.min(tokens, tpm)
if rpm > 0 and rl < requests then
  exceeded, retry = 'requests', (requests - rl) * 60 / rpm
elseif tpm > 0 and tokens > 0 and tl < wanted then
  exceeded, retry = 'tokens', (wanted - tl) * 60 / tpm
elseif max_streams > 0 and streams > 0 and s + streams > max_streams then
  exceeded, retry = 'streams', 1
end
if exceeded == '' then
  if rpm > 0 then rl = rl - requests end
  if tpm > 0 then tl = tl - tokens end
  -- A new hash's epoch: Redis's time in microseconds, as digits (a Lua number would print as 1.7e+15).
  epoch = h[6] or (t[1] .. string.format('%06d', tonumber(t[2])))
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[8])  -- for `undo`, should this reply be lost
  -- Only a take writes, and so keeps the hash an hour more: a key refused on and on (its clients
  -- retrying on 429) keeps nothing alive.
  redis.call('HSET', KEYS[1], 'rl', rl, 'ra', now, 'tl', tl, 'ta', now, 'e', epoch)
  if streams > 0 then
    s = s + streams
    -- A take that finds its instance's count lost (lapsed, or Redis restarted) makes one of its
    -- own slot: unstamped, so that a renewal it crossed still sets the count to the slots held.
    local lost = redis.call('HEXISTS', KEYS[1], 's:' .. ARGV[9]) == 0
    redis.call('HINCRBY', KEYS[1], 's:' .. ARGV[9], streams)
    redis.call('HSET', KEYS[1], 'x:' .. ARGV[9], now + tonumber(ARGV[10]))
    if not lost then stamp_slots(ARGV[9], ARGV[11]) end
  end
  redis.call('EXPIRE', KEYS[1], ARGV[7])
end
return {exceeded, tostring(rl), tostring(tl), tostring(retry), s, epoch}
"""
)

# KEYS[1]: the key's hash, KEYS[2]: the give-back's id. ARGV: tpm, tokens to return (negative: charge
# more), streams to release, the hash's idle seconds, the id's, the epoch the streams were taken in
# (unused: see the module's doc), the tokens', the instance whose count the streams leave, the
# give-back's stamp. Tokens count only in their epoch. Returns 2 for an id already applied, 0 when
# there is nothing to give.
_GIVE_BACK = (
    _RELEASE_SLOTS
    + """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[5]) then return 2 end
local h = redis.call('HMGET', KEYS[1], 'tl', 'ta', 'e')
local tokens = h[3] == ARGV[7] and tonumber(ARGV[2]) or 0
-- Slots leave the instance's own count whatever the epoch: that count holds only what the instance
-- runs (an empty restart lost it, and its next renewal sets it again to the slots it holds).
local streams = tonumber(ARGV[3])
if tokens == 0 and streams == 0 then return 0 end
local tpm = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if tpm > 0 then
  local tl = math.min(tpm, tonumber(h[1]) + (now - tonumber(h[2])) * tpm / 60)
  redis.call('HSET', KEYS[1], 'tl', math.min(tpm, tl + tokens), 'ta', now)
end
if streams > 0 then release_slots(ARGV[8], streams, ARGV[9]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""
)


# KEYS[1]: the key's hash, KEYS[2]: the take's id. ARGV: rpm, tpm, requests, tokens and streams the
# take asked for, the id's seconds, the instance that took, the undo's stamp. Gives them back only
# if the id says taken; then, or when the take has yet to come, the id says undone. Returns 1 when
# it gave back.
# Like a give-back, it never takes a level over its limit; unlike one, it does not keep the hash
# alive (the take did, for its hour).
_UNDO = (
    _RELEASE_SLOTS
    + """
local taken = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[2], '0', 'EX', ARGV[6])
if taken ~= '1' then
  -- Its slot was held while the undo was owed: a renewal that read it must not set the count.
  if tonumber(ARGV[5]) > 0 and redis.call('HEXISTS', KEYS[1], 's:' .. ARGV[7]) == 1 then
    stamp_slots(ARGV[7], ARGV[8])
  end
  return 0
end
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local requests, tokens, streams = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
"""
    + _READ_BUCKETS
    + """if not h[2] then return 0 end
local rl, tl = level(h[1], h[2], rpm), level(h[3], h[4], tpm)
if rpm > 0 then rl = math.min(rpm, rl + requests) end
if tpm > 0 then tl = math.min(tpm, tl + tokens) end
redis.call('HSET', KEYS[1], 'rl', rl, 'ra', now, 'tl', tl, 'ta', now)
if streams > 0 then release_slots(ARGV[7], streams, ARGV[8]) end
return 1
"""
)

# KEYS[1]: the key's hash. ARGV: rpm, tpm. Reads only: returns {requests level, tokens level, streams}.
_USAGE = (
    """
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
"""
    + _READ_BUCKETS
    + """return {tostring(level(h[1], h[2], rpm)), tostring(level(h[3], h[4], tpm)), live_streams(false)}
"""
)


# KEYS[1]: the key's hash. ARGV: the instance, how many of the key's stream slots it holds (more than
# 0), its lease's seconds, the hash's idle seconds, '1' to set the count ('0': a take, give-back or
# undo of the key is on its way or owed, whose landing the count could not tell: only a lapsed count
# is set then), the renewal's stamp, taken when the count was read. A change of the count sent after
# that read has a higher stamp: landed first on a count Redis kept, the count is not set (it holds
# that change; the next renewal sets it); a lost count is set whatever crossed it. Renews the
# instance's lease from now. Keeps the hash alive while slots are held (a stream may outlast its hour).
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local count = 's:' .. ARGV[1]
local crossed = tonumber(redis.call('HGET', KEYS[1], 'o:' .. ARGV[1]) or '0') > tonumber(ARGV[6])
if (ARGV[5] == '1' and not crossed) or redis.call('HEXISTS', KEYS[1], count) == 0 then
  redis.call('HSET', KEYS[1], count, ARGV[2])
end
redis.call('HSET', KEYS[1], 'x:' .. ARGV[1], now + tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


class LimitsUnavailableError(ConnectionError):
    """Redis cannot be reached: the shared counts are unknown for now."""


@dataclass(frozen=True, slots=True)
class Take:
    """What one take found: the refused limit (None when taken) and the buckets after it.

    `epoch`: the epoch of the hash it took in (0 when refused), which its give-backs carry.
    """

    exceeded: str | None
    requests_level: float
    tokens_level: float
    retry_after: float
    streams: int
    epoch: int

    @property
    def allowed(self) -> bool:
        return self.exceeded is None


class RedisLimitBuckets:
    """Each key's buckets and stream counts in one Redis hash, changed only by the scripts above.

    `instance` names this process's stream slots in each hash (a new random name by default).
    """

    def __init__(self, link: RedisLink, *, instance: str | None = None) -> None:
        self._link = link
        self.instance = instance or secrets.token_hex(8)
        self._slot_lease = link.settings.slot_lease_seconds
        self._prefix = f"{link.prefix}:limit:"
        self._given_prefix = f"{link.prefix}:limit-given:"
        self._taken_prefix = f"{link.prefix}:limit-taken:"
        self._take = link.client.register_script(_TAKE)
        self._give_back = link.client.register_script(_GIVE_BACK)
        self._undo = link.client.register_script(_UNDO)
        self._usage = link.client.register_script(_USAGE)
        self._renew = link.client.register_script(_RENEW)

    async def take(
        self,
        name: str,
        *,
        rpm: int,
        tpm: int,
        max_streams: int,
        requests: int,
        tokens: int,
        streams: int,
        take_id: str,
        stamp: int = 0,
    ) -> Take:
        """Take the amounts if every limit allows them all; else take nothing and say which refused.

        `take_id` is new for each take: when this raises LimitsUnavailableError, `undo` it. `stamp`:
        this change of the instance's slot count, in the order it was sent (see `renew`); 0 for none.
        """
        keys = [self._prefix + name, self._taken_prefix + take_id]
        args = [
            *(rpm, tpm, max_streams, requests, tokens, streams, IDLE_SECONDS, TAKEN_SECONDS),
            *(self.instance, self._slot_lease, stamp),
        ]
        reply: Any = await self._run(self._take, keys, args)
        exceeded = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        return Take(
            exceeded=exceeded or None,
            requests_level=float(reply[1]),
            tokens_level=float(reply[2]),
            retry_after=float(reply[3]),
            streams=int(reply[4]),
            epoch=int(reply[5]),
        )

    async def give_back(
        self,
        name: str,
        *,
        tpm: int,
        tokens: int,
        streams: int,
        give_back_id: str,
        streams_epoch: int,
        tokens_epoch: int,
        stamp: int = 0,
    ) -> None:
        """Return unused tokens (negative: charge more) and release stream slots, once per `give_back_id`.

        `streams_epoch`, `tokens_epoch`: the `Take.epoch` of the take that took each part; a hash of
        another epoch gets that part back not at all. A retry of a give-back that raised
        LimitsUnavailableError must carry the id of its first try (and a stamp of its own, as `take`'s).
        """
        keys = [self._prefix + name, self._given_prefix + give_back_id]
        args = [tpm, tokens, streams, IDLE_SECONDS, GIVEN_SECONDS, streams_epoch, tokens_epoch, self.instance, stamp]
        await self._run(self._give_back, keys, args)

    async def undo(
        self,
        name: str,
        *,
        rpm: int,
        tpm: int,
        requests: int,
        tokens: int,
        streams: int,
        take_id: str,
        stamp: int = 0,
    ) -> None:
        """Give back what the take `take_id` (of these limits and amounts) took, if it took; once.

        For a take that raised LimitsUnavailableError: Redis may have run it. Its undo may be sent
        again the same way, and before the take runs (the take then takes nothing). `stamp`: as `take`'s.
        """
        keys = [self._prefix + name, self._taken_prefix + take_id]
        args = [rpm, tpm, requests, tokens, streams, TAKEN_SECONDS, self.instance, stamp]
        await self._run(self._undo, keys, args)

    async def levels(self, name: str, *, rpm: int, tpm: int) -> tuple[float, float, int]:
        """The key's requests and tokens levels now, and its streams, changing nothing."""
        reply: Any = await self._run(self._usage, [self._prefix + name], [rpm, tpm])
        return float(reply[0]), float(reply[1]), int(reply[2])

    async def renew(self, held: Iterable[tuple[str, int, bool]], *, stamp: int) -> None:
        """Renew this instance's lease on each key's stream slots: (key, slots held, whether to set the count).

        `stamp`: higher than the stamps of every take, give-back and undo sent before the counts
        were read, lower than those sent after: one of those landing first keeps its key's count
        from being set to a number that does not hold it. One pipeline for all of them, sent at
        once: the script by its hash, not after the extra round trip in which redis-py's pipeline
        asks whether Redis has it. Loaded and sent again when Redis has not the script (a restart).
        """
        settings = (self._slot_lease, IDLE_SECONDS)
        commands = [
            (self._prefix + name, self.instance, streams, *settings, "1" if settable else "0", stamp)
            for name, streams, settable in held
        ]
        for attempt in range(2):
            pipe = self._link.client.pipeline(transaction=False)
            for command in commands:
                pipe.evalsha(self._renew.sha, 1, *command)
            try:
                await pipe.execute()
                return
            except NoScriptError:
                if attempt:
                    raise
                await self._run_load()
            except UNREACHABLE as exc:
                self._link.failed(exc)
                raise LimitsUnavailableError("Redis is unreachable") from None

    async def _run_load(self) -> None:
        try:
            await self._link.client.script_load(_RENEW)
        except UNREACHABLE as exc:
            self._link.failed(exc)
            raise LimitsUnavailableError("Redis is unreachable") from None

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except UNREACHABLE as exc:
            self._link.failed(exc)
            raise LimitsUnavailableError("Redis is unreachable") from None
