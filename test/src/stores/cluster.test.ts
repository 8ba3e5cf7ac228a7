import { randomBytes } from 'node:crypto'
import { setImmediate as nextTurn } from 'node:timers/promises'
import { Redis, type ChainableCommander } from 'ioredis'
import { test, type Test } from 'tap'
import { createLocalCluster, type Cluster, type RoutedMessage } from '../../../src/cluster.js'
import { compareIds, createIdGenerator, firstIdAt } from '../../../src/ids.js'
import { encodeMessage, type EncodedMessage } from '../../../src/protocol.js'
import { createRedisCluster } from '../../../src/stores/cluster-redis.js'
import { freshRedisPrefix, realBackends, scanKeys, tcpRelay, until } from '../../helper.js'

/** What a node's chat was told, in order. */
type ClusterEvent =
  | { type: 'message', message: EncodedMessage }
  | { type: 'presence', userId: number, online: boolean }
  | { type: 'sessionRevoked', userId: number, sessionId: string }
  /** `check` is what `cluster.check()` said the moment the outage was reported. */
  | { type: 'interrupted', gapFrom: string, check: Promise<void> }
  | { type: 'restored', gapFrom: string }
  | { type: 'rerouted', messages: readonly RoutedMessage[] }

type EventOf<K extends ClusterEvent['type']> = Extract<ClusterEvent, { type: K }>

/** How long a test waits for an event another node (through Redis) causes. */
const EVENT_WAIT_MS = 5000

/** One node of the cluster under test, and what it heard. */
interface TestNode {
  cluster: Cluster
  events: ClusterEvent[]
  /** The first event of `type` (from the start) that `match` accepts; waits for it. */
  waitFor<K extends ClusterEvent['type']> (type: K, match?: (event: EventOf<K>) => boolean, timeoutMs?: number): Promise<EventOf<K>>
  /** Events of `type` seen so far that `match` accepts. */
  seen<K extends ClusterEvent['type']> (type: K, match?: (event: EventOf<K>) => boolean): Array<EventOf<K>>
}

/** Attaches to `cluster` and records what it tells its chat. */
function observe (cluster: Cluster): TestNode {
  const events: ClusterEvent[] = []
  const watchers = new Set<(event: ClusterEvent) => void>()
  const push = (event: ClusterEvent): void => {
    events.push(event)
    for (const watcher of [...watchers]) watcher(event)
  }
  cluster.attach({
    message: (message) => push({ type: 'message', message }),
    presence: (userId, online) => push({ type: 'presence', userId, online }),
    sessionRevoked: (userId, sessionId) => push({ type: 'sessionRevoked', userId, sessionId }),
    interrupted: (gapFrom) => {
      // Asked at once: the outage is reported before anything could have repaired it.
      const check = cluster.check()
      check.catch(() => {})
      push({ type: 'interrupted', gapFrom, check })
    },
    restored: (gapFrom) => push({ type: 'restored', gapFrom }),
    rerouted: (messages) => push({ type: 'rerouted', messages })
  })

  const node: TestNode = {
    cluster,
    events,
    seen: (type, match = () => true) => events.filter((event): event is EventOf<typeof type> => event.type === type && match(event as EventOf<typeof type>)),
    waitFor: (type, match = () => true, timeoutMs = EVENT_WAIT_MS) => new Promise((resolve, reject) => {
      const [found] = node.seen(type, match)
      if (found !== undefined) return resolve(found)
      const timer = setTimeout(() => {
        watchers.delete(check)
        // The last ones only: a test may have heard tens of thousands.
        reject(new Error(`no matching "${type}" event within ${timeoutMs} ms (last events: ${JSON.stringify(events.slice(-50))})`))
      }, timeoutMs)
      // Only the new event is looked at: rescanning them all for each would take quadratic time.
      function check (event: ClusterEvent): void {
        if (event.type !== type || !match(event as EventOf<typeof type>)) return
        clearTimeout(timer)
        watchers.delete(check)
        resolve(event as EventOf<typeof type>)
      }
      watchers.add(check)
    })
  }
  return node
}

const presenceOf = (userId: number, online: boolean) => (event: EventOf<'presence'>) => event.userId === userId && event.online === online
const messageWithId = (id: string) => (event: EventOf<'message'>) => event.message.id === id

let messageCounter = 0

/** A message as the chat hands it to the cluster once stored (ids increase, like real ones). */
function chatMessage (from: number, to: number, text = `message ${messageCounter + 1}`): EncodedMessage {
  const id = (BigInt(firstIdAt(Date.now())) + BigInt(++messageCounter)).toString()
  return encodeMessage({ id, from, to, text, sentAt: new Date().toISOString() })
}

/** The nodes of one cluster, made for one test. */
interface ClusterHarness {
  /** A node of the cluster; with several nodes each call adds one (another node id, same prefix). */
  node (): Promise<TestNode>
  /** The keys the cluster keeps in Redis (none without Redis). */
  keys (): Promise<string[]>
}

/** What every Cluster must do, whatever carries it. */
function clusterContract (t: Test, { multiNode, makeHarness }: { multiNode: boolean, makeHarness: (t: Test) => Promise<ClusterHarness> }): void {
  t.test('join and leave decide who is online: isOnline, onlineStates, and pages of onlineUsers in id order', async (t) => {
    const { node } = await makeHarness(t)
    const { cluster, waitFor } = await node()
    for (const userId of [30, 5, 12, 7]) await cluster.join(userId)
    cluster.leave(7)
    await waitFor('presence', presenceOf(7, false))

    t.equal(await cluster.isOnline(5), true)
    t.equal(await cluster.isOnline(7), false, 'left')
    t.equal(await cluster.isOnline(99), false, 'never joined')
    t.strictSame(await cluster.onlineStates([12, 7, 30, 99]), [true, false, true, false], 'states in the order asked')
    t.strictSame(await cluster.onlineStates([]), [])

    t.strictSame(await cluster.onlineUsers({ after: 0, limit: 10 }), { count: 3, userIds: [5, 12, 30] }, 'ascending ids, whatever the join order')
    t.strictSame(await cluster.onlineUsers({ after: 0, limit: 2 }), { count: 3, userIds: [5, 12] }, 'limit')
    t.strictSame(await cluster.onlineUsers({ after: 12, limit: 2 }), { count: 3, userIds: [30] }, 'after is exclusive')
    t.strictSame(await cluster.onlineUsers({ after: 6, limit: 10 }), { count: 3, userIds: [12, 30] }, 'after need not be online')
    t.strictSame(await cluster.onlineUsers({ after: 30, limit: 10 }), { count: 3, userIds: [] }, 'past the end')
  })

  t.test('a user comes online on the first join and goes offline on the leave; every node hears it', async (t) => {
    const { node } = await makeHarness(t)
    const nodes = [await node(), ...(multiNode ? [await node()] : [])]
    const [first] = nodes as [TestNode]

    await first.cluster.join(1)
    for (const [index, { cluster, waitFor }] of nodes.entries()) {
      await waitFor('presence', presenceOf(1, true))
      t.equal(await cluster.isOnline(1), true, `node ${index + 1} heard user 1 come online`)
    }
    first.cluster.leave(1)
    for (const [index, { cluster, waitFor, seen }] of nodes.entries()) {
      await waitFor('presence', presenceOf(1, false))
      t.strictSame(seen('presence').map(({ userId, online }) => [userId, online]), [[1, true], [1, false]], `node ${index + 1}: online once, then offline`)
      t.equal(await cluster.isOnline(1), false, `node ${index + 1} has user 1 offline`)
    }
  })

  t.test('revokeSession reaches this node\'s listener and every other node\'s', async (t) => {
    const { node } = await makeHarness(t)
    const nodes = [await node(), ...(multiNode ? [await node()] : [])]
    const [first] = nodes as [TestNode]

    first.cluster.revokeSession(3, 'f00dfeed')
    for (const [index, { waitFor }] of nodes.entries()) {
      const event = await waitFor('sessionRevoked')
      t.strictSame(event, { type: 'sessionRevoked', userId: 3, sessionId: 'f00dfeed' }, `node ${index + 1}`)
    }
  })

  t.test('close takes the node\'s users offline and leaves nothing behind', async (t) => {
    const { node, keys } = await makeHarness(t)
    const leaving = await node()
    const staying = multiNode ? await node() : null
    await leaving.cluster.join(1)
    await leaving.cluster.join(2)
    await staying?.cluster.join(2)

    await leaving.cluster.close()
    t.equal(await leaving.cluster.isOnline(1), false, 'offline at once, as the closed node sees it')
    if (staying !== null) {
      await staying.waitFor('presence', presenceOf(1, false))
      t.equal(await staying.cluster.isOnline(1), false, 'and as the other node sees it')
      t.equal(await staying.cluster.isOnline(2), true, 'a user also on another node stays online')
      t.strictSame(await staying.cluster.onlineUsers({ after: 0, limit: 10 }), { count: 1, userIds: [2] })
      staying.cluster.leave(2)
      await staying.waitFor('presence', presenceOf(2, false))
      t.equal(staying.seen('presence', presenceOf(2, false)).length, 1, 'user 2 went offline once: when they left the last node')
      await staying.cluster.close()
    }
    t.strictSame(await keys(), [], 'no key is left once every node closed')
  })

  t.test('publish hands a message to the nodes of its recipient and sender only, never back to the publisher', async (t) => {
    const { node } = await makeHarness(t)
    const publisher = await node()
    if (!multiNode) {
      await publisher.cluster.join(2)
      publisher.cluster.publish(chatMessage(1, 2))
      await nextTurn()
      t.strictSame(publisher.seen('message'), [], 'a single node has no one to hand it to')
      return
    }
    const [recipientNode, senderNode, bystander] = [await node(), await node(), await node()]
    const [sender, recipient, bystanderUser, publisherUser] = [11, 22, 33, 44]
    await recipientNode.cluster.join(recipient)
    await senderNode.cluster.join(sender)
    await bystander.cluster.join(bystanderUser)
    await publisher.cluster.join(publisherUser)

    // A newline in the text must not split the frame: the bus separates frames by newlines.
    const burst = [chatMessage(sender, recipient, 'first\nline two'), chatMessage(sender, recipient), chatMessage(recipient, sender)]
    for (const message of burst) publisher.cluster.publish(message)
    for (const [name, target] of Object.entries({ recipientNode, senderNode })) {
      await target.waitFor('message', messageWithId(burst[2]?.id ?? ''))
      t.strictSame(target.seen('message').map(({ message }) => message), burst, `the ${name} got all three, whole and in order`)
    }

    // One PUBLISH per node and per batch, in order: a node that got a later message would have got an earlier one first.
    const fence = chatMessage(publisherUser, bystanderUser)
    publisher.cluster.publish(fence)
    await bystander.waitFor('message')
    t.strictSame(bystander.seen('message').map(({ message }) => message), [fence], 'a node where neither user is got nothing else')

    const reply = chatMessage(recipient, publisherUser)
    recipientNode.cluster.publish(reply)
    await publisher.waitFor('message')
    t.strictSame(publisher.seen('message').map(({ message }) => message), [reply], 'the publisher never got its own messages back')

    // Both users on one node, or a message to oneself: that node gets it once.
    await recipientNode.cluster.join(sender)
    const once = [chatMessage(sender, recipient), chatMessage(recipient, recipient)]
    for (const message of once) publisher.cluster.publish(message)
    const after = chatMessage(publisherUser, recipient)
    publisher.cluster.publish(after)
    await recipientNode.waitFor('message', messageWithId(after.id))
    t.strictSame(recipientNode.seen('message').slice(3).map(({ message }) => message), [...once, after], 'one copy each')
  })

  if (!multiNode) return

  t.test('a user on two nodes stays online until they left both', async (t) => {
    const { node } = await makeHarness(t)
    const [first, second] = [await node(), await node()]
    const user = 5
    const fenceUser = 6
    await first.cluster.join(user)
    await second.cluster.join(user)
    first.cluster.leave(user)
    // Presence changes are applied and announced in order: once the fence user's join is heard, the leave was applied.
    await first.cluster.join(fenceUser)
    await second.waitFor('presence', presenceOf(fenceUser, true))
    t.strictSame(second.seen('presence', (event) => event.userId === user), [{ type: 'presence', userId: user, online: true }], 'online once, and not offline after leaving one node')
    t.equal(await first.cluster.isOnline(user), true)
    t.strictSame(await second.cluster.onlineUsers({ after: 0, limit: 10 }), { count: 2, userIds: [user, fenceUser] })

    second.cluster.leave(user)
    await first.waitFor('presence', presenceOf(user, false))
    t.equal(await first.cluster.isOnline(user), false, 'offline once they left the last node')
    t.equal(await second.cluster.isOnline(user), false)
  })
}

test('local cluster', async (t) => {
  clusterContract(t, {
    multiNode: false,
    async makeHarness (t) {
      // One node: every call gives the same one.
      const local = observe(createLocalCluster())
      t.teardown(() => local.cluster.close())
      return { node: async () => local, keys: async () => [] }
    }
  })
})

interface RedisNode extends TestNode {
  /** The node's command client (the cluster does not close it). */
  redis: Redis
  /** The node's subscriber (the cluster closes it), and the connection name it has in CLIENT LIST. */
  subscriber: Redis
  subscriberName: string
  nodeId: number
  /** What the node reported through `onError`. */
  errors: Array<{ error: unknown, context: string }>
}

/** Makes nodes on one Redis prefix, each with clients of its own; closed when `t` ends. */
function redisNodes (t: Test, redisUrl: string, prefix: string) {
  let nextNodeId = 1
  return async ({ ttlMs = 3000, nodeId = nextNodeId++ }: { ttlMs?: number, nodeId?: number } = {}): Promise<RedisNode> => {
    const redis = new Redis(redisUrl)
    const subscriberName = `cluster-test-${randomBytes(6).toString('hex')}`
    const subscriber = redis.duplicate({ connectionName: subscriberName })
    const errors: RedisNode['errors'] = []
    const cluster = await createRedisCluster({ redis, subscriber, prefix, nodeId, ttlMs, onError: (error, context) => { errors.push({ error, context }) } })
    t.teardown(async () => {
      // A node a test disconnected cannot leave cleanly; the prefix is cleaned up anyway.
      await cluster.close().catch(() => {})
      redis.disconnect()
    })
    return { ...observe(cluster), redis, subscriber, subscriberName, nodeId, errors }
  }
}

/** The CLIENT LIST id of the connection named `name`, or null. */
async function clientId (redis: Redis, name: string): Promise<string | null> {
  const list = String(await redis.client('LIST'))
  for (const line of list.split('\n')) {
    const fields = new Map(line.trim().split(' ').map((field) => field.split('=', 2) as [string, string]))
    if (fields.get('name') === name) return fields.get('id') ?? null
  }
  return null
}

/**
 * Makes the next call of `target[method]` whose arguments `match` fail, as a command cut off
 * by an outage fails once ioredis gives up on it; nothing reaches Redis. Resolves when it failed.
 */
function failOnce<K extends string> (target: Record<K, (...args: never[]) => unknown>, method: K, match: (args: unknown[]) => boolean = () => true): Promise<void> {
  const original = target[method].bind(target) as (...args: unknown[]) => unknown
  let armed = true
  return new Promise((resolve) => {
    Object.assign(target, {
      [method]: (...args: unknown[]) => {
        if (!armed || !match(args)) return original(...args)
        armed = false
        resolve()
        return Promise.reject(new Error(`${method} failed (a simulated outage)`))
      }
    })
  })
}

/** Makes the EXEC of the next transaction (MULTI) on `redis` fail, as failOnce does. Resolves when it failed. */
function failNextTransaction (redis: Redis): Promise<void> {
  const multi = redis.multi.bind(redis) as () => ChainableCommander
  let armed = true
  return new Promise((resolve) => {
    Object.assign(redis, {
      multi: () => {
        const transaction = multi()
        if (armed) {
          armed = false
          failOnce(transaction, 'exec').then(resolve, () => {})
        }
        return transaction
      }
    })
  })
}

test('Redis cluster', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const { redisUrl } = backends
  const admin = new Redis(redisUrl)
  t.teardown(() => admin.quit())

  t.test('contract', async (t) => {
    clusterContract(t, {
      multiNode: true,
      async makeHarness (t) {
        const prefix = freshRedisPrefix(t, redisUrl)
        const node = redisNodes(t, redisUrl, prefix)
        return { node: () => node(), keys: () => scanKeys(admin, `${prefix}*`) }
      }
    })
  })

  t.test('a node that stops heartbeating is reaped by a live one: its users go offline, with presence events', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const node = redisNodes(t, redisUrl, prefix)
    const ttlMs = 1000
    const live = await node({ ttlMs })
    const dying = await node({ ttlMs })
    await dying.cluster.join(1)
    await dying.cluster.join(2)
    await live.cluster.join(2)
    await live.waitFor('presence', presenceOf(1, true))
    await until('the live node counts two nodes', () => live.cluster.nodeCount() === 2)

    // Gone without a word: its connections drop, its timers find no Redis.
    dying.redis.disconnect()
    dying.subscriber.disconnect()

    // Reaped after ttl plus at most one heartbeat of the live node; waited for generously.
    await live.waitFor('presence', presenceOf(1, false), 10 * ttlMs)
    t.equal(await live.cluster.isOnline(1), false, 'its only user is offline')
    t.equal(await live.cluster.isOnline(2), true, 'a user also on the live node stays online')
    t.strictSame(await live.cluster.onlineUsers({ after: 0, limit: 10 }), { count: 1, userIds: [2] })
    t.equal(live.seen('presence', presenceOf(2, false)).length, 0)
    t.equal(await admin.exists(`${prefix}cluster:node:${dying.nodeId}:users`), 0, 'the dead node\'s user set is gone')
    t.equal(await admin.zscore(`${prefix}cluster:nodes`, dying.nodeId), null, 'and so is its entry')
    await until('the live node counts itself alone', () => live.cluster.nodeCount() === 1)
    t.strictSame(live.errors, [], 'the live node reported no error')
  })

  t.test('a node whose registration vanished from Redis registers its users again at the next heartbeat, and resyncs', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const node = redisNodes(t, redisUrl, prefix)
    const ttlMs = 1000
    const forgotten = await node({ ttlMs })
    const other = await node({ ttlMs })
    await forgotten.cluster.join(1)
    await other.waitFor('presence', presenceOf(1, true))

    const keys = await scanKeys(admin, `${prefix}*`)
    t.ok(keys.length > 0, 'the nodes keep keys')
    await admin.del(...keys)
    t.equal(await other.cluster.isOnline(1), false, 'Redis forgot user 1')

    await until('user 1 is online again', () => other.cluster.isOnline(1), 10 * ttlMs)
    const interrupted = await forgotten.waitFor('interrupted')
    const restored = await forgotten.waitFor('restored')
    t.equal(restored.gapFrom, interrupted.gapFrom, 'the node resyncs from where messages may have been missed')
    t.ok(forgotten.events.indexOf(interrupted) < forgotten.events.indexOf(restored), 'interrupted, then restored')
    await until('the other node heard user 1 come online again', () => other.seen('presence', presenceOf(1, true)).length >= 2)

    const message = chatMessage(2, 1)
    other.cluster.publish(message)
    t.strictSame((await forgotten.waitFor('message')).message, message, 'and messages to them are routed again')
  })

  t.test('a node reaped while alive (stalled past its TTL) registers its users again, even if one joined first', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const node = redisNodes(t, redisUrl, prefix)
    const ttlMs = 3000
    const stalled = await node({ ttlMs })
    const other = await node({ ttlMs })
    await stalled.cluster.join(1)
    await other.waitFor('presence', presenceOf(1, true))

    // What a reaper does to a node past its time (LEAVE_NODE): a node with the same id leaving the cluster.
    const reaper = await node({ ttlMs, nodeId: stalled.nodeId })
    await reaper.cluster.close()
    await other.waitFor('presence', presenceOf(1, false))
    // The stalled node wakes up and a new user connects before its next heartbeat.
    await stalled.cluster.join(2)

    await until('user 1, still connected to the stalled node, is online again', () => other.cluster.isOnline(1), 5 * ttlMs)
    t.pass('user 1 is online again')
    const message = chatMessage(3, 1)
    other.cluster.publish(message)
    t.strictSame((await stalled.waitFor('message', messageWithId(message.id))).message, message, 'and routed to again')
  })

  t.test('CLIENT KILL of the subscriber: interrupted (check() rejects), then restored, and messages flow again', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const node = redisNodes(t, redisUrl, prefix)
    const subscribed = await node()
    const other = await node()
    await subscribed.cluster.join(1)
    await subscribed.cluster.check()
    t.pass('check() resolves while the bus is up')

    const id = await clientId(admin, subscribed.subscriberName)
    t.ok(id, 'the subscriber is in CLIENT LIST by its name')
    const killedAt = Date.now()
    t.equal(await admin.client('KILL', 'ID', id ?? ''), 1)

    const interrupted = await subscribed.waitFor('interrupted')
    await t.rejects(interrupted.check, /disconnected/, 'check() rejects while the subscriber is down')
    t.ok(compareIds(interrupted.gapFrom, firstIdAt(killedAt)) <= 0, 'the gap starts before the kill')
    const restored = await subscribed.waitFor('restored')
    t.ok(compareIds(restored.gapFrom, interrupted.gapFrom) <= 0, `restored reaches back as far as interrupted (${restored.gapFrom} <= ${interrupted.gapFrom})`)
    await subscribed.cluster.check()
    t.pass('check() resolves again')
    t.not(await clientId(admin, subscribed.subscriberName), id, 'a new connection took the killed one\'s place')

    const message = chatMessage(2, 1)
    other.cluster.publish(message)
    t.strictSame((await subscribed.waitFor('message', messageWithId(message.id))).message, message, 'a message published after the restore arrives')
  })

  t.test('a message that arrives while the restored bus is being confirmed does not move the gap forward', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const node = redisNodes(t, redisUrl, prefix)
    const subscribed = await node()
    const other = await node()
    await subscribed.cluster.join(1)

    // The cluster confirms a reconnected subscriber with a PING after its SUBSCRIBE; here that PING
    // waits for the test, which makes the moment between the two (when messages already arrive) last.
    let releasePing = (): void => {}
    const pingHeld = new Promise<void>((resolve) => { releasePing = resolve })
    let holdNextPing = false
    const ping = subscribed.subscriber.ping.bind(subscribed.subscriber)
    Object.assign(subscribed.subscriber, {
      ping: async () => {
        if (holdNextPing) {
          holdNextPing = false
          await pingHeld
        }
        return await ping()
      }
    })

    await admin.client('KILL', 'ID', await clientId(admin, subscribed.subscriberName) ?? '')
    const interrupted = await subscribed.waitFor('interrupted')
    // Set only now, so the PING held is the reconnect's (ioredis waits 50 ms before reconnecting).
    holdNextPing = true
    await until('the subscriber is subscribed again', async () => Number((await admin.pubsub('NUMSUB', `${prefix}cluster:bus:${subscribed.nodeId}`))[1]) === 1)
    const message = chatMessage(2, 1)
    other.cluster.publish(message)
    await subscribed.waitFor('message', messageWithId(message.id))
    releasePing()

    const restored = await subscribed.waitFor('restored')
    t.ok(compareIds(restored.gapFrom, interrupted.gapFrom) <= 0, `restored reaches back as far as interrupted (${restored.gapFrom} <= ${interrupted.gapFrom})`)
  })

  t.test('a leave that fails for good is repaired by a later heartbeat, without pausing any node', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const node = redisNodes(t, redisUrl, prefix)
    const ttlMs = 600
    const leaving = await node({ ttlMs })
    const other = await node({ ttlMs })
    await leaving.cluster.join(7)
    // Still connected: taking the failed leave for a lost join would pause the node.
    await leaving.cluster.join(8)
    await other.waitFor('presence', presenceOf(8, true))

    const leaveFailed = failOnce(leaving.redis, 'evalsha', (args) => args.includes('l'))
    leaving.cluster.leave(7)
    await leaveFailed
    await other.waitFor('presence', presenceOf(7, false))
    t.equal(await other.cluster.isOnline(7), false, 'user 7, connected nowhere, is offline on the other node')
    t.equal(await other.cluster.isOnline(8), true, 'the user still connected stays online')
    t.strictSame(await admin.smembers(`${prefix}cluster:node:${leaving.nodeId}:users`), ['8'], 'Redis holds exactly the node\'s users')
    t.ok(leaving.errors.some(({ context }) => context.startsWith('leaving the online list failed')), 'the failed leave was reported')
    for (const [name, { seen }] of Object.entries({ leaving, other })) {
      t.strictSame([...seen('interrupted'), ...seen('restored')], [], `the ${name} node was not paused`)
    }
  })

  t.test('a join that fails is retried: interrupted (check() rejects), restored once the user is routable, online again', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const node = redisNodes(t, redisUrl, prefix)
    const ttlMs = 600
    const joining = await node({ ttlMs })
    const other = await node({ ttlMs })

    failOnce(joining.redis, 'evalsha', (args) => args.includes('j')).catch(() => {})
    await t.rejects(joining.cluster.join(7), /simulated outage/, 'the join itself fails')
    const interrupted = await joining.waitFor('interrupted')
    await t.rejects(interrupted.check, /paused/, 'check() rejects while the join is pending')
    // Asked the moment restored fires, before any later heartbeat could register the user.
    const { restored, routedTo } = await joining.waitFor('restored').then(async (restored) => ({ restored, routedTo: await admin.smembers(`${prefix}cluster:user:7:nodes`) }))
    t.strictSame(routedTo, [String(joining.nodeId)], 'user 7 was routable to the node when it resumed')
    t.ok(joining.events.indexOf(interrupted) < joining.events.indexOf(restored), 'interrupted, then restored')
    t.ok(compareIds(restored.gapFrom, interrupted.gapFrom) <= 0, `restored reaches back as far as interrupted (${restored.gapFrom} <= ${interrupted.gapFrom})`)
    await joining.cluster.check()
    t.pass('check() resolves again')

    await other.waitFor('presence', presenceOf(7, true))
    t.equal(await other.cluster.isOnline(7), true, 'the other node has user 7 online')
    const message = chatMessage(8, 7)
    other.cluster.publish(message)
    t.strictSame((await joining.waitFor('message', messageWithId(message.id))).message, message, 'and routes messages to them')
  })

  t.test('registering the users again after Redis forgot them is retried at every heartbeat until it succeeds', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const node = redisNodes(t, redisUrl, prefix)
    const ttlMs = 600
    const forgotten = await node({ ttlMs })
    const other = await node({ ttlMs })
    await forgotten.cluster.join(7)
    await other.waitFor('presence', presenceOf(7, true))

    // Asked the moment the first attempt fails, before any later heartbeat could retry.
    let checkOnceFailed: Promise<void> | undefined
    failNextTransaction(forgotten.redis).then(() => {
      checkOnceFailed = forgotten.cluster.check()
      checkOnceFailed.catch(() => {})
    }, () => {})
    await admin.del(...await scanKeys(admin, `${prefix}*`))
    const interrupted = await forgotten.waitFor('interrupted')
    const { restored, routedTo } = await forgotten.waitFor('restored').then(async (restored) => ({ restored, routedTo: await admin.smembers(`${prefix}cluster:user:7:nodes`) }))
    t.ok(checkOnceFailed, 'the first attempt failed')
    await t.rejects(checkOnceFailed ?? Promise.resolve(), /paused/, 'check() still rejected once it had failed')
    t.strictSame(routedTo, [String(forgotten.nodeId)], 'user 7 was routable to the node when it resumed')
    t.ok(compareIds(restored.gapFrom, interrupted.gapFrom) <= 0, `restored reaches back as far as interrupted (${restored.gapFrom} <= ${interrupted.gapFrom})`)
    t.ok(forgotten.errors.some(({ context }) => context === 'cluster heartbeat failed'), 'the failed attempt was reported')
    t.equal(await other.cluster.isOnline(7), true, 'user 7 is online again')
  })

  t.test('a Redis restart (every key gone, the subscriber dropped) is restored only once the node\'s users are routable again', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const node = redisNodes(t, redisUrl, prefix)
    // The default TTL spaces heartbeats out: the reconnected subscriber, not a heartbeat, notices first.
    const restarted = await node()
    const other = await node()
    await restarted.cluster.join(7)
    await other.waitFor('presence', presenceOf(7, true))

    const id = await clientId(admin, restarted.subscriberName)
    t.ok(id, 'the subscriber is in CLIENT LIST by its name')
    // At once, as a restart without persistence does: the data and the connections go together.
    await admin.multi().del(...await scanKeys(admin, `${prefix}*`)).client('KILL', 'ID', id ?? '').exec()
    const interrupted = await restarted.waitFor('interrupted')
    await t.rejects(interrupted.check, /disconnected|paused/, 'check() rejects while the node is cut off')
    const { restored, routedTo } = await restarted.waitFor('restored').then(async (restored) => ({ restored, routedTo: await admin.smembers(`${prefix}cluster:user:7:nodes`) }))
    t.strictSame(routedTo, [String(restarted.nodeId)], 'user 7 was routable to the node when it resumed')
    t.ok(compareIds(restored.gapFrom, interrupted.gapFrom) <= 0, `restored reaches back as far as interrupted (${restored.gapFrom} <= ${interrupted.gapFrom})`)

    const message = chatMessage(8, 7)
    other.cluster.publish(message)
    t.strictSame((await restarted.waitFor('message', messageWithId(message.id))).message, message, 'a message published after the restore arrives')
  })

  t.test('a Redis restart from an older snapshot (same count, other users) is set right when the subscriber is back', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const node = redisNodes(t, redisUrl, prefix)
    const restarted = await node()
    const other = await node()
    await restarted.cluster.join(7)
    await other.waitFor('presence', presenceOf(7, true))

    // The snapshot had user 3 (who left since) instead of user 7: counts agree, members do not.
    const id = await clientId(admin, restarted.subscriberName)
    const nodeUsers = `${prefix}cluster:node:${restarted.nodeId}:users`
    await admin.multi()
      .del(nodeUsers, `${prefix}cluster:user:7:nodes`).zrem(`${prefix}cluster:online`, 7)
      .sadd(nodeUsers, 3).sadd(`${prefix}cluster:user:3:nodes`, restarted.nodeId).zadd(`${prefix}cluster:online`, 3, 3)
      .client('KILL', 'ID', id ?? '').exec()
    await restarted.waitFor('interrupted')
    const routedTo = await restarted.waitFor('restored').then(async () => await admin.smembers(`${prefix}cluster:user:7:nodes`))
    t.strictSame(routedTo, [String(restarted.nodeId)], 'user 7 is routable again when the node resumes')
    t.strictSame(await admin.smembers(nodeUsers), ['7'], 'and the node holds just its own user')
    t.equal(await other.cluster.isOnline(3), false, 'the ghost from the snapshot is gone')
  })

  t.test('70,000 users of a node whose keys Redis lost are all registered again by the next heartbeat', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const node = redisNodes(t, redisUrl, prefix)
    const big = await node({ ttlMs: 600 })
    const users = Array.from({ length: 70_000 }, (_, index) => index + 1)
    // In one tick, so in one presence flush: its arguments would overflow the stack if spread whole.
    await Promise.all(users.map((userId) => big.cluster.join(userId)))
    t.equal((await big.cluster.onlineUsers({ after: 0, limit: 1 })).count, users.length, 'all joined')

    // All at once, as a restart loses them (a heartbeat between deletions would see a half-lost node).
    const keys = await scanKeys(admin, `${prefix}*`)
    const loss = admin.multi()
    for (let start = 0; start < keys.length; start += 10_000) loss.unlink(...keys.slice(start, start + 10_000))
    await loss.exec()
    const interrupted = await big.waitFor('interrupted', undefined, 30_000)
    const restored = await big.waitFor('restored', undefined, 30_000)
    t.ok(compareIds(restored.gapFrom, interrupted.gapFrom) <= 0, 'restored reaches back as far as interrupted')
    t.equal((await big.cluster.onlineUsers({ after: 0, limit: 1 })).count, users.length, 'all online again')
    t.equal(await admin.scard(`${prefix}cluster:node:${big.nodeId}:users`), users.length, 'all the node\'s again')
    for (const userId of [1, 35_000, 70_000]) {
      t.strictSame(await admin.smembers(`${prefix}cluster:user:${userId}:nodes`), [String(big.nodeId)], `user ${userId} is routable to the node`)
    }
    t.strictSame(big.errors, [], 'no error')
  })

  t.test('messages whose routing failed for good are routed again at the next heartbeat, and reported for their cursors', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const node = redisNodes(t, redisUrl, prefix)
    const ttlMs = 600
    const publisher = await node({ ttlMs })
    const recipientNode = await node({ ttlMs })
    const [sender, recipient] = [1, 2]
    await publisher.cluster.join(sender)
    await recipientNode.cluster.join(recipient)

    const ids = createIdGenerator({ nodeId: publisher.nodeId })
    const message = (text: string) => encodeMessage({ id: ids.next(), from: sender, to: recipient, text, sentAt: new Date().toISOString() })
    const late = message('late, but there')
    const routeFailed = failOnce(publisher.redis, 'evalsha', (args) => args.includes(late.json))
    publisher.cluster.publish(late)
    await routeFailed
    t.strictSame((await recipientNode.waitFor('message', messageWithId(late.id))).message, late, 'the message arrives after all')
    t.ok(publisher.errors.some(({ context }) => context.startsWith('routing messages to other nodes failed')), 'the failed routing was reported')
    const rerouted = await publisher.waitFor('rerouted')
    t.strictSame(rerouted.messages, [{ id: late.id, from: sender, to: recipient }], 'and the chat hears which, for the cursors of its users')
    t.strictSame([...recipientNode.seen('interrupted'), ...publisher.seen('interrupted')], [], 'no node had to pause for it')

    const next = message('after it')
    publisher.cluster.publish(next)
    t.strictSame((await recipientNode.waitFor('message', messageWithId(next.id))).message, next, 'later messages are routed as usual')
  })

  t.test('more failed routing than a node keeps: the oldest are dropped and every node resyncs from them instead', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const node = redisNodes(t, redisUrl, prefix)
    const ttlMs = 600
    const publisher = await node({ ttlMs })
    const recipientNode = await node({ ttlMs })
    await publisher.cluster.join(1)
    await recipientNode.cluster.join(2)

    // Every routing call fails until the test lets them through: 10,001 messages, one more than a node keeps.
    const evalsha = publisher.redis.evalsha.bind(publisher.redis) as (...args: unknown[]) => Promise<unknown>
    let failing = true
    const isRoute = (args: unknown[]): boolean => args.some((arg) => typeof arg === 'string' && arg.startsWith('{"type":"message"'))
    Object.assign(publisher.redis, {
      evalsha: async (...args: unknown[]) => {
        if (failing && isRoute(args)) throw new Error('evalsha failed (a simulated outage)')
        return await evalsha(...args)
      }
    })
    const ids = createIdGenerator({ nodeId: publisher.nodeId })
    const sent = Array.from({ length: 10_001 }, (_, index) => encodeMessage({ id: ids.next(), from: 1, to: 2, text: `m${index}`, sentAt: new Date().toISOString() }))
    for (const message of sent) publisher.cluster.publish(message)
    await until('every routing call has failed', () => publisher.errors.filter(({ context }) => context.startsWith('routing messages')).length === 11)
    failing = false

    const restored = await recipientNode.waitFor('restored')
    const first = sent[0] as EncodedMessage
    t.ok(compareIds(restored.gapFrom, first.id) <= 0, 'the other node resyncs from at or before the oldest dropped message')
    // Calls carry 1000 messages: the first call's were dropped, the other ten calls are routed again in order.
    const rerouted = await publisher.waitFor('rerouted')
    t.equal(rerouted.messages.length, 1000)
    t.equal(rerouted.messages[0]?.id, sent[1000]?.id, 'what was kept is routed again, oldest first')
    await recipientNode.waitFor('message', messageWithId(sent.at(-1)?.id ?? ''))
    t.notOk(recipientNode.seen('message', messageWithId(first.id)).length > 0, 'the dropped ones come through the resync, not the bus')
  })

  t.test('a session revocation whose announcement failed reaches the other nodes at the next heartbeat', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const node = redisNodes(t, redisUrl, prefix)
    const ttlMs = 600
    const revoking = await node({ ttlMs })
    const other = await node({ ttlMs })
    const revoked = { type: 'sessionRevoked', userId: 3, sessionId: 'f00dfeed' }

    const publishFailed = failOnce(revoking.redis, 'publish', (args) => args[1] === `r:${revoked.userId}:${revoked.sessionId}`)
    revoking.cluster.revokeSession(revoked.userId, revoked.sessionId)
    t.strictSame(revoking.seen('sessionRevoked'), [revoked], 'this node\'s listener hears it at once')
    await publishFailed
    t.strictSame(await other.waitFor('sessionRevoked'), revoked, 'the other node hears it once announced again')
    t.ok(revoking.errors.some(({ context }) => context.startsWith('announcing an ended session failed')), 'the failed announcement was reported')
  })

  t.test('a node taking over the id of a dead node takes the users it left behind offline as it starts', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const node = redisNodes(t, redisUrl, prefix)
    // A long TTL: no live node reaps the dead one meanwhile.
    const dead = await node({ ttlMs: 60_000 })
    const live = await node()
    await dead.cluster.join(1)
    await dead.cluster.join(2)
    await live.cluster.join(2)
    await live.waitFor('presence', presenceOf(1, true))
    dead.redis.disconnect()
    dead.subscriber.disconnect()

    const successor = await node({ nodeId: dead.nodeId })
    t.equal(await successor.cluster.isOnline(1), false, 'the dead node\'s only user is offline')
    t.equal(await successor.cluster.isOnline(2), true, 'a user also on the live node stays online')
    t.strictSame(await admin.smembers(`${prefix}cluster:node:${dead.nodeId}:users`), [], 'the id holds no user')
    await live.waitFor('presence', presenceOf(1, false))
    t.equal(live.seen('presence', presenceOf(2, false)).length, 0, 'the live node heard only user 1 go offline')
  })

  t.test('the first node to start after the whole cluster died clears the cluster keys it left under the prefix', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const node = redisNodes(t, redisUrl, prefix)
    const dead = await node({ ttlMs: 600 })
    await dead.cluster.join(7)
    dead.redis.disconnect()
    dead.subscriber.disconnect()
    // Long dead: the keys that expire have expired; routing keys, which do not, point to a node that is gone.
    const leftovers = await scanKeys(admin, `${prefix}*`)
    for (const key of leftovers) if (await admin.pttl(key) > 0) await admin.del(key)
    t.ok((await scanKeys(admin, `${prefix}cluster:*`)).length > 0, 'keys are left')
    const unrelated = `${prefix}not-the-cluster`
    await admin.set(unrelated, 'kept')

    const first = await node({ ttlMs: 600 })
    t.strictSame((await scanKeys(admin, `${prefix}*`)).sort(), [`${prefix}cluster:nodes`, unrelated].sort(), 'only the new node\'s entry and keys outside cluster:* remain')
    t.equal(await first.cluster.isOnline(7), false, 'user 7 is offline')
  })

  t.test('a node whose clock runs ahead of Redis\'s does not take a live cluster for dead as it starts', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const node = redisNodes(t, redisUrl, prefix)
    const live = await node()
    await live.cluster.join(7)

    // Well past the TTL ahead: by this clock the live node's entry has run out.
    const realNow = Date.now
    Date.now = () => realNow() + 60_000
    try {
      await node()
    } finally {
      Date.now = realNow
    }
    t.strictSame(await admin.smembers(`${prefix}cluster:user:7:nodes`), [String(live.nodeId)], 'user 7 is still routable to the live node')
    t.equal(await live.cluster.isOnline(7), true, 'and online')
  })

  t.test('close() finishes when Redis stops answering, with a join still queued, and closes the subscriber', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const relay = await tcpRelay(t, redisUrl, 6379)
    const node = redisNodes(t, relay.url, prefix)
    const cut = await node()
    await cut.cluster.join(1)

    relay.silence()
    cut.cluster.join(2).catch(() => {})
    // A hang fails the test here rather than at tap's timeout; close() gives up well before.
    let hung = (): void => {}
    const deadline = setTimeout(() => hung(), 20_000)
    const outcome = await Promise.race([
      cut.cluster.close().then(() => 'closed', (error: unknown) => `rejected: ${String(error)}`),
      new Promise<string>((resolve) => { hung = () => resolve('still closing after 20 s') })
    ])
    clearTimeout(deadline)
    t.match(outcome, /^rejected: .*timed out/, 'close() gives up on Redis and says so')
    await until('the subscriber is closed', () => cut.subscriber.status === 'end')
    t.pass('the subscriber is closed')
  })
})
