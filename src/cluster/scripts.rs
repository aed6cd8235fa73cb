//! The registry's Lua scripts: each runs atomically in Redis, reads the
//! time from Redis (no clock skew between nodes), and touches only keys
//! under the one hash tag. `redis::Script` sends them by SHA and falls back
//! to the source when Redis does not know it yet (after a restart, say).

use redis::Script;

/// Renews a node's lease. Returns 1 when the lease was still held, 0 when
/// it was absent or run out (the node may have been reaped meanwhile, and
/// must claim its names again).
///
/// KEYS: nodes. ARGV: node, lease in ms.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if held and tonumber(held) >= now then return 1 end
return 0
";

/// Claims a name for a session, by the duplicate policy, if the name's
/// entry is still what the caller read (compare and set).
///
/// KEYS: names, nodes, this node's names, the current owner's names.
/// ARGV: name, this node, the new entry, mode (`reject`, `replace`,
/// `reclaim`), the entry the caller read (`''`: none).
/// Returns `{'ok', previous entry}`, `{'taken', entry}` or
/// `{'retry', entry}` (the entry changed since it was read).
const CLAIM: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if cur ~= ARGV[5] then return {'retry', cur} end
if cur ~= '' then
  local owner = string.match(cur, '^([^|]*)')
  if owner ~= ARGV[2] then
    local lease = redis.call('ZSCORE', KEYS[2], owner)
    if lease and tonumber(lease) >= now and ARGV[4] ~= 'replace' then
      return {'taken', cur}
    end
    redis.call('SREM', KEYS[4], ARGV[1])
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1])
return {'ok', cur}
";

/// Releases a name if this session still holds it (compare and delete).
/// Returns 1 when released, 0 when someone else holds it now.
///
/// KEYS: names, this node's names. ARGV: name, `node|session|`.
const RELEASE: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and string.sub(cur, 1, #ARGV[2]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[1])
  return 1
end
return 0
";

/// A Lua function that forgets everything a node held: the names it still
/// holds (compare: only entries that are its own), its clients' rows and
/// its room memberships. Returns every name it had, claimed or not.
///
/// Its keys are named from `prefix` (the node key prefix) and `rooms` (the
/// room key prefix); they share the registry's hash tag, so they live in
/// the slot of the declared keys.
const FORGET_FN: &str = r"
local function forget(names, node, prefix, rooms_prefix)
  local gone = {}
  local seen = {}
  local held = prefix .. node .. ':names'
  for _, name in ipairs(redis.call('SMEMBERS', held)) do
    local cur = redis.call('HGET', names, name)
    if cur and string.sub(cur, 1, #node + 1) == node .. '|' then
      redis.call('HDEL', names, name)
      if not seen[name] then seen[name] = true; gone[#gone + 1] = name end
    end
  end
  redis.call('DEL', held)
  local clients = prefix .. node .. ':clients'
  for _, row in ipairs(redis.call('HVALS', clients)) do
    local ok, r = pcall(cjson.decode, row)
    if ok and type(r) == 'table' and type(r.name) == 'string' and not seen[r.name] then
      seen[r.name] = true
      gone[#gone + 1] = r.name
    end
  end
  redis.call('DEL', clients)
  local rooms = prefix .. node .. ':rooms'
  for _, pair in ipairs(redis.call('SMEMBERS', rooms)) do
    local room, name = string.match(pair, '^(.-)\n(.*)$')
    if room then redis.call('SREM', rooms_prefix .. room, name) end
  end
  redis.call('DEL', rooms)
  return gone
end
";

/// Reaps every node whose lease ran out ([`FORGET_FN`] for each). Only the
/// first node to run it for a dead node gets that node's names back (the
/// `ZREM` is inside), so exactly one node announces their leave.
///
/// KEYS: nodes, names. ARGV: node key prefix, room key prefix.
/// Returns `{{node, {names...}, ms since its lease ran out (-1: it stopped
/// cleanly)}, ...}`.
const REAP: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
local out = {}
for _, node in ipairs(dead) do
  local score = tonumber(redis.call('ZSCORE', KEYS[1], node))
  local late = now - score
  if score == 0 then late = -1 end
  redis.call('ZREM', KEYS[1], node)
  out[#out + 1] = {node, forget(KEYS[2], node, ARGV[1], ARGV[2]), late}
end
return out
";

/// Forgets what a previous process with this node's id left behind (it
/// restarted within its lease, so nobody reaped it): run once at start.
///
/// KEYS: names. ARGV: this node, node key prefix, room key prefix.
/// Returns the names it had.
const FORGET: &str = r"
return forget(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
";

/// Claims again, in one go, the names of many sessions of this node after
/// Redis came back or the node's lease ran out: a name is taken if it is
/// free, this node's, or held by a node whose lease ran out; a name a live
/// node holds is left to it (the session here is then replaced).
///
/// KEYS: names, nodes, this node's names. ARGV: this node, the node key
/// prefix, then name and entry pairs.
/// Returns `{{names held elsewhere}, {names that were free}}`.
const RECLAIM: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local taken, fresh = {}, {}
for i = 3, #ARGV, 2 do
  local name, entry = ARGV[i], ARGV[i + 1]
  local cur = redis.call('HGET', KEYS[1], name)
  local mine = true
  if cur then
    local owner = string.match(cur, '^([^|]*)')
    if owner ~= ARGV[1] then
      local lease = redis.call('ZSCORE', KEYS[2], owner)
      if lease and tonumber(lease) >= now then
        mine = false
      else
        redis.call('SREM', ARGV[2] .. owner .. ':names', name)
        fresh[#fresh + 1] = name
      end
    end
  else
    fresh[#fresh + 1] = name
  end
  if mine then
    redis.call('HSET', KEYS[1], name, entry)
    redis.call('SADD', KEYS[3], name)
  else
    taken[#taken + 1] = name
  end
end
return {taken, fresh}
";

/// The scripts, hashed once.
pub(crate) struct Scripts {
    pub(crate) heartbeat: Script,
    pub(crate) claim: Script,
    pub(crate) release: Script,
    pub(crate) reap: Script,
    pub(crate) forget: Script,
    pub(crate) reclaim: Script,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            heartbeat: Script::new(HEARTBEAT),
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
            reap: Script::new(&format!("{FORGET_FN}{REAP}")),
            forget: Script::new(&format!("{FORGET_FN}{FORGET}")),
            reclaim: Script::new(RECLAIM),
        }
    }
}
