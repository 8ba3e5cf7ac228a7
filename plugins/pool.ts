import { randomInt } from 'node:crypto'
import fp from 'fastify-plugin'
import { createBatcher } from '../src/batcher.js'
import { LOCAL_RECENT_WINDOW_MS, createChat, type Chat } from '../src/chat.js'
import { createLocalCluster, type Cluster } from '../src/cluster.js'
import { createConnectionRegistry } from '../src/connections.js'
import { createIdGenerator, MAX_NODE_ID } from '../src/ids.js'
import { ConfigError, loggable } from '../src/errors.js'
import { CLOSE_CODES } from '../src/protocol.js'
import type { SaveOutcome, StoredMessage } from '../src/stores/messages-memory.js'
import { createRedisCluster, GAP_SLACK_MS } from '../src/stores/cluster-redis.js'
import { leaseNodeId } from '../src/stores/node-ids-redis.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The live connections of this node, the router between them, and the cluster it belongs to. */
    switchboardChat: Chat
  }
}

/** Rows per INSERT at most; bigger bursts are split. */
const MAX_BATCH = 1000
/**
 * Text per INSERT at most, in UTF-16 units (up to 3 bytes of UTF-8 each):
 * well under MariaDB's default 16 MiB max_allowed_packet.
 */
const MAX_BATCH_TEXT = 2_000_000
/** How messages are grouped into one save (the store benchmark groups them the same way). */
export const MESSAGE_BATCHING = {
  maxBatch: MAX_BATCH,
  maxWeight: MAX_BATCH_TEXT,
  weigh: (message: StoredMessage): number => message.text.length + (message.ref?.length ?? 0)
}
/** How long shutdown waits for sockets to finish the closing handshake before it drops them. */
const CLOSE_WAIT_MS = 3000
/** Known user ids remembered, so messages to offline users rarely ask the database. */
const KNOWN_USERS_CAP = 100_000
/** A node id lease lasts this long unless renewed, which happens three times as often. */
const NODE_ID_LEASE_MS = 60_000

export default fp(async function poolPlugin (fastify) {
  const config = fastify.switchboardConfig
  const { users, messages } = fastify.switchboardDb
  // With Redis, several nodes may run: each leases its own node id, so message ids never collide.
  const { redis, keyPrefix } = fastify.switchboardShared
  if (redis !== null && fastify.switchboardDb.backend === 'memory') {
    // Nodes sharing Redis but each keeping its own users would hand out the same ids to different people.
    throw new ConfigError('MYSQL_URL (option "mysqlUrl", or a "mysql" pool) is required when Redis is configured: every node must share the users and messages')
  }
  const lease = redis === null ? null : await leaseNodeId(redis, { prefix: keyPrefix, ttlMs: NODE_ID_LEASE_MS })
  const ids = createIdGenerator({ nodeId: lease?.nodeId ?? randomInt(MAX_NODE_ID + 1) })
  /** Another node holds this node's id now (after a stall longer than the lease): not fit to serve. */
  let leaseLost = false
  if (lease !== null) {
    const renewing = setInterval(() => {
      lease.renew()
        .then((held) => {
          if (held) return
          leaseLost = true
          fastify.log.error({ nodeId: lease.nodeId }, 'node id lease lost: message ids may collide with another node\'s; /ready fails until this node restarts')
        })
        .catch((error: unknown) => fastify.log.warn({ err: error }, 'renewing the node id lease failed'))
    }, NODE_ID_LEASE_MS / 3)
    renewing.unref()
    fastify.addHook('onClose', async () => {
      clearInterval(renewing)
      await lease.release()
    })
  }
  const batcher = createBatcher<StoredMessage, SaveOutcome>({ flush: messages.save, ...MESSAGE_BATCHING })
  // Accounts are never deleted, so a user once found stays found.
  const knownUsers = new Set<number>()

  async function userExists (userId: number): Promise<boolean> {
    if (knownUsers.has(userId)) return true
    const found = (await users.findById(userId)) !== null
    if (found && knownUsers.size < KNOWN_USERS_CAP) knownUsers.add(userId)
    return found
  }

  const metrics = fastify.switchboardMetrics
  const ttlMs = config.presenceTtl * 1000
  const link = redis === null || lease === null
    ? createLocalCluster()
    : await createRedisCluster({
      redis,
      // Its SUBSCRIBE is sent before it has connected: it queues until then.
      subscriber: redis.duplicate({ connectionName: 'switchboard-bus', enableAutoPipelining: false, enableOfflineQueue: true }),
      prefix: keyPrefix,
      nodeId: lease.nodeId,
      ttlMs,
      observer: {
        published: metrics.busPublished,
        received: metrics.busReceived,
        error: metrics.busError,
        state: metrics.busState
      },
      onError: (error, context) => fastify.log.warn({ err: loggable(error) }, context)
    })
  const cluster: Cluster = {
    ...link,
    check: async () => {
      if (leaseLost) throw new Error('another node holds this node\'s id')
      await link.check()
    }
  }

  const loggedErrors = new WeakSet<object>()
  const registry = createConnectionRegistry()
  const chat = createChat({
    registry,
    cluster,
    // A socket must still know what it was sent when a bus outage is noticed: two heartbeats and the slack after it.
    recentWindowMs: lease === null ? LOCAL_RECENT_WINDOW_MS : 2 * ttlMs / 3 + 2 * GAP_SLACK_MS + LOCAL_RECENT_WINDOW_MS,
    observer: { accepted: metrics.messageAccepted, delivered: metrics.messageDelivered },
    userExists,
    verifyAccessToken: fastify.switchboardAuth.verifyAccessToken,
    isSessionLive: fastify.switchboardAuth.isSessionLive,
    nextMessageId: ids.next,
    saveMessage: batcher.add,
    messages,
    limits: {
      messageMaxChars: config.messageMaxChars,
      messageRate: config.wsMessageRate,
      messageBurst: config.wsMessageBurst,
      maxFrameBytes: config.wsMaxPayload,
      maxBufferedBytes: config.wsMaxBuffered
    },
    onError: (error) => {
      // A failed batch fails every sender in it with one error: log it once.
      if (typeof error === 'object' && error !== null) {
        if (loggedErrors.has(error)) return
        loggedErrors.add(error)
      }
      fastify.log.error({ err: loggable(error) }, 'websocket frame failed')
    }
  })
  fastify.decorate('switchboardChat', chat)
  // Browsers answer pings by themselves; a peer that stops answering is dropped after two.
  const pinging = setInterval(chat.heartbeat, config.wsPingInterval * 1000)
  pinging.unref()
  fastify.addHook('onClose', async () => { clearInterval(pinging) })
  metrics.observe({ connections: () => registry.connectionCount, onlineUsers: () => registry.userCount })
  // Logout or a reused refresh token ends the session's sockets on every node.
  fastify.switchboardAuth.onSessionRevoked(cluster.revokeSession)

  // Also covers a host app's @fastify/websocket, whose own preClose does not know our codes.
  // Messages being stored and cursors being written finish before the stores close.
  fastify.addHook('preClose', async () => {
    registry.closeAll(CLOSE_CODES.goingAway, 'server shutting down')
    await allClosed(CLOSE_WAIT_MS)
    // A peer that never answers the close would hold shutdown for ws's 30 s close timeout.
    registry.terminateAll()
    await allClosed(CLOSE_WAIT_MS)
    await batcher.drain()
    await chat.drain()
    // The node's users go offline everywhere at once, and its keys leave Redis.
    // With Redis unreachable it gives up after a moment; the rest of shutdown goes on.
    await cluster.close().catch((error: unknown) => fastify.log.warn({ err: loggable(error) }, 'leaving the cluster failed; live nodes will reap this one'))
  })

  async function allClosed (withinMs: number): Promise<void> {
    const deadline = Date.now() + withinMs
    while (registry.connectionCount > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10))
  }
}, { fastify: '5.x', name: 'switchboard-pool', dependencies: ['switchboard-config', 'switchboard-db', 'switchboard-redis', 'switchboard-auth', 'switchboard-metrics'] })
