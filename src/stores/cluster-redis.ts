import { createHash } from 'node:crypto'
import type { Redis } from 'ioredis'
import type { Cluster, ClusterEvents, RoutedMessage } from '../cluster.js'
import { compareIds, firstIdAt, idTime } from '../ids.js'
import { decodeMessageFrame, type EncodedMessage } from '../protocol.js'
import { withTimeout } from '../timeout.js'

/*
 * Nodes sharing one Redis. Keys (all under the prefix):
 *   cluster:nodes              ZSET node id -> when it counts as dead (ms, Redis clock)
 *   cluster:node:<n>:users     SET  users connected to node n
 *   cluster:user:<u>:nodes     SET  nodes user u is connected to (routing looks here)
 *   cluster:online             ZSET users connected anywhere, scored by id (pages in id order)
 * Channels:
 *   cluster:bus:<n>            message frames for node n, newline-separated (JSON has no raw newline)
 *   cluster:events             presence changes "p:<user>:<1|0>" and ended sessions "r:<user>:<session>"
 * Each node heartbeats its entry in cluster:nodes; any node reaps entries
 * past their time, taking their users offline, and each heartbeat checks
 * that Redis still holds this node's users as the node knows them. Node-level
 * keys expire unless a live node renews them; what a cluster that died whole
 * leaves is cleared by the first node to start again.
 * Keys are built inside the scripts: a single Redis, not Redis Cluster.
 */

/** Shared by the scripts below: time from Redis's clock, and the presence bookkeeping of one user. */
const HELPERS = `
local function now ()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local function userJoined (prefix, node, user, events)
  redis.call('SADD', prefix .. 'cluster:user:' .. user .. ':nodes', node)
  if redis.call('ZADD', prefix .. 'cluster:online', 'NX', user, user) == 1 then
    events[#events + 1] = 'p:' .. user .. ':1'
  end
end
-- Offline once the user's last node is gone.
local function userLeft (prefix, node, user, events)
  local userNodes = prefix .. 'cluster:user:' .. user .. ':nodes'
  redis.call('SREM', userNodes, node)
  if redis.call('SCARD', userNodes) == 0 then
    redis.call('ZREM', prefix .. 'cluster:online', user)
    events[#events + 1] = 'p:' .. user .. ':0'
  end
end
-- Takes every user of a node offline and forgets the node (clean shutdown, or reaping a dead one).
local function leaveNode (prefix, node, events)
  local nodeUsers = prefix .. 'cluster:node:' .. node .. ':users'
  for _, user in ipairs(redis.call('SMEMBERS', nodeUsers)) do userLeft(prefix, node, user, events) end
  redis.call('DEL', nodeUsers)
  redis.call('ZREM', prefix .. 'cluster:nodes', node)
end
-- Marks the node alive for another ttl ms, and keeps the node-level keys.
local function renew (prefix, node, keep, ttl)
  redis.call('ZADD', prefix .. 'cluster:nodes', now() + ttl, node)
  redis.call('PEXPIRE', prefix .. 'cluster:nodes', keep)
  redis.call('PEXPIRE', prefix .. 'cluster:node:' .. node .. ':users', keep)
  redis.call('PEXPIRE', prefix .. 'cluster:online', keep)
end
local function announce (prefix, events)
  if #events > 0 then redis.call('PUBLISH', prefix .. 'cluster:events', table.concat(events, '\\n')) end
end
local prefix, node = ARGV[1], ARGV[2]
`

/**
 * Applies joins and leaves in order: ARGV prefix, node, keepMs, ttlMs, then op ('j'|'l') and user pairs.
 * Returns 0 if the node was not registered (reaped or forgotten), else 1.
 */
const PRESENCE = HELPERS + `
local keep, ttl = ARGV[3], tonumber(ARGV[4])
local nodeUsers = prefix .. 'cluster:node:' .. node .. ':users'
local known = redis.call('ZSCORE', prefix .. 'cluster:nodes', node)
local events = {}
for i = 5, #ARGV, 2 do
  local op, user = ARGV[i], ARGV[i + 1]
  if op == 'j' then
    if redis.call('SADD', nodeUsers, user) == 1 then userJoined(prefix, node, user, events) end
  elseif redis.call('SREM', nodeUsers, user) == 1 then
    userLeft(prefix, node, user, events)
  end
end
-- (A node that has no users left stays registered through its heartbeat.)
if redis.call('EXISTS', nodeUsers) == 1 then renew(prefix, node, keep, ttl) end
announce(prefix, events)
return known and 1 or 0
`

/** Takes this node (ARGV prefix, node) out of the cluster: clean shutdown, or a dead holder's leftovers. */
const CLOSE = HELPERS + `
local events = {}
leaveNode(prefix, node, events)
announce(prefix, events)
return #events
`

/**
 * Renews this node (ARGV prefix, node, keepMs, ttlMs), reaps dead ones.
 * Returns {1 if this node was still registered, live nodes, users Redis holds for this node}.
 */
const HEARTBEAT = HELPERS + `
local keep, ttl = ARGV[3], tonumber(ARGV[4])
local nodes = prefix .. 'cluster:nodes'
local known = redis.call('ZSCORE', nodes, node)
local events = {}
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', nodes, '-inf', '(' .. now())) do
  if dead ~= node then leaveNode(prefix, dead, events) end
end
renew(prefix, node, keep, ttl)
announce(prefix, events)
return { known and 1 or 0, redis.call('ZCARD', nodes), redis.call('SCARD', prefix .. 'cluster:node:' .. node .. ':users') }
`

/**
 * Makes Redis hold exactly the users staged in cluster:node:<n>:sync as this
 * node's (ARGV prefix, node, keepMs, ttlMs): the missing join, the extra
 * leave. Returns how many were missing (their messages were not routed here).
 */
const SYNC = HELPERS + `
local keep, ttl = ARGV[3], tonumber(ARGV[4])
local nodeUsers = prefix .. 'cluster:node:' .. node .. ':users'
local staged = prefix .. 'cluster:node:' .. node .. ':sync'
local events = {}
local missing = 0
for _, user in ipairs(redis.call('SMEMBERS', nodeUsers)) do
  if redis.call('SISMEMBER', staged, user) == 0 then
    redis.call('SREM', nodeUsers, user)
    userLeft(prefix, node, user, events)
  end
end
for _, user in ipairs(redis.call('SMEMBERS', staged)) do
  if redis.call('SADD', nodeUsers, user) == 1 then missing = missing + 1 end
  userJoined(prefix, node, user, events)
end
redis.call('DEL', staged)
renew(prefix, node, keep, ttl)
announce(prefix, events)
return missing
`

/**
 * Sends each message to the other nodes its recipient or sender is on, one
 * PUBLISH per node for the whole batch. ARGV: prefix, this node, then
 * recipient, sender, frame for each message.
 */
const ROUTE = `
local prefix, self = ARGV[1], ARGV[2]
local batches, order = {}, {}
for i = 3, #ARGV, 3 do
  local to, from, frame = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local targets = redis.call('SMEMBERS', prefix .. 'cluster:user:' .. to .. ':nodes')
  if from ~= to then
    for _, node in ipairs(redis.call('SMEMBERS', prefix .. 'cluster:user:' .. from .. ':nodes')) do
      targets[#targets + 1] = node
    end
  end
  local seen = {}
  for _, node in ipairs(targets) do
    if node ~= self and not seen[node] then
      seen[node] = true
      local batch = batches[node]
      if batch == nil then
        batch = {}
        batches[node] = batch
        order[#order + 1] = node
      end
      batch[#batch + 1] = frame
    end
  end
end
for _, node in ipairs(order) do
  redis.call('PUBLISH', prefix .. 'cluster:bus:' .. node, table.concat(batches[node], '\\n'))
end
return #order
`

type ScriptArgument = string | number

/**
 * A Lua script run by its SHA, loaded again when Redis has forgotten it
 * (after a restart). `reloaded` hears of it: a call sent again may now run
 * after calls sent later.
 */
function luaScript (redis: Redis, source: string, reloaded?: () => void): (...args: ScriptArgument[]) => Promise<unknown> {
  const sha = createHash('sha1').update(source).digest('hex')
  return async (...args) => {
    try {
      return await redis.evalsha(sha, 0, ...args)
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith('NOSCRIPT')) throw error
      reloaded?.()
      return await redis.eval(source, 0, ...args)
    }
  }
}

/** What the bus reports, for metrics. */
export interface BusObserver {
  published (messages: number): void
  received (messages: number): void
  error (): void
  state (up: boolean): void
}

export interface RedisClusterOptions {
  /** Runs commands and scripts. */
  redis: Redis
  /** A connection of its own for SUBSCRIBE; the cluster closes it. */
  subscriber: Redis
  prefix: string
  nodeId: number
  /** A node that has not renewed its entry for this long is taken for dead and its users go offline. */
  ttlMs: number
  observer?: BusObserver
  onError: (error: unknown, context: string) => void
}

/**
 * Ids made on other nodes, whose messages may have been lost, reach back
 * this far before the last moment the subscriber was known to work: saving
 * takes a moment between making an id and publishing, and clocks differ.
 */
export const GAP_SLACK_MS = 5000

/** Users or messages per script call: Redis takes any number, but spreading them into arguments must not overflow the stack. */
const CHUNK = 1000
/** Messages kept to be routed again after their routing failed; beyond this, every node resyncs instead. */
const MAX_FAILED_ROUTES = 10_000
/** How long shutdown waits for Redis to take this node out before it gives up (Redis down). */
const CLOSE_TIMEOUT_MS = 2000

/** The prefix as a literal in a SCAN pattern: its own glob characters must not match other keys. */
function globEscape (text: string): string {
  return text.replace(/[*?[\]\\]/g, '\\$&')
}

function chunks<T> (items: readonly T[], size: number): T[][] {
  const result: T[][] = []
  for (let start = 0; start < items.length; start += size) result.push(items.slice(start, start + size))
  return result
}

/** Presence and message routing between nodes through Redis; resolves once subscribed and registered. */
export async function createRedisCluster ({ redis, subscriber, prefix, nodeId, ttlMs, observer, onError }: RedisClusterOptions): Promise<Cluster> {
  const node = String(nodeId)
  const heartbeatMs = Math.max(100, Math.floor(ttlMs / 3))
  // Long enough that a live node always renews it first.
  const keepMs = Math.max(ttlMs * 4, 60_000)
  const busChannel = `${prefix}cluster:bus:${node}`
  const eventsChannel = `${prefix}cluster:events`
  // Joins and leaves re-sent out of order would leave Redis wrong: the next heartbeat puts it right.
  const presenceScript = luaScript(redis, PRESENCE, () => { needsSync({ routingLost: true }) })
  const heartbeatScript = luaScript(redis, HEARTBEAT)
  const routeScript = luaScript(redis, ROUTE)
  const closeScript = luaScript(redis, CLOSE)

  let events: ClusterEvents | undefined
  /** Users with a connection here, as this node knows them: Redis is made to agree. */
  const localUsers = new Set<number>()
  let liveNodes = 1
  let closed = false

  // --- Presence: joins and leaves of one tick go in one script call, in order (connect storms, mass disconnects).
  let presenceOps: ScriptArgument[] = []
  let presenceWaiters: Array<{ resolve: () => void, reject: (error: unknown) => void }> = []
  let presenceFlush: Promise<void> | null = null
  /** Presence ops queued so far, and those not settled yet: a heartbeat compares counts only when none ran meanwhile. */
  let presenceIssued = 0
  let presencePending = 0

  function flushPresence (): Promise<void> {
    presenceFlush ??= new Promise<void>((resolve) => setImmediate(resolve)).then(async () => {
      const ops = presenceOps
      const waiters = presenceWaiters
      presenceOps = []
      presenceWaiters = []
      presenceFlush = null
      try {
        const answers = await Promise.all(chunks(ops, 2 * CHUNK).map((part) => presenceScript(prefix, node, keepMs, ttlMs, ...part)))
        for (const waiter of waiters) waiter.resolve()
        // Reaped (or forgotten) since the last heartbeat, and this call registered the node again:
        // the heartbeat would not notice, so the users it had go back in now.
        if (answers.includes(0)) needsSync({ routingLost: true })
      } catch (error) {
        for (const waiter of waiters) waiter.reject(error)
        // Redis may or may not have applied them: the next heartbeat makes it agree.
        needsSync({ routingLost: ops.includes('j') })
      } finally {
        presencePending -= waiters.length
      }
    })
    return presenceFlush
  }

  function queuePresence (op: 'j' | 'l', userId: number): Promise<void> {
    presenceOps.push(op, userId)
    presenceIssued++
    presencePending++
    const done = new Promise<void>((resolve, reject) => presenceWaiters.push({ resolve, reject }))
    flushPresence().catch(() => {})
    return done
  }

  // --- Outgoing messages: those routed in one tick go in one script call.
  let outgoing: ScriptArgument[] = []
  let outgoingMessages: RoutedMessage[] = []
  let outgoingScheduled = false
  /** Script calls whose routing failed for good, in order, routed again once Redis answers. */
  const failedRoutes: Array<{ args: ScriptArgument[], messages: RoutedMessage[] }> = []
  let failedMessages = 0
  /** The oldest message dropped from a full `failedRoutes`: every node resyncs from it instead. */
  let unroutedFrom: string | null = null
  /** Ended sessions whose announcement failed, announced again at the next heartbeat. */
  let unannounced: string[] = []

  function flushOutgoing (): void {
    outgoingScheduled = false
    if (outgoing.length === 0) return
    const batch = outgoing
    const sent = chunks(outgoingMessages, CHUNK)
    outgoing = []
    outgoingMessages = []
    chunks(batch, 3 * CHUNK).forEach((args, index) => {
      const messages = sent[index] ?? []
      routeScript(prefix, node, ...args)
        .then(() => observer?.published(messages.length))
        .catch((error: unknown) => {
          // ioredis resends commands cut off by a reconnect; these failed for good.
          observer?.error()
          onError(error, 'routing messages to other nodes failed; they are routed again once Redis answers')
          keepFailedRoute(args, messages)
        })
    })
  }

  function keepFailedRoute (args: ScriptArgument[], messages: RoutedMessage[]): void {
    failedRoutes.push({ args, messages })
    failedMessages += messages.length
    while (failedMessages > MAX_FAILED_ROUTES) {
      const dropped = failedRoutes.shift()
      if (dropped === undefined) break
      failedMessages -= dropped.messages.length
      for (const { id } of dropped.messages) if (unroutedFrom === null || compareIds(id, unroutedFrom) < 0) unroutedFrom = id
    }
  }

  /** Routes again what failed, oldest first; the chat then makes sure no cursor is past those messages. */
  async function rerouteFailed (): Promise<void> {
    for (let next = failedRoutes[0]; next !== undefined; next = failedRoutes[0]) {
      await routeScript(prefix, node, ...next.args)
      failedRoutes.shift()
      failedMessages -= next.messages.length
      observer?.published(next.messages.length)
      events?.rerouted(next.messages)
    }
  }

  // --- The gap: while messages meant for this node may be getting lost, its sockets are paused.
  let busUp = true
  /** When the subscriber last proved to work (a message or a PING answer). */
  let lastHealthyAt = Date.now()
  /** When Redis last confirmed this node's users: routing here may have stopped after that. */
  let lastRegisteredAt = Date.now()
  /** Since when (ms) messages for this node may be lost; null when none are. */
  let gapStartedAt: number | null = null
  let syncNeeded = false
  let routingLost = false
  let syncing = false

  function gapFrom (): string {
    return firstIdAt((gapStartedAt ?? lastHealthyAt) - GAP_SLACK_MS)
  }

  /** Messages published for this node since `since` (ms) may be lost: the chat pauses. */
  function interrupt (since: number): void {
    gapStartedAt = Math.min(gapStartedAt ?? since, since)
    events?.interrupted(gapFrom())
  }

  /** Every cause of the gap is over: the chat resyncs from its start. */
  function restore (): void {
    if (gapStartedAt === null || !busUp || routingLost || syncing || closed) return
    const from = gapFrom()
    gapStartedAt = null
    events?.restored(from)
  }

  function needsSync ({ routingLost: lost }: { routingLost: boolean }): void {
    syncNeeded = true
    if (lost && !routingLost && localUsers.size > 0) {
      routingLost = true
      interrupt(lastRegisteredAt)
    }
  }

  /** Makes Redis hold exactly this node's users (staged, then swapped in by one script). */
  async function sync (): Promise<void> {
    if (syncing || closed) return
    syncing = true
    try {
      const staged = `${prefix}cluster:node:${node}:sync`
      const transaction = redis.multi().del(staged)
      for (const part of chunks([...localUsers], CHUNK)) transaction.sadd(staged, ...part)
      transaction.eval(SYNC, 0, prefix, node, keepMs, ttlMs)
      const results = await transaction.exec()
      const failed = results?.find(([error]) => error !== null)
      if (results === null || failed !== undefined) throw failed?.[0] ?? new Error('the sync transaction was aborted')
      syncNeeded = false
      routingLost = false
      lastRegisteredAt = Date.now()
    } finally {
      syncing = false
    }
  }

  function busLost (): void {
    if (!busUp || closed) return
    busUp = false
    observer?.state(false)
    interrupt(lastHealthyAt)
  }

  /**
   * The subscriber is back. Once its subscriptions are confirmed (a PING
   * answers after them) and Redis holds exactly this node's users again, the
   * chat resyncs. Redis may have restarted, perhaps from an older snapshot
   * whose user sets look right by count alone, so the users are always synced.
   */
  function busBack (): void {
    if (busUp || closed) return
    subscriber.ping().then(async () => {
      if (busUp || closed) return
      busUp = true
      lastHealthyAt = Date.now()
      observer?.state(true)
      needsSync({ routingLost: true })
      await heartbeat()
    }).catch((error: unknown) => onError(error, 'checking the cluster after the subscriber came back failed'))
  }

  function handleEvent (line: string): void {
    const [kind, user, detail] = line.split(':', 3)
    if (kind === 'p') {
      events?.presence(Number(user), detail === '1')
    } else if (kind === 'r' && detail !== undefined) {
      events?.sessionRevoked(Number(user), detail)
    } else if (kind === 'g' && user !== undefined) {
      // A node could not route messages from this id on: every node replays them from the store.
      interrupt(idTime(user))
      restore()
    }
  }

  subscriber.on('message', (channel: string, payload: string) => {
    lastHealthyAt = Date.now()
    const lines = payload.split('\n')
    if (channel === busChannel) {
      observer?.received(lines.length)
      for (const line of lines) {
        let message: EncodedMessage
        try {
          message = decodeMessageFrame(line)
        } catch (error) {
          observer?.error()
          onError(error, 'a message from another node could not be read')
          continue
        }
        events?.message(message)
      }
    } else if (channel === eventsChannel) {
      for (const line of lines) handleEvent(line)
    }
  })
  subscriber.on('close', busLost)
  subscriber.on('ready', busBack)
  // Errors come with every failed reconnect: counted, and logged by the caller.
  subscriber.on('error', (error: unknown) => {
    observer?.error()
    onError(error, 'the bus subscriber failed')
  })

  /**
   * Renews this node, reaps dead ones, and checks that Redis holds this
   * node's users: all of them (after a restart or a reap it holds none) and
   * no others (after a leave that failed). Then announces what failed to go
   * out meanwhile, and ends a gap whose causes are over.
   */
  async function heartbeat (): Promise<void> {
    const issued = presenceIssued
    const expected = localUsers.size
    const [known, nodes, registered] = await heartbeatScript(prefix, node, keepMs, ttlMs) as [number, number, number]
    liveNodes = nodes
    // Counts only compare when no join or leave ran meanwhile.
    const settled = presencePending === 0 && issued === presenceIssued
    if (expected > 0 && (known === 0 || (settled && registered < expected))) needsSync({ routingLost: true })
    else if (settled && registered > expected) needsSync({ routingLost: false })
    // Only a check that ran and matched says routing here still worked now.
    else if (settled && known === 1 && !syncNeeded) lastRegisteredAt = Date.now()
    if (syncNeeded) await sync()
    await rerouteFailed()
    if (unroutedFrom !== null) {
      const from = unroutedFrom
      unroutedFrom = null
      unannounced.push(`g:${from}`)
    }
    if (unannounced.length > 0) {
      const lines = unannounced
      unannounced = []
      await redis.publish(eventsChannel, lines.join('\n')).catch((error: unknown) => {
        unannounced.push(...lines)
        throw error
      })
    }
    restore()
  }

  /** Pings the subscriber so a silently dead connection is noticed, not just a closed one. */
  async function checkSubscriber (): Promise<void> {
    if (!busUp) return
    let answered: boolean
    try {
      await withTimeout(subscriber.ping(), heartbeatMs, 'subscriber PING')
      answered = true
    } catch {
      answered = false
    }
    if (answered) {
      lastHealthyAt = Date.now()
      return
    }
    busLost()
    // Drop it and connect again; `ready` then resyncs.
    subscriber.disconnect(true)
  }

  // A node that held this id before and died may have left users behind under it.
  await closeScript(prefix, node)
  // A cluster that died whole left every key behind: with no live node, clear them.
  // Redis's clock, as the scores are: this node's may run ahead, and wipe a live cluster.
  const [seconds, micros] = (await redis.time()).map(Number) as [number, number]
  if (await redis.zcount(`${prefix}cluster:nodes`, seconds * 1000 + Math.floor(micros / 1000), '+inf') === 0) {
    const stale: string[] = []
    let cursor = '0'
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${globEscape(prefix)}cluster:*`, 'COUNT', 1000)
      stale.push(...keys)
      cursor = next
    } while (cursor !== '0')
    for (const part of chunks(stale, CHUNK)) await redis.unlink(...part)
  }
  try {
    await subscriber.subscribe(busChannel, eventsChannel)
    await heartbeat()
  } catch (error) {
    // The subscriber is ours: a node that failed to start must not leave it reconnecting.
    subscriber.removeAllListeners()
    subscriber.disconnect()
    throw error
  }
  const beating = setInterval(() => {
    heartbeat().catch((error: unknown) => {
      observer?.error()
      onError(error, 'cluster heartbeat failed')
    })
    checkSubscriber().catch((error: unknown) => onError(error, 'pinging the bus subscriber failed'))
  }, heartbeatMs)
  beating.unref()

  return {
    backend: 'redis',

    attach (listener) {
      events = listener
    },

    async join (userId) {
      if (closed) throw new Error('this node has left the cluster')
      localUsers.add(userId)
      await queuePresence('j', userId)
    },

    leave (userId) {
      if (closed) return
      localUsers.delete(userId)
      queuePresence('l', userId).catch((error: unknown) => onError(error, 'leaving the online list failed; the next heartbeat retries'))
    },

    publish (message) {
      outgoing.push(message.to, message.from, message.json)
      outgoingMessages.push({ id: message.id, from: message.from, to: message.to })
      if (outgoingScheduled) return
      outgoingScheduled = true
      setImmediate(flushOutgoing)
    },

    revokeSession (userId, sessionId) {
      // At once here, whatever the bus does; every node (this one too, harmlessly) hears it.
      events?.sessionRevoked(userId, sessionId)
      const line = `r:${userId}:${sessionId}`
      redis.publish(eventsChannel, line).catch((error: unknown) => {
        unannounced.push(line)
        onError(error, 'announcing an ended session failed; the next heartbeat retries')
      })
    },

    async isOnline (userId) {
      return await redis.zscore(`${prefix}cluster:online`, userId) !== null
    },

    async onlineStates (userIds) {
      if (userIds.length === 0) return []
      const scores = await redis.zmscore(`${prefix}cluster:online`, ...userIds)
      return scores.map((score) => score !== null)
    },

    async onlineUsers ({ after, limit }) {
      const key = `${prefix}cluster:online`
      const [count, page] = await Promise.all([
        redis.zcard(key),
        redis.zrangebyscore(key, `(${after}`, '+inf', 'LIMIT', 0, limit)
      ])
      return { count, userIds: page.map(Number) }
    },

    nodeCount: () => liveNodes,

    async check () {
      if (!busUp) throw new Error('the bus subscriber is disconnected')
      if (gapStartedAt !== null) throw new Error('messages from other nodes are paused until this node has resynced')
      await redis.ping()
    },

    async close () {
      if (closed) return
      closed = true
      clearInterval(beating)
      flushOutgoing()
      subscriber.removeAllListeners('close')
      try {
        // A join still queued goes out before the node leaves, and so do ended sessions not yet
        // announced; Redis may answer none of it.
        const leaving = Promise.resolve(presenceFlush).then(async () => {
          if (unannounced.length > 0) await redis.publish(eventsChannel, unannounced.join('\n'))
          await closeScript(prefix, node)
        })
        await withTimeout(leaving, CLOSE_TIMEOUT_MS, 'leaving the cluster')
      } finally {
        localUsers.clear()
        await withTimeout(subscriber.quit(), CLOSE_TIMEOUT_MS, 'closing the subscriber').catch(() => subscriber.disconnect())
      }
    }
  }
}
