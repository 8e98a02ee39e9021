"""The Lua scripts of the shared job queue (redis_queue.py): each a check and its
writes in one step, so that no two replicas act on one job at once.

Keys: ``job`` is the job's hash (fields ``record`` the JSON document, ``status``,
``entry`` its stream entry, ``run`` the token of the run that owns it, ``cancel``
set when a cancel was asked); ``stream`` the queue (a Redis stream read by the
consumer group ``runners``); ``index`` the jobs by creation time; ``failed`` the
failed jobs by end time.
"""

# KEYS job, stream, index; ARGV id, record, created: queue a new job (none if the
# id is known already, as a job imported twice).
ADD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local entry = redis.call('XADD', KEYS[2], '*', 'job', ARGV[1])
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'status', 'queued', 'entry', entry)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return entry
"""

# KEYS job; ARGV run token, record (running): make the run ours, unless the job
# ended meanwhile ('finished', 'missing'); 'cancel' when a cancel was asked (the run
# is ours, to end it cancelled).
CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'queued' and status ~= 'running' then return 'finished' end
redis.call('HSET', KEYS[1], 'run', ARGV[1])
if redis.call('HEXISTS', KEYS[1], 'cancel') == 1 then return 'cancel' end
redis.call('HSET', KEYS[1], 'status', 'running', 'record', ARGV[2])
return 'ok'
"""

# KEYS job, stream, failed; ARGV run token, record, status, group, consumer, entry,
# mode, retention ms, now, id: write the state of a run we own ('lost' if another took
# it). 'renew' also resets the entry's idle time, so no replica claims it, and says
# 'cancel' when a cancel was asked; 'finish' acknowledges and deletes the entry and
# lets the record expire after the retention.
SAVE = """
if redis.call('HGET', KEYS[1], 'run') ~= ARGV[1] then return 'lost' end
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'status', ARGV[3])
if ARGV[7] == 'finish' then
  redis.call('XACK', KEYS[2], ARGV[4], ARGV[6])
  redis.call('XDEL', KEYS[2], ARGV[6])
  redis.call('HDEL', KEYS[1], 'run', 'cancel', 'entry')
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
  if ARGV[3] == 'failed' then
    redis.call('ZADD', KEYS[3], ARGV[9], ARGV[10])
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[9] - 3600)
  end
  return 'ok'
end
if ARGV[7] == 'renew' then
  redis.call('XCLAIM', KEYS[2], ARGV[4], ARGV[5], 0, ARGV[6], 'JUSTID')
end
if redis.call('HEXISTS', KEYS[1], 'cancel') == 1 then return 'cancel' end
return 'ok'
"""

# KEYS job, stream; ARGV record (cancelled), retention ms: cancel a job no replica
# runs ('cancelled'); else ask its runner to ('asked'), or 'finished'.
CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' and redis.call('HEXISTS', KEYS[1], 'run') == 0 then
  local entry = redis.call('HGET', KEYS[1], 'entry')
  if entry then redis.call('XDEL', KEYS[2], entry) end
  redis.call('HSET', KEYS[1], 'record', ARGV[1], 'status', 'cancelled')
  redis.call('HDEL', KEYS[1], 'entry')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 'cancelled'
end
if status == 'queued' or status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  return 'asked'
end
return 'finished'
"""

# KEYS job, stream; ARGV run token, record (queued), group, entry, id: hand a run we
# own back to the queue (at shutdown), as a new entry another replica reads at once.
RELEASE = """
if redis.call('HGET', KEYS[1], 'run') ~= ARGV[1] then return 0 end
redis.call('XACK', KEYS[2], ARGV[3], ARGV[4])
redis.call('XDEL', KEYS[2], ARGV[4])
local entry = redis.call('XADD', KEYS[2], '*', 'job', ARGV[5])
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'status', 'queued', 'entry', entry)
redis.call('HDEL', KEYS[1], 'run')
return 1
"""
