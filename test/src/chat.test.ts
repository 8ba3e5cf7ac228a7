import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import { WebSocket } from 'ws'
import { createAccessTokens, type AccessTokenIdentity } from '../../src/access-tokens.js'
import { createBatcher } from '../../src/batcher.js'
import { createChat, type ChatDependencies, type ChatObserver, type Socket } from '../../src/chat.js'
import { createLocalCluster, type Cluster, type ClusterEvents } from '../../src/cluster.js'
import { createConnectionRegistry } from '../../src/connections.js'
import { compareIds, createIdGenerator, firstIdAt, idTime, previousId } from '../../src/ids.js'
import { encodeMessage, type EncodedMessage, type OutputFormat } from '../../src/protocol.js'
import type { PublicUser } from '../../src/schemas.js'
import {
  createMemoryMessageStore, type MessageStore, type SaveOutcome, type SinceQuery, type StoredMessage
} from '../../src/stores/messages-memory.js'
import { pluginJwt, until } from '../helper.js'

const accessTokens = createAccessTokens({ jwt: pluginJwt(), ttlSeconds: 900 })

interface Close { code: number, reason: string }

/** A socket that records what the chat does to it. Not a backend: the real `ws` socket is tested in test/routes. */
interface FakeSocket extends Socket {
  readyState: number
  /** Set by a test to play a peer that stopped reading. */
  bufferedAmount: number
  pings: number
  sent: string[]
  /** Frames the chat handed over after closing had begun. */
  dropped: string[]
  closes: Close[]
  /** Dropped without a handshake. */
  terminated: boolean
  /** Plays the network taking every queued frame: their send callbacks run, and nothing is buffered. */
  flush (): void
  /** Resolves once `check` holds for what has been sent so far. */
  until (check: (sent: string[]) => boolean): Promise<string[]>
  /** Resolves once `count` frames have been sent in all. */
  sentCount (count: number): Promise<string[]>
  /** Resolves on the first close. */
  closed: Promise<Close>
}

function fakeSocket (): FakeSocket {
  const waiting: Array<{ check: (sent: string[]) => boolean, resolve: (sent: string[]) => void }> = []
  let onClose: (close: Close) => void = () => {}
  let unflushed: Array<(error?: Error) => void> = []
  const socket: FakeSocket = {
    readyState: WebSocket.OPEN,
    bufferedAmount: 0,
    pings: 0,
    sent: [],
    dropped: [],
    closes: [],
    terminated: false,
    closed: new Promise((resolve) => { onClose = resolve }),
    send (data, sent) {
      // As ws: once closing has begun, a frame is dropped, not sent.
      if (socket.readyState !== WebSocket.OPEN) {
        socket.dropped.push(data)
        return
      }
      socket.sent.push(data)
      if (sent !== undefined) unflushed.push(sent)
      for (const waiter of waiting.filter(({ check }) => check(socket.sent))) {
        waiting.splice(waiting.indexOf(waiter), 1)
        waiter.resolve(socket.sent)
      }
    },
    close (code, reason) {
      socket.closes.push({ code, reason })
      // As ws: closing starts the handshake; the 'close' event (CLOSED) comes later.
      if (socket.readyState === WebSocket.OPEN) socket.readyState = WebSocket.CLOSING
      onClose({ code, reason })
    },
    ping () {
      socket.pings++
    },
    flush () {
      socket.bufferedAmount = 0
      const callbacks = unflushed
      unflushed = []
      for (const callback of callbacks) callback()
    },
    terminate () {
      socket.terminated = true
      socket.readyState = WebSocket.CLOSED
    },
    async until (check) {
      if (check(socket.sent)) return socket.sent
      return new Promise((resolve) => waiting.push({ check, resolve }))
    },
    async sentCount (count) {
      return socket.until((sent) => sent.length >= count)
    }
  }
  return socket
}

function publicUser (id: number): PublicUser {
  return { id, name: `User ${id}`, avatarUrl: null, createdAt: '2025-01-01T00:00:00.000Z' }
}

function frames (socket: FakeSocket): Array<Record<string, unknown>> {
  return socket.sent.map((data) => JSON.parse(data) as Record<string, unknown>)
}

/** The chat messages a JSON socket received, in order. */
function messagesOf (socket: FakeSocket): Array<Record<string, unknown>> {
  return frames(socket).filter((frame) => frame.type === 'message')
}

function textsOf (socket: FakeSocket): unknown[] {
  return messagesOf(socket).map((frame) => frame.text)
}

function acksOf (socket: FakeSocket): Array<Record<string, unknown>> {
  return frames(socket).filter((frame) => frame.type === 'ack')
}

/** Lets every queued promise callback run, and one turn of the event loop pass. */
async function settled (): Promise<void> {
  await new Promise((resolve) => setImmediate(resolve))
}

interface Held<Args, Result> {
  args: Args
  resolve: (result: Result) => void
  reject: (error: unknown) => void
}

/** Stands in for an async dependency: each call waits until the test answers it. */
function holdCalls<Args, Result> () {
  const calls: Array<Held<Args, Result>> = []
  const wake: Array<() => void> = []
  return {
    calls,
    fn: (args: Args) => new Promise<Result>((resolve, reject) => {
      calls.push({ args, resolve, reject })
      for (const waiter of wake.splice(0)) waiter()
    }),
    /** The `index`-th call (from 0), once it has been made. */
    async call (index: number): Promise<Held<Args, Result>> {
      while (calls.length <= index) await new Promise<void>((resolve) => wake.push(resolve))
      return calls[index] as Held<Args, Result>
    }
  }
}

type Messages = ChatDependencies['messages']

/** The memory store as the chat reads it, with some methods replaced. */
function storeView (store: MessageStore, overrides: Partial<Messages>): Messages {
  return { since: store.since, seenThrough: store.seenThrough, markSeen: store.markSeen, rewindSeen: store.rewindSeen, ...overrides }
}

interface SetupOptions {
  cluster?: Cluster
  observer?: ChatObserver
  userExists?: (userId: number) => Promise<boolean>
  /** Sessions that have ended (logged out); every other session is live. */
  endedSessions?: string[]
  /** Replaces the session check built from `endedSessions`. */
  isSessionLive?: ChatDependencies['isSessionLive']
  messageRate?: number
  messageBurst?: number
  recentWindowMs?: number
  replayDrainWaitMs?: number
  /** The store behind the default `saveMessage` and `messages`. */
  store?: MessageStore
  /** Replaces the group-committing save into `store`. */
  saveMessage?: ChatDependencies['saveMessage']
  /** Replaces the reads and cursor writes on `store`. */
  messages?: Messages
}

interface ConnectOptions {
  format?: OutputFormat
  identity?: AccessTokenIdentity
  keepWelcome?: boolean
  since?: string
}

function setup (t: Test, options: SetupOptions = {}) {
  const { userExists = async () => true, endedSessions = [], messageRate = 1000, messageBurst = 1000 } = options
  const store = options.store ?? createMemoryMessageStore()
  // The same group commit as production, around the real memory store.
  const batcher = createBatcher<StoredMessage, SaveOutcome>({ flush: store.save, maxBatch: 1000 })
  const save = options.saveMessage ?? batcher.add
  const registry = createConnectionRegistry()
  const errors: unknown[] = []
  const asked: number[] = []
  let saveCalls = 0
  const chat = createChat({
    registry,
    cluster: options.cluster ?? createLocalCluster(),
    userExists: (userId) => {
      asked.push(userId)
      return userExists(userId)
    },
    verifyAccessToken: accessTokens.verify,
    isSessionLive: options.isSessionLive ?? (async (sessionId) => !endedSessions.includes(sessionId)),
    nextMessageId: createIdGenerator({ nodeId: 1 }).next,
    saveMessage: (message) => {
      saveCalls++
      return save(message)
    },
    messages: options.messages ?? store,
    limits: { messageMaxChars: 4000, messageRate, messageBurst, maxFrameBytes: 65_536, maxBufferedBytes: 1_048_576 },
    ...(options.observer === undefined ? {} : { observer: options.observer }),
    ...(options.recentWindowMs === undefined ? {} : { recentWindowMs: options.recentWindowMs }),
    ...(options.replayDrainWaitMs === undefined ? {} : { replayDrainWaitMs: options.replayDrainWaitMs }),
    onError: (error) => { errors.push(error) }
  })

  /**
   * Resolves once the chat has nothing left to do: the memory store answers
   * within promise callbacks, so once the batcher is drained and a turn of the
   * event loop passes without a new save, every reply has gone out.
   */
  async function idle (): Promise<void> {
    let before: number
    do {
      before = saveCalls
      await batcher.drain()
      await chat.drain()
      await settled()
    } while (saveCalls !== before)
  }

  function connect (userId: number, { format = 'json', identity, keepWelcome = false, since }: ConnectOptions = {}) {
    const socket = fakeSocket()
    const session = chat.open(socket, {
      user: publicUser(userId),
      identity: identity ?? accessTokens.verify(accessTokens.issue(userId, `session-of-${userId}`).token),
      format,
      ...(since === undefined ? {} : { since })
    })
    // Stops the expiry timer of a session the test left open.
    t.teardown(() => session.closed())
    if (!keepWelcome) socket.sent.length = 0
    return {
      socket,
      session,
      send: (frame: string | object) => session.receive(Buffer.from(typeof frame === 'string' ? frame : JSON.stringify(frame)), false),
      /** The socket went away (ws: CLOSED, then the 'close' event). */
      disconnect: () => {
        socket.readyState = WebSocket.CLOSED
        session.closed()
      }
    }
  }

  type Client = ReturnType<typeof connect>

  /** Sends a message and returns its server id, from the ack. */
  async function message (from: Client, to: number, text: string, ref?: string): Promise<string> {
    const acks = acksOf(from.socket).length
    from.send(ref === undefined ? { type: 'message', to, text } : { type: 'message', to, text, id: ref })
    await from.socket.until(() => acksOf(from.socket).length > acks)
    return acksOf(from.socket)[acks]?.id as string
  }

  return { chat, registry, store, errors, asked, connect, idle, message }
}

test('a JSON session is welcomed with its user and expiry', async (t) => {
  const { connect, registry } = setup(t)
  const identity: AccessTokenIdentity = { userId: 7, sessionId: 's', expiresAt: Date.UTC(2099, 0, 1) }
  const { socket } = connect(7, { identity, keepWelcome: true })
  t.strictSame(frames(socket), [{ type: 'welcome', user: publicUser(7), expiresAt: '2099-01-01T00:00:00.000Z' }])
  t.equal(registry.isOnline(7), true, 'and registered')
})

test('a message reaches every connection of the recipient in its format, the sender\'s other devices, and an ack the sender', async (t) => {
  const { connect, idle } = setup(t)
  const alicePhone = connect(1)
  const aliceLaptop = connect(1, { format: 'text' })
  const aliceTablet = connect(1)
  const bobJson = connect(2)
  const bobText = connect(2, { format: 'text' })
  await idle()

  alicePhone.send({ type: 'message', to: 2, text: 'hi: there', id: 'ref-1' })
  await idle()

  const [delivered] = frames(bobJson.socket)
  t.match(delivered, { type: 'message', from: 1, to: 2, text: 'hi: there' })
  t.strictSame(Object.keys(delivered ?? {}).sort(), ['from', 'id', 'sentAt', 'text', 'to', 'type'])
  t.match(delivered?.id, /^[1-9]\d*$/, 'a decimal server id')
  t.equal(new Date(delivered?.sentAt as string).toISOString(), delivered?.sentAt, 'sentAt is ISO 8601')
  t.equal(bobJson.socket.sent.length, 1, 'once per connection')
  t.strictSame(bobText.socket.sent, ['1:hi: there'], 'text format: "from:text"')
  t.strictSame(aliceTablet.socket.sent, bobJson.socket.sent, 'the sender\'s other JSON device sees the same message')
  t.strictSame(aliceLaptop.socket.sent, ['1:hi: there'], 'and the text one in its format')
  t.strictSame(frames(alicePhone.socket), [{ type: 'ack', id: delivered?.id, ref: 'ref-1' }], 'only the sending connection gets the ack')
})

test('a legacy frame is a message, acked without a ref', async (t) => {
  const { connect, idle } = setup(t)
  const alice = connect(1)
  const bob = connect(2)
  alice.send('2:  hello:world\n')
  await idle()
  const [delivered] = frames(bob.socket)
  t.match(delivered, { type: 'message', from: 1, to: 2, text: '  hello:world\n' })
  t.strictSame(frames(alice.socket), [{ type: 'ack', id: delivered?.id }])
})

test('from is the session\'s user, never the client\'s', async (t) => {
  const { connect, idle } = setup(t)
  const alice = connect(1)
  const bob = connect(2)
  alice.send({ type: 'message', to: 2, text: 'it is me, Carol', from: 3 })
  await idle()
  t.match(frames(bob.socket), [{ type: 'message', from: 1 }])
})

test('a message to oneself reaches one\'s other devices once', async (t) => {
  const { connect, idle } = setup(t)
  const phone = connect(1)
  const laptop = connect(1)
  phone.send('1:note to self')
  await idle()
  t.match(frames(laptop.socket), [{ type: 'message', from: 1, to: 1, text: 'note to self' }])
  t.equal(laptop.socket.sent.length, 1)
  t.match(frames(phone.socket), [{ type: 'ack' }])
})

test('message ids increase', async (t) => {
  const { connect, idle } = setup(t)
  const alice = connect(1)
  const bob = connect(2)
  for (let i = 0; i < 5; i++) alice.send(`2:${i}`)
  await idle()
  const ids = messagesOf(bob.socket).map((frame) => BigInt(frame.id as string))
  t.equal(ids.length, 5)
  t.ok(ids.every((id, index) => index === 0 || id > (ids[index - 1] as bigint)))
})

test('a message to an offline user is stored and acked; one to a user that does not exist is UNKNOWN_USER', async (t) => {
  const { connect, idle, asked, store } = setup(t, { userExists: async (userId) => userId === 3 })
  const alice = connect(1)
  alice.send({ type: 'message', to: 3, text: 'hi', id: 'r3' })
  alice.send({ type: 'message', to: 4, text: 'hi', id: 'r4' })
  await idle()
  t.match(frames(alice.socket), [
    { type: 'ack', id: /^\d+$/, ref: 'r3' },
    { type: 'error', code: 'UNKNOWN_USER', ref: 'r4', message: String }
  ])
  t.strictSame(asked, [3, 4])
  t.strictSame(alice.socket.closes, [], 'the socket stays open')
  const ackedId = frames(alice.socket)[0]?.id
  t.match(await store.since({ userId: 3, after: '0', limit: 10 }), [{ id: ackedId, from: 1, to: 3, text: 'hi', ref: 'r3' }], 'stored under the acked id')
  t.strictSame(await store.since({ userId: 4, after: '0', limit: 10 }), [], 'nothing kept for a user that does not exist')

  const carol = connect(3)
  await idle()
  t.match(frames(carol.socket), [{ type: 'message', id: ackedId, from: 1, to: 3, text: 'hi' }], 'and delivered when the recipient connects')
})

test('an online recipient is not looked up', async (t) => {
  const { connect, idle, asked } = setup(t)
  const alice = connect(1)
  connect(2)
  alice.send('2:hi')
  await idle()
  t.strictSame(asked, [])
})

test('frames are answered in order, even when one waits for the user store', async (t) => {
  let answer: (exists: boolean) => void = () => {}
  const { connect, idle } = setup(t, { userExists: () => new Promise((resolve) => { answer = resolve }) })
  const alice = connect(1)
  const bob = connect(2)
  await idle()
  alice.send({ type: 'message', to: 3, text: 'are you there?', id: 'offline' })
  alice.send({ type: 'message', to: 2, text: 'hello bob', id: 'online' })
  alice.send({ type: 'ping' })
  // Give wrongly unqueued work the chance to run before the store answers.
  await settled()
  t.strictSame(alice.socket.sent, [], 'nothing answered while the first frame waits')
  t.strictSame(bob.socket.sent, [], 'nothing delivered ahead of it')
  answer(true)
  await alice.socket.sentCount(3)
  t.match(frames(alice.socket), [
    { type: 'ack', ref: 'offline' },
    { type: 'ack', ref: 'online' },
    { type: 'pong' }
  ])
  t.match(frames(bob.socket), [{ type: 'message', text: 'hello bob' }])
})

test('too many frames are RATE_LIMITED and the socket stays open', async (t) => {
  const { connect, idle } = setup(t, { messageRate: 0.001, messageBurst: 3 })
  const alice = connect(1)
  const bob = connect(2)
  for (let i = 1; i <= 5; i++) alice.send(`2:message ${i}`)
  await idle()
  t.strictSame(textsOf(bob.socket), ['message 1', 'message 2', 'message 3'], 'the burst got through, the rest did not')
  // The refusals are sent on arrival, while the accepted frames wait for the store, so only counts are compared.
  const types = frames(alice.socket).map((frame) => frame.type === 'error' ? frame.code : frame.type)
  t.strictSame(types.sort(), ['RATE_LIMITED', 'RATE_LIMITED', 'ack', 'ack', 'ack'])
  t.strictSame(alice.socket.closes, [])
})

test('a frame over maxFrameBytes closes the socket with 1009 (when ws was not told the limit)', async (t) => {
  const { connect, idle } = setup(t)
  const alice = connect(1)
  connect(2)
  await idle()
  alice.send(`2:${'x'.repeat(65_536)}`)
  t.match(await alice.socket.closed, { code: 1009 })
  t.strictSame(alice.socket.sent, [], 'nothing else was answered')
})

test('a binary frame is BAD_FORMAT', async (t) => {
  const { connect, idle } = setup(t)
  const alice = connect(1)
  const bob = connect(2)
  alice.session.receive(Buffer.from('2:hi'), true)
  await idle()
  t.match(frames(alice.socket), [{ type: 'error', code: 'BAD_FORMAT' }])
  t.strictSame(bob.socket.sent, [], 'not delivered though its bytes read as a message')
  t.strictSame(alice.socket.closes, [])
})

test('fragmented and ArrayBuffer text frames are read as UTF-8', async (t) => {
  const { connect, idle } = setup(t)
  const alice = connect(1)
  const bob = connect(2, { format: 'text' })
  const bytes = Buffer.from('2:h\u00e9llo \u{1F600}')
  alice.session.receive([bytes.subarray(0, 4), bytes.subarray(4)], false)
  alice.session.receive(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length), false)
  await idle()
  t.strictSame(bob.socket.sent, ['1:h\u00e9llo \u{1F600}', '1:h\u00e9llo \u{1F600}'])
})

test('ping gets pong', async (t) => {
  const { connect, idle } = setup(t)
  const alice = connect(1)
  alice.send({ type: 'ping' })
  await idle()
  t.strictSame(frames(alice.socket), [{ type: 'pong' }])
})

test('bad frames get their error codes, carrying the ref, and never close the socket', async (t) => {
  const { connect, idle } = setup(t)
  const alice = connect(1)
  alice.send({ type: 'message', to: '2', text: 'hi', id: 'r' })
  alice.send('{"type":')
  alice.send('no colon here')
  alice.send({ type: 'shout' })
  alice.send({ type: 'message', to: 2, text: 'x'.repeat(4001), id: 'long' })
  alice.send({ type: 'watch', users: [0] })
  await idle()
  t.match(frames(alice.socket), [
    { type: 'error', code: 'BAD_RECEIVER', ref: 'r' },
    { type: 'error', code: 'BAD_JSON' },
    { type: 'error', code: 'BAD_FORMAT' },
    { type: 'error', code: 'UNKNOWN_TYPE' },
    { type: 'error', code: 'TOO_LONG', ref: 'long' },
    { type: 'error', code: 'BAD_RECEIVER' }
  ])
  t.equal(alice.socket.sent.length, 6)
  t.strictSame(alice.socket.closes, [])
})

test('a text-format session gets only "from:text" and "error:CODE"', async (t) => {
  const { connect, idle } = setup(t, { userExists: async () => false })
  const alice = connect(1, { format: 'text', keepWelcome: true })
  const bob = connect(2)
  t.strictSame(alice.socket.sent, [], 'no welcome')
  alice.send('2:hi bob')
  alice.send({ type: 'ping' })
  alice.send({ type: 'refresh', token: accessTokens.issue(1, 'session-of-1').token })
  await idle()
  t.strictSame(alice.socket.sent, [], 'no ack, no pong, no welcome after refresh')
  t.match(frames(bob.socket), [{ type: 'message', from: 1, text: 'hi bob' }], 'though the message went out')
  bob.send('1:hi alice')
  await idle()
  alice.send('no colon')
  alice.send('9:anyone?')
  await idle()
  t.strictSame(alice.socket.sent, ['2:hi alice', 'error:BAD_FORMAT', 'error:UNKNOWN_USER'])
})

test('refresh with a token of the same user sends a new welcome with the new expiry', async (t) => {
  const { connect } = setup(t)
  const soon = Date.now() + 60_000
  const alice = connect(1, { identity: { userId: 1, sessionId: 'session-of-1', expiresAt: soon } })
  const next = accessTokens.issue(1, 'session-of-1').token
  const nextExpiry = accessTokens.verify(next).expiresAt
  alice.send({ type: 'refresh', token: next })
  await alice.socket.sentCount(1)
  t.strictSame(frames(alice.socket), [{ type: 'welcome', user: publicUser(1), expiresAt: new Date(nextExpiry).toISOString() }])
  t.not(new Date(nextExpiry).toISOString(), new Date(soon).toISOString())
})

test('a refresh before expiry keeps the socket open past the old expiry', async (t) => {
  const { connect } = setup(t)
  const alice = connect(1, { identity: { userId: 1, sessionId: 'session-of-1', expiresAt: Date.now() + 30 } })
  alice.send({ type: 'refresh', token: accessTokens.issue(1, 'session-of-1').token })
  // Waiting for something that must not happen: well past the old 30 ms expiry, bounded.
  await new Promise((resolve) => setTimeout(resolve, 150))
  t.strictSame(alice.socket.closes, [])
})

test('refresh with another user\'s token closes with 1008', async (t) => {
  const { connect } = setup(t)
  const alice = connect(1)
  alice.send({ type: 'refresh', token: accessTokens.issue(2, 'session-of-2').token })
  t.match(await alice.socket.closed, { code: 1008 })
  t.strictSame(alice.socket.sent, [], 'and no welcome')
})

test('refresh with a token of an ended session is an error and changes nothing', async (t) => {
  const { connect } = setup(t, { endedSessions: ['logged-out'] })
  const alice = connect(1, { identity: { userId: 1, sessionId: 'session-of-1', expiresAt: Date.now() + 60_000 } })
  alice.send({ type: 'refresh', token: accessTokens.issue(1, 'logged-out').token })
  await alice.socket.sentCount(1)
  t.match(frames(alice.socket), [{ type: 'error', code: 'BAD_FORMAT', message: /session/ }])
  t.equal(alice.session.connection.sessionId, 'session-of-1', 'the socket stays in its own session')
  t.strictSame(alice.socket.closes, [])
})

test('refresh with an invalid token is an error and keeps the socket', async (t) => {
  const { connect } = setup(t)
  const alice = connect(1)
  alice.send({ type: 'refresh', token: 'not.a.token' })
  const foreign = createAccessTokens({ jwt: pluginJwt({ secret: 'another-key-that-is-also-32-bytes-long' }), ttlSeconds: 900 })
  alice.send({ type: 'refresh', token: foreign.issue(1, 'session-of-1').token })
  await alice.socket.sentCount(2)
  t.match(frames(alice.socket), [{ type: 'error', code: 'BAD_FORMAT' }, { type: 'error', code: 'BAD_FORMAT' }])
  t.strictSame(alice.socket.closes, [])
})

test('an expiring access token closes the socket with 4001', async (t) => {
  const { connect } = setup(t)
  const alice = connect(1, { identity: { userId: 1, sessionId: 'session-of-1', expiresAt: Date.now() + 20 } })
  t.strictSame(alice.socket.closes, [], 'open until then')
  // The expiry timer is unref'd (it must never hold a server open), so something else keeps this process alive meanwhile.
  const keepAlive = setInterval(() => {}, 1000)
  t.teardown(() => clearInterval(keepAlive))
  t.match(await alice.socket.closed, { code: 4001 })
})

test('a socket that closed before its token expired is left alone at expiry', async (t) => {
  const { connect } = setup(t)
  const expiresAt = Date.now() + 20
  const alice = connect(1, { identity: { userId: 1, sessionId: 'session-of-1', expiresAt } })
  const bob = connect(2, { identity: { userId: 2, sessionId: 'session-of-2', expiresAt } })
  alice.disconnect()
  const keepAlive = setInterval(() => {}, 1000)
  t.teardown(() => clearInterval(keepAlive))
  t.match(await bob.socket.closed, { code: 4001 }, 'the other socket of that deadline expires')
  t.strictSame(alice.socket.closes, [])
})

test('a session opened with an already expired token closes at once with 4001', async (t) => {
  const { connect } = setup(t)
  const alice = connect(1, { identity: { userId: 1, sessionId: 'session-of-1', expiresAt: Date.now() - 1 } })
  t.strictSame(alice.socket.closes.map(({ code }) => code), [4001])
})

test('closed() removes the connection from the registry and stops it', async (t) => {
  const { connect, idle, registry, asked } = setup(t, { userExists: async () => true })
  const alice = connect(1)
  const bob = connect(2)
  await idle()
  bob.disconnect()
  t.equal(registry.isOnline(2), false)
  t.equal(registry.connectionCount, 1)
  alice.send('2:still there?')
  await idle()
  t.match(frames(alice.socket), [{ type: 'ack' }], 'stored for later, not refused')
  t.strictSame(asked, [2], 'bob is offline now, so his account is looked up')
  bob.send('1:from beyond')
  await idle()
  t.strictSame(alice.socket.sent.length, 1, 'a closed session sends nothing')
  bob.session.closed()
  t.equal(registry.connectionCount, 1, 'closing twice is harmless')
})

test('a failing user store reports the error and closes with 1011', async (t) => {
  const failure = new Error('database is down')
  const { connect, errors } = setup(t, { userExists: async () => { throw failure } })
  const alice = connect(1)
  alice.send('3:hello?')
  t.match(await alice.socket.closed, { code: 1011 })
  t.strictSame(errors, [failure])
  t.strictSame(alice.socket.sent, [], 'no answer to the frame')
})

test('storage: nothing is acked or delivered before the store has the message', async (t) => {
  const store = createMemoryMessageStore()
  const saves = holdCalls<StoredMessage, SaveOutcome>()
  const { connect, idle } = setup(t, { store, saveMessage: saves.fn })
  const alice = connect(1)
  const aliceTablet = connect(1)
  const bob = connect(2)
  await idle()

  alice.send({ type: 'message', to: 2, text: 'kept?', id: 'r1' })
  alice.send({ type: 'ping' })
  const save = await saves.call(0)
  t.match(save.args, { id: /^[1-9]\d*$/, from: 1, to: 2, text: 'kept?', ref: 'r1', sentAt: String })
  // Waiting for what must not happen: a turn of the event loop for a premature ack, delivery or pong.
  await settled()
  t.strictSame(alice.socket.sent, [], 'no ack, and the next frame waits its turn')
  t.strictSame(aliceTablet.socket.sent, [], 'not shown on the sender\'s other device')
  t.strictSame(bob.socket.sent, [], 'not delivered')

  const [outcome] = await store.save([save.args])
  save.resolve(outcome as SaveOutcome)
  await alice.socket.sentCount(2)
  t.strictSame(frames(alice.socket), [{ type: 'ack', id: save.args.id, ref: 'r1' }, { type: 'pong' }])
  await idle()
  t.match(frames(bob.socket), [{ type: 'message', id: save.args.id, text: 'kept?' }])
  t.match(frames(aliceTablet.socket), [{ type: 'message', id: save.args.id, text: 'kept?' }])
})

test('storage: a failing save is no ack and no delivery; it is reported and the socket closes with 1011', async (t) => {
  const failure = new Error('insert failed')
  const { connect, idle, errors } = setup(t, { saveMessage: async () => { throw failure } })
  const alice = connect(1)
  const aliceTablet = connect(1)
  const bob = connect(2)
  await idle()
  alice.send({ type: 'message', to: 2, text: 'lost?', id: 'r1' })
  alice.send({ type: 'ping' })
  t.match(await alice.socket.closed, { code: 1011 })
  await idle()
  t.strictSame(errors, [failure])
  t.strictSame(alice.socket.sent, [], 'no ack, and the frames after it are not handled')
  t.strictSame(alice.socket.closes.length, 1)
  t.strictSame(bob.socket.sent, [], 'not delivered')
  t.strictSame(aliceTablet.socket.sent, [])
})

test('storage: a save that failed after storing the row is delivered when the client resends it', async (t) => {
  const store = createMemoryMessageStore()
  let failNext = true
  // The row is written, then the save reports a failure (say, the connection dropped after the commit).
  const saveMessage = async (message: StoredMessage): Promise<SaveOutcome> => {
    const [outcome] = await store.save([message])
    if (failNext) {
      failNext = false
      throw new Error('connection lost after the write')
    }
    return outcome as SaveOutcome
  }
  const { connect, idle, message } = setup(t, { store, saveMessage })
  const alice = connect(1)
  const bob = connect(2)
  await idle()
  alice.send({ type: 'message', to: 2, text: 'hello', id: 'r1' })
  t.match(await alice.socket.closed, { code: 1011 }, 'the sender is told nothing was acknowledged')
  t.strictSame(messagesOf(bob.socket), [], 'and nothing was routed')

  const aliceAgain = connect(1)
  await idle()
  const id = await message(aliceAgain, 2, 'hello', 'r1')
  await idle()
  t.strictSame(messagesOf(bob.socket).map((frame) => [frame.id, frame.text]), [[id, 'hello']], 'the resend routes the stored message, once')

  await message(aliceAgain, 2, 'hello', 'r1')
  await idle()
  t.equal(messagesOf(bob.socket).length, 1, 'a further resend is only acknowledged')
})

test('storage: a resend with the same client ref is acked with the original id and delivered once', async (t) => {
  const { connect, idle, message, store } = setup(t)
  const alicePhone = connect(1)
  const aliceTablet = connect(1)
  const bob = connect(2)
  await idle()
  const original = await message(alicePhone, 2, 'only once', 'dup')

  // The phone lost its connection before it saw the ack, reconnects and sends again.
  alicePhone.disconnect()
  const alicePhoneAgain = connect(1)
  const resent = await message(alicePhoneAgain, 2, 'only once', 'dup')
  await idle()
  t.equal(resent, original, 'the second ack carries the original id')
  t.strictSame(acksOf(alicePhoneAgain.socket), [{ type: 'ack', id: original, ref: 'dup' }])
  t.strictSame(messagesOf(bob.socket).map((frame) => frame.id), [original], 'the recipient gets it once')
  t.strictSame(messagesOf(aliceTablet.socket).map((frame) => frame.id), [original], 'so does the sender\'s other device')
  t.equal((await store.since({ userId: 2, after: '0', limit: 10 })).length, 1, 'stored once')

  const other = await message(alicePhoneAgain, 2, 'only once', 'another-ref')
  t.not(other, original, 'another ref is another message')
  const bobsOwn = await message(bob, 1, 'mine', 'dup')
  t.not(bobsOwn, original, 'the same ref from another sender is another message')
  await idle()
  t.strictSame(messagesOf(bob.socket).map((frame) => frame.id), [original, other])
})

test('offline delivery: what arrived while a user had no connection is replayed in order when they connect, then live messages follow', async (t) => {
  const { connect, idle, message } = setup(t)
  const alice = connect(1)
  const carol = connect(3)
  await idle()
  const ids = [
    await message(alice, 2, 'one'),
    await message(carol, 2, 'two'),
    await message(alice, 2, 'three')
  ]

  const bob = connect(2)
  await idle()
  t.strictSame(messagesOf(bob.socket), [
    { type: 'message', id: ids[0], from: 1, to: 2, text: 'one', sentAt: messagesOf(bob.socket)[0]?.sentAt },
    { type: 'message', id: ids[1], from: 3, to: 2, text: 'two', sentAt: messagesOf(bob.socket)[1]?.sentAt },
    { type: 'message', id: ids[2], from: 1, to: 2, text: 'three', sentAt: messagesOf(bob.socket)[2]?.sentAt }
  ], 'each as a normal message frame (no client ref), in order')
  t.equal(bob.socket.sent.length, 3, 'nothing else')

  const live = await message(alice, 2, 'four')
  await idle()
  t.strictSame(messagesOf(bob.socket).map((frame) => frame.id), [...ids, live], 'then live, each once')
})

test('offline delivery: a second connection while the first is open gets no replay', async (t) => {
  const { connect, idle, message } = setup(t)
  const alice = connect(1)
  await idle()
  await message(alice, 2, 'while away')
  const bobPhone = connect(2)
  await idle()
  t.strictSame(textsOf(bobPhone.socket), ['while away'])

  const bobLaptop = connect(2)
  await idle()
  t.strictSame(bobLaptop.socket.sent, [], 'the first connection already caught up')
  await message(alice, 2, 'live')
  await idle()
  t.strictSame(textsOf(bobLaptop.socket), ['live'])
  t.strictSame(textsOf(bobPhone.socket), ['while away', 'live'])
})

test('since: replays exactly the messages to or from the user after that id, then goes live', async (t) => {
  const { connect, idle, message } = setup(t)
  const alice = connect(1)
  const bob = connect(2)
  const carol = connect(3)
  await idle()
  const before = await message(alice, 2, 'before')
  const since = await message(bob, 1, 'the last one the laptop saw')
  const ids = [
    await message(carol, 2, 'from carol'),
    await message(alice, 3, 'alice to carol: not bob\'s')
  ]
  const replayed = [
    ids[0],
    await message(bob, 3, 'bob to carol'),
    await message(bob, 2, 'bob to himself'),
    await message(alice, 2, 'from alice')
  ]
  t.notOk(replayed.includes(ids[1]), 'a conversation bob is not in is not expected')
  t.not(before, since)

  const laptop = connect(2, { since })
  await idle()
  t.strictSame(messagesOf(laptop.socket).map((frame) => frame.id), replayed, 'after the id (exclusive), to and from bob, in order')
  t.strictSame(textsOf(laptop.socket), ['from carol', 'bob to carol', 'bob to himself', 'from alice'])

  const live = await message(carol, 2, 'live')
  await idle()
  t.strictSame(messagesOf(laptop.socket).map((frame) => frame.id), [...replayed, live])

  const fromStart = connect(2, { since: '0' })
  const upToDate = connect(2, { since: live })
  await idle()
  t.strictSame(textsOf(fromStart.socket),
    ['before', 'the last one the laptop saw', 'from carol', 'bob to carol', 'bob to himself', 'from alice', 'live'], 'since 0: everything')
  t.strictSame(upToDate.socket.sent, [], 'since the newest: nothing')
})

test('since: messages that arrive while the replay query runs are delivered once, after the replayed ones, in order', async (t) => {
  const store = createMemoryMessageStore()
  const queries = holdCalls<SinceQuery, StoredMessage[]>()
  const { connect, idle, message } = setup(t, { store, messages: storeView(store, { since: queries.fn }) })
  const alice = connect(1)
  const aliceQuery = await queries.call(0)
  aliceQuery.resolve(await store.since(aliceQuery.args))
  await idle()
  const old = [await message(alice, 2, 'old 1'), await message(alice, 2, 'old 2')]

  const bob = connect(2)
  const bobQuery = await queries.call(1)
  t.match(bobQuery.args, { userId: 2, after: '0' })
  // Stored and delivered after the query started, and read by it.
  const readByTheQuery = await message(alice, 2, 'live 1')
  const page = await store.since(bobQuery.args)
  t.strictSame(page.map(({ id }) => id), [...old, readByTheQuery], 'the query result includes the first live message')
  // Stored after the query read the store: only the live path carries it.
  const afterTheRead = await message(alice, 2, 'live 2')
  bob.send({ type: 'message', to: 1, text: 'sent by bob during the replay', id: 'bob-1' })
  // Waiting for what must not happen: a turn of the event loop for anything to reach bob, or bob's frame to be handled, early.
  await settled()
  t.strictSame(bob.socket.sent, [], 'held back while the replay query runs')
  t.equal(textsOf(alice.socket).length, 0, 'bob\'s frame waits for his replay')

  bobQuery.resolve(page)
  await idle()
  const live = await message(alice, 2, 'live 3')
  await idle()
  t.strictSame(textsOf(bob.socket), ['old 1', 'old 2', 'live 1', 'live 2', 'live 3'])
  t.strictSame(messagesOf(bob.socket).map((frame) => frame.id), [...old, readByTheQuery, afterTheRead, live], 'each once, in id order')
  t.match(frames(bob.socket).map((frame) => frame.type), ['message', 'message', 'message', 'message', 'ack', 'message'],
    'bob\'s own frame is answered after his replay')
  t.strictSame(textsOf(alice.socket), ['sent by bob during the replay'])
})

test('since: a replay longer than one page arrives whole, in order, each message once', async (t) => {
  const store = createMemoryMessageStore()
  const queries: Array<{ query: SinceQuery, page: StoredMessage[] }> = []
  const { connect, idle } = setup(t, {
    store,
    messageBurst: 5000,
    messages: storeView(store, {
      since: async (query) => {
        const page = await store.since(query)
        queries.push({ query, page })
        return page
      }
    })
  })
  const alice = connect(1)
  await idle()
  const count = 1201
  for (let i = 0; i < count; i++) alice.send(`2:${i}`)
  await idle()
  const acked = acksOf(alice.socket).map((frame) => frame.id)
  t.equal(acked.length, count)
  queries.length = 0

  const bob = connect(2)
  await idle()
  t.strictSame(textsOf(bob.socket), Array.from({ length: count }, (_, i) => String(i)), 'all, in order')
  t.strictSame(messagesOf(bob.socket).map((frame) => frame.id), acked, 'with their ids, none twice')
  t.ok(queries.length > 2, `read in pages (${queries.length} queries)`)
  let delivered = 0
  for (const [index, { query, page }] of queries.entries()) {
    t.ok(page.length <= query.limit, `page ${index} within its limit`)
    t.equal(query.after, index === 0 ? '0' : acked[delivered - 1], `page ${index} starts after the last message of the one before`)
    delivered += page.length
  }
  t.equal(delivered, count)
  t.ok((queries.at(-1)?.page.length ?? 0) < (queries[0]?.query.limit ?? 0), 'the last page is a short one, which ends the replay')
})

test('since: a text-format client gets replayed messages as "from:text"', async (t) => {
  const { connect, idle, message } = setup(t)
  const alice = connect(1)
  const carol = connect(3)
  await idle()
  await message(alice, 2, 'hello: there')
  await message(carol, 2, '\u{1F600} ok')
  const bob = connect(2, { format: 'text', keepWelcome: true })
  await idle()
  t.strictSame(bob.socket.sent, ['1:hello: there', '3:\u{1F600} ok'])
  const bobAgain = connect(2, { format: 'text', since: '0' })
  await idle()
  t.strictSame(bobAgain.socket.sent, ['1:hello: there', '3:\u{1F600} ok'], 'with since too')
})

test('since: a failing replay query is reported and closes the socket with 1011', async (t) => {
  const store = createMemoryMessageStore()
  const failure = new Error('select failed')
  const { connect, errors } = setup(t, { store, messages: storeView(store, { since: async () => { throw failure } }) })
  const bob = connect(2, { since: '0' })
  t.match(await bob.socket.closed, { code: 1011 })
  t.strictSame(errors, [failure])
  t.strictSame(bob.socket.sent, [])
})

test('catch-up: a since replay that never finishes does not let another socket skip what the user missed', async (t) => {
  const store = createMemoryMessageStore()
  const bobSince = holdCalls<SinceQuery, StoredMessage[]>()
  let holdBob = false
  const since = (query: SinceQuery) => (holdBob && query.userId === 2 ? bobSince.fn(query) : store.since(query))
  const { chat, connect, idle, message } = setup(t, { store, messages: storeView(store, { since }) })
  const alice = connect(1)
  await idle()
  const missed = [await message(alice, 2, 'm1'), await message(alice, 2, 'm2')]

  // Bob's tablet resumes with since=0, but its replay is slow.
  holdBob = true
  const tablet = connect(2, { since: '0' })
  await bobSince.call(0)
  holdBob = false
  // His phone connects meanwhile: the tablet has not caught up, so the phone must.
  const phone = connect(2)
  await idle()
  t.strictSame(messagesOf(phone.socket).map((frame) => frame.id), missed, 'the phone gets what Bob missed')
  const live = await message(alice, 2, 'm3')
  await idle()

  tablet.disconnect()
  phone.disconnect()
  await chat.drain()
  const bobLater = connect(2)
  await idle()
  t.strictSame(messagesOf(bobLater.socket), [], 'the phone caught up, so nothing is owed')
  t.equal(messagesOf(phone.socket).at(-1)?.id, live)
})

test('seen-through: set when the last socket closes to the newest message received, so a reconnect replays only what came after', async (t) => {
  const { chat, connect, idle, message, store } = setup(t)
  const alice = connect(1)
  const bobPhone = connect(2)
  const bobLaptop = connect(2)
  await idle()
  await message(alice, 2, 'm1')
  const m2 = await message(alice, 2, 'm2')
  await idle()

  bobLaptop.disconnect()
  await chat.drain()
  t.equal(await store.seenThrough(2), null, 'not moved while another device is online')
  bobPhone.disconnect()
  await chat.drain()
  t.equal(await store.seenThrough(2), m2, 'the newest message bob received')

  const m3 = await message(alice, 2, 'm3')
  const bobAgain = connect(2)
  await idle()
  t.strictSame(messagesOf(bobAgain.socket).map((frame) => frame.id), [m3], 'only what came after')

  // What bob sends counts as seen by him, and is not replayed to him.
  const m4 = await message(bobAgain, 1, 'm4')
  bobAgain.disconnect()
  await chat.drain()
  t.equal(await store.seenThrough(2), m4)
  const bobOnceMore = connect(2)
  await idle()
  t.strictSame(bobOnceMore.socket.sent, [])
})

test('catch-up: a device that connects while another is still catching up replays too, and the cursor waits for a finished catch-up', async (t) => {
  const store = createMemoryMessageStore()
  const seenThrough = holdCalls<number, string | null>()
  const { chat, connect, idle, message } = setup(t, { store, messages: storeView(store, { seenThrough: seenThrough.fn }) })
  const alice = connect(1)
  // Alice's own first connection reads her cursor too.
  const aliceRead = await seenThrough.call(0)
  aliceRead.resolve(null)
  await idle()
  const m1 = await message(alice, 2, 'm1 while bob is away')

  // Bob's phone starts catching up, but its cursor read is slow.
  const bobPhone = connect(2)
  const phoneRead = await seenThrough.call(1)
  // His laptop connects meanwhile: it must catch up as well, not just go live.
  const bobLaptop = connect(2)
  const laptopRead = await seenThrough.call(2)
  laptopRead.resolve(await store.seenThrough(2))
  await idle()
  t.strictSame(messagesOf(bobLaptop.socket).map((frame) => frame.id), [m1], 'the laptop got the missed message')

  const m2 = await message(alice, 2, 'm2 live')
  await idle()
  t.strictSame(messagesOf(bobLaptop.socket).map((frame) => frame.id), [m1, m2])

  // Both go away before the phone's catch-up ever finished: the laptop's did, so the cursor moves.
  bobPhone.disconnect()
  bobLaptop.disconnect()
  phoneRead.resolve(null)
  await chat.drain()
  t.equal(await store.seenThrough(2), m2)
})

/** Bob gets m1; then his only socket starts closing (still registered) and m2 is sent to him. */
async function messageWhileClosing (t: Test) {
  const chatSetup = setup(t)
  const { connect, idle, message } = chatSetup
  const alice = connect(1)
  const bob = connect(2)
  await idle()
  const m1 = await message(alice, 2, 'm1')
  await idle()
  // The client started the closing handshake; ws reports the 'close' event only when it completes.
  bob.socket.readyState = WebSocket.CLOSING
  const m2 = await message(alice, 2, 'm2')
  await idle()
  return { ...chatSetup, alice, bob, m1, m2 }
}

test('seen-through: a message handed to a closing socket is not counted as received, and is replayed on the next connection', async (t) => {
  const { chat, connect, idle, store, bob, m1, m2 } = await messageWhileClosing(t)
  t.strictSame(messagesOf(bob.socket).map((frame) => frame.id), [m1], 'nothing written to the closing socket')
  t.strictSame(bob.socket.dropped, [], 'not even attempted')
  bob.disconnect()
  await chat.drain()
  t.equal(await store.seenThrough(2), m1)

  const bobAgain = connect(2)
  await idle()
  t.strictSame(messagesOf(bobAgain.socket).map((frame) => frame.id), [m2])
})

test('catch-up: a new socket while the only other one is still closing replays what the closing one missed', async (t) => {
  // Bob's socket is closing but its TCP connection lingers: it stays registered and misses m2.
  const { connect, idle, message, alice, bob, m1, m2 } = await messageWhileClosing(t)

  const bobAgain = connect(2)
  await idle()
  t.strictSame(messagesOf(bobAgain.socket).map((frame) => frame.id), [m2], 'the new socket gets m2, and not m1 again')
  const m3 = await message(alice, 2, 'm3')
  await idle()
  t.strictSame(messagesOf(bobAgain.socket).map((frame) => frame.id), [m2, m3], 'then goes live')
  t.strictSame(messagesOf(bob.socket).map((frame) => frame.id), [m1], 'the closing socket got nothing more')
})

test('seen-through: a socket closed by the server mid-way counts only what it received before', async (t) => {
  const { chat, connect, idle, message, store } = setup(t)
  const alice = connect(1)
  const bob = connect(2)
  await idle()
  const m1 = await message(alice, 2, 'm1')
  bob.session.connection.close(1001, 'server shutting down')
  const m2 = await message(alice, 2, 'm2')
  bob.disconnect()
  await chat.drain()
  t.equal(await store.seenThrough(2), m1)
  const bobAgain = connect(2)
  await idle()
  t.strictSame(messagesOf(bobAgain.socket).map((frame) => frame.id), [m2])
})

test('drain waits for the cursor writes of users who went offline', async (t) => {
  const store = createMemoryMessageStore()
  const marks = holdCalls<[number, string], void>()
  const { chat, connect, idle, message, errors } = setup(t, {
    store,
    messages: storeView(store, { markSeen: (userId, id) => marks.fn([userId, id]) })
  })
  await chat.drain()
  t.pass('nothing to wait for at first')

  const alice = connect(1)
  const bob = connect(2)
  const carol = connect(3)
  await idle()
  const toBob = await message(alice, 2, 'for bob')
  const toCarol = await message(alice, 3, 'for carol')
  await idle()
  bob.disconnect()
  carol.disconnect()
  const bobMark = await marks.call(0)
  const carolMark = await marks.call(1)
  t.strictSame([bobMark.args, carolMark.args], [[2, toBob], [3, toCarol]])

  let drained = false
  const draining = chat.drain().then(() => { drained = true })
  bobMark.resolve()
  // Waiting for what must not happen: drain resolving while carol's cursor is still being written.
  await settled()
  t.equal(drained, false, 'not while a cursor write is in flight')
  const failure = new Error('update failed')
  carolMark.reject(failure)
  await draining
  t.equal(drained, true, 'a failed write ends the wait too')
  t.strictSame(errors, [failure], 'and is reported')
})

/**
 * The cluster of one node, with a hand on what the chat is told: the test
 * plays the other nodes and the bus. (The Redis cluster itself is tested in
 * test/src/stores/cluster.test.ts and test/routes/cluster.test.ts.)
 */
function steeredCluster ({ nodes = 2 }: { nodes?: number } = {}) {
  const local = createLocalCluster()
  const published: EncodedMessage[] = []
  let listener: ClusterEvents | undefined
  const cluster: Cluster = {
    ...local,
    attach (events) {
      listener = events
      local.attach(events)
    },
    publish (message) { published.push(message) },
    nodeCount: () => nodes
  }
  return {
    cluster,
    published,
    get events (): ClusterEvents {
      if (listener === undefined) throw new Error('the chat did not attach')
      return listener
    }
  }
}

/** A message as another node would have stored and sent it, made now. */
function remoteMessage (from: number, to: number, text: string, idAt = Date.now()): { encoded: EncodedMessage, stored: StoredMessage } {
  // Node 7's ids: another node's generator, at the time given.
  const id = createIdGenerator({ nodeId: 7, clock: () => idAt }).next()
  const stored: StoredMessage = { id, from, to, text, sentAt: new Date(idAt).toISOString(), ref: null }
  return { encoded: encodeMessage(stored), stored }
}

test('watch answers with the state of each user, then pushes changes; a user goes offline with their last connection', async (t) => {
  const { connect, idle } = setup(t)
  const alice = connect(1)
  const bobPhone = connect(2)
  alice.send({ type: 'watch', users: [2, 3, 2] })
  await idle()
  t.strictSame(frames(alice.socket), [
    { type: 'presence', userId: 2, online: true },
    { type: 'presence', userId: 3, online: false }
  ], 'each watched user once, in the order asked')

  const carol = connect(3)
  const bobLaptop = connect(2)
  bobPhone.disconnect()
  await idle()
  t.strictSame(frames(alice.socket).slice(2), [{ type: 'presence', userId: 3, online: true }], 'bob still has his laptop')
  bobLaptop.disconnect()
  carol.disconnect()
  await idle()
  t.strictSame(frames(alice.socket).slice(3), [
    { type: 'presence', userId: 2, online: false },
    { type: 'presence', userId: 3, online: false }
  ])
})

test('a new watch replaces the last one, an empty one stops watching, and text sockets are sent no presence', async (t) => {
  const { connect, idle } = setup(t)
  const alice = connect(1)
  const textAlice = connect(1, { format: 'text' })
  alice.send({ type: 'watch', users: [2] })
  textAlice.send({ type: 'watch', users: [2] })
  await idle()
  alice.send({ type: 'watch', users: [3] })
  await idle()
  connect(2)
  const carol = connect(3)
  await idle()
  alice.send({ type: 'watch', users: [] })
  await idle()
  carol.disconnect()
  await idle()
  t.strictSame(frames(alice.socket), [
    { type: 'presence', userId: 2, online: false },
    { type: 'presence', userId: 3, online: false },
    { type: 'presence', userId: 3, online: true }
  ])
  t.strictSame(textAlice.socket.sent, [])
})

test('a presence change that comes while the watch is being answered is not undone by the older answer', async (t) => {
  const steered = steeredCluster()
  const states = holdCalls<readonly number[], boolean[]>()
  steered.cluster.onlineStates = states.fn
  const { connect, idle } = setup(t, { cluster: steered.cluster })
  const alice = connect(1)
  alice.send({ type: 'watch', users: [2, 3] })
  const asked = await states.call(0)
  steered.events.presence(2, true)
  asked.resolve([false, false])
  await idle()
  t.strictSame(frames(alice.socket), [
    { type: 'presence', userId: 2, online: true },
    { type: 'presence', userId: 3, online: false }
  ])
})

test('a message from another node reaches the recipient and the sender\'s devices here, counted as remote', async (t) => {
  const steered = steeredCluster()
  const delivered: string[] = []
  const { connect, idle } = setup(t, { cluster: steered.cluster, observer: { accepted: () => {}, delivered: (route) => { delivered.push(route) } } })
  const bob = connect(2)
  const aliceLaptop = connect(1)
  const carol = connect(3)
  await idle()
  steered.events.message(remoteMessage(1, 2, 'from the other node').encoded)
  await idle()
  t.strictSame(textsOf(bob.socket), ['from the other node'])
  t.strictSame(textsOf(aliceLaptop.socket), ['from the other node'])
  t.strictSame(textsOf(carol.socket), [])
  t.strictSame(delivered, ['remote', 'remote'])
})

test('a message sent here is published once for the other nodes, and counted as accepted and delivered locally', async (t) => {
  const steered = steeredCluster()
  const seen: string[] = []
  const { connect, idle, message } = setup(t, {
    cluster: steered.cluster,
    observer: { accepted: () => { seen.push('accepted') }, delivered: (route) => { seen.push(route) } }
  })
  const alice = connect(1)
  connect(2)
  await idle()
  const id = await message(alice, 2, 'hello')
  await message(alice, 2, 'hello', 'same-ref')
  await message(alice, 2, 'hello', 'same-ref')
  t.strictSame(steered.published.map((published) => published.id)[0], id)
  t.equal(steered.published.length, 2, 'the resend is not published again')
  t.strictSame(seen, ['local', 'accepted', 'local', 'accepted'])
})

test('an ended session announced by another node closes its sockets here', async (t) => {
  const steered = steeredCluster()
  const { connect, idle } = setup(t, { cluster: steered.cluster })
  const phone = connect(1)
  const other = connect(1, { identity: accessTokens.verify(accessTokens.issue(1, 'another-session').token) })
  await idle()
  steered.events.sessionRevoked(1, 'session-of-1')
  t.match(phone.socket.closes, [{ code: 1008 }])
  t.strictSame(other.socket.closes, [])
})

test('during a bus outage live delivery pauses; afterwards what was missed is replayed from the store, each message once', async (t) => {
  const steered = steeredCluster()
  const { connect, idle, message, store } = setup(t, { cluster: steered.cluster })
  const alice = connect(1)
  const bob = connect(2)
  await idle()
  const before = await message(alice, 2, 'before')
  await idle()

  steered.events.interrupted(firstIdAt(Date.now() - 5000))
  // Stored by another node, published while this node's subscriber was gone: lost on the bus.
  const lost = remoteMessage(3, 2, 'lost on the bus', Date.now() - 10)
  await store.save([lost.stored])
  // Sent here during the outage: acknowledged, but its live copy waits for the resync.
  const during = await message(alice, 2, 'during')
  await idle()
  t.strictSame(textsOf(bob.socket), ['before'], 'nothing live while paused')

  steered.events.restored(firstIdAt(idTime(before) - 1000))
  await bob.socket.until(() => textsOf(bob.socket).length === 3)
  await idle()
  t.strictSame(textsOf(bob.socket), ['before', 'lost on the bus', 'during'], 'each once, in id order, "before" not again')
  t.strictSame(textsOf(alice.socket), [], 'the sender is not sent her own messages back')
  t.ok(acksOf(alice.socket).some((ack) => ack.id === during))

  await message(alice, 2, 'live again')
  await idle()
  t.strictSame(textsOf(bob.socket).at(-1), 'live again')
})

test('a user who leaves during a bus outage keeps a cursor no newer than the gap', async (t) => {
  const steered = steeredCluster()
  const { connect, idle, message, store } = setup(t, { cluster: steered.cluster })
  const alice = connect(1)
  const bob = connect(2)
  await idle()
  const gapFrom = firstIdAt(Date.now() - 5000)
  steered.events.interrupted(gapFrom)
  await message(bob, 1, 'sent while the bus was down')
  bob.disconnect()
  alice.disconnect()
  await idle()
  t.equal(await store.seenThrough(2), gapFrom)
})

test('after a bus outage a socket whose session ended meanwhile is closed', async (t) => {
  const steered = steeredCluster()
  const { connect, idle } = setup(t, { cluster: steered.cluster, endedSessions: ['session-of-2'] })
  const alice = connect(1)
  const bob = connect(2)
  await idle()
  steered.events.interrupted(firstIdAt(Date.now() - 5000))
  steered.events.restored(firstIdAt(Date.now() - 5000))
  await bob.socket.closed
  t.match(bob.socket.closes, [{ code: 1008 }])
  t.strictSame(alice.socket.closes, [])
})

test('with several nodes a catch-up starts a second before the cursor, since messages may cross nodes out of order', async (t) => {
  const steered = steeredCluster({ nodes: 2 })
  const { connect, idle, store } = setup(t, { cluster: steered.cluster })
  const now = Date.now()
  const early = remoteMessage(3, 2, 'made first, arrived late', now - 400)
  const later = remoteMessage(4, 2, 'made second', now - 200)
  await store.save([early.stored, later.stored])
  const bob = connect(2, { since: later.stored.id })
  await idle()
  t.strictSame(textsOf(bob.socket), ['made first, arrived late', 'made second'])
})

test('on one node a catch-up starts exactly after the cursor', async (t) => {
  const steered = steeredCluster({ nodes: 1 })
  const { connect, idle, store } = setup(t, { cluster: steered.cluster })
  const now = Date.now()
  const early = remoteMessage(3, 2, 'early', now - 400)
  const later = remoteMessage(4, 2, 'later', now - 200)
  await store.save([early.stored, later.stored])
  const bob = connect(2, { since: early.stored.id })
  await idle()
  t.strictSame(textsOf(bob.socket), ['later'])
})

test('after a bus outage watchers are told what changed meanwhile, and a change during that question is not undone', async (t) => {
  const steered = steeredCluster()
  const answers: boolean[][] = []
  const states = holdCalls<readonly number[], boolean[]>()
  steered.cluster.onlineStates = async (userIds) => answers.length > 0 ? answers.shift() as boolean[] : await states.fn(userIds)
  const { connect, idle } = setup(t, { cluster: steered.cluster })
  const alice = connect(1)
  alice.send({ type: 'watch', users: [2, 3] })
  ;(await states.call(0)).resolve([false, false])
  await idle()

  steered.events.interrupted(firstIdAt(Date.now() - 5000))
  steered.events.restored(firstIdAt(Date.now() - 5000))
  const asked = await states.call(1)
  // User 3 came online while the outage ended (missed on the bus); user 2 comes and goes during the question.
  steered.events.presence(2, true)
  steered.events.presence(2, false)
  steered.events.presence(2, true)
  asked.resolve([false, true])
  await idle()
  t.strictSame(frames(alice.socket), [
    { type: 'presence', userId: 2, online: false },
    { type: 'presence', userId: 3, online: false },
    { type: 'presence', userId: 2, online: true },
    { type: 'presence', userId: 2, online: false },
    { type: 'presence', userId: 2, online: true },
    { type: 'presence', userId: 3, online: true }
  ], 'the older answer for user 2 is not sent after the newer events')
})

test('a second outage during a resync keeps the cursor ceiling until the last resync has ended', async (t) => {
  const steered = steeredCluster()
  const store = createMemoryMessageStore()
  const reads = holdCalls<SinceQuery, StoredMessage[]>()
  const held = new Set<number>()
  const { connect, idle, message } = setup(t, {
    cluster: steered.cluster,
    store,
    messages: storeView(store, { since: (query) => held.has(query.userId) ? reads.fn(query) : store.since(query) })
  })
  connect(1)
  connect(2)
  await idle()
  const firstGap = firstIdAt(Date.now() - 5000)
  steered.events.interrupted(firstGap)
  held.add(2)
  steered.events.restored(firstGap)
  const bobRead = await reads.call(0)
  // Carol comes online after the first outage; a second one pauses her, and her resync is slow.
  const carol = connect(3)
  await idle()
  const secondGap = firstIdAt(Date.now() - 1000)
  steered.events.interrupted(secondGap)
  held.add(3)
  steered.events.restored(secondGap)
  const carolRead = await reads.call(1)
  t.equal(carolRead.args.userId, 3)

  // Bob's resync (both rounds) ends; carol's does not, yet.
  held.delete(2)
  bobRead.resolve(await store.since(bobRead.args))
  await idle()
  // Carol's own message is her newest id, but she has not been sent what the second outage hid.
  await message(carol, 1, 'sent while her resync reads')
  carol.disconnect()
  await idle()
  const cursor = await store.seenThrough(3)
  t.ok(cursor !== null && compareIds(cursor, secondGap) <= 0, `carol's cursor (${String(cursor)}) stays at or before the gap`)
  carolRead.resolve([])
})

test('a socket whose session cannot be checked after a bus outage is closed, not left paused', async (t) => {
  const steered = steeredCluster()
  let failing = false
  const { connect, idle, errors } = setup(t, {
    cluster: steered.cluster,
    isSessionLive: async () => {
      if (failing) throw new Error('Redis is still down')
      return true
    }
  })
  const bob = connect(2)
  await idle()
  steered.events.interrupted(firstIdAt(Date.now() - 5000))
  failing = true
  steered.events.restored(firstIdAt(Date.now() - 5000))
  await bob.socket.closed
  t.match(bob.socket.closes, [{ code: 1011 }], 'the client reconnects and catches up')
  t.match(errors, [{ message: 'Redis is still down' }])
})

test('a message routed late to other nodes moves its users\' cursors back to just before it', async (t) => {
  const steered = steeredCluster()
  const { idle, store } = setup(t, { cluster: steered.cluster })
  const late = remoteMessage(1, 2, 'routed late', Date.now() - 2000).stored
  const newer = remoteMessage(3, 2, 'delivered meanwhile', Date.now() - 1000).stored
  await store.markSeen(2, newer.id)
  steered.events.rerouted([{ id: late.id, from: 1, to: 2 }])
  await idle()
  t.equal(await store.seenThrough(2), previousId(late.id), 'the recipient will be sent it at the next catch-up')
  t.equal(await store.seenThrough(1), null, 'a user without a cursor gets none')
})

test('the heartbeat pings every socket and drops one that left two pings unanswered; a pong resets the count', async (t) => {
  const { chat, connect, idle } = setup(t)
  const alice = connect(1)
  const bob = connect(2)
  await idle()
  chat.heartbeat()
  chat.heartbeat()
  alice.session.pong()
  chat.heartbeat()
  t.equal(bob.socket.terminated, true, 'bob answered neither of the two pings before')
  t.equal(alice.socket.terminated, false, 'alice answered')
  t.equal(alice.socket.pings, 3)
  t.equal(bob.socket.pings, 2, 'not pinged again: dropped instead')
})

test('a socket dropped for silence does not move the cursor: the next connection catches up from the stored one', async (t) => {
  const { chat, connect, idle, message, store } = setup(t)
  const alice = connect(1)
  const bob = connect(2)
  await idle()
  const first = await message(alice, 2, 'received')
  bob.disconnect()
  await idle()
  t.equal(await store.seenThrough(2), first)
  const bobAgain = connect(2)
  await idle()
  await message(alice, 2, 'perhaps never read')
  chat.heartbeat()
  chat.heartbeat()
  chat.heartbeat()
  t.equal(bobAgain.socket.terminated, true)
  bobAgain.disconnect()
  await idle()
  t.equal(await store.seenThrough(2), first, 'the cursor stays where it was')
  const bobLater = connect(2)
  await idle()
  t.strictSame(textsOf(bobLater.socket), ['perhaps never read'])
})

test('a socket whose unsent frames pass the cap is closed with 1013, dropped if it does not answer, and trusted with no cursor', async (t) => {
  const { connect, idle, message, store } = setup(t)
  const alice = connect(1)
  const bob = connect(2)
  const carol = connect(3)
  await idle()
  bob.socket.bufferedAmount = 1_048_577
  await message(alice, 2, 'one too many')
  await message(alice, 3, 'carol reads fine')
  await idle()
  t.match(bob.socket.closes, [{ code: 1013 }])
  t.strictSame(textsOf(carol.socket), ['carol reads fine'], 'other sockets are unaffected')
  await until('the slow socket is dropped after the close wait', () => bob.socket.terminated, 10_000)
  bob.disconnect()
  await idle()
  t.equal(await store.seenThrough(2), null, 'no cursor written on its word')
})

test('a replay goes no faster than the socket drains: past half the cap it waits for the network; a close ends the wait', async (t) => {
  const { connect, idle, message } = setup(t)
  const alice = connect(1)
  await idle()
  for (const text of ['one', 'two', 'three']) await message(alice, 2, text)

  const bob = connect(2)
  // Half the 1 MiB cap and more is queued: what is sent next waits until the network took it.
  bob.socket.bufferedAmount = 600_000
  await idle()
  t.strictSame(textsOf(bob.socket), ['one'], 'one frame handed over, and the replay waits for it to leave')
  t.strictSame(bob.socket.closes, [], 'a long replay is not a slow consumer')
  await message(alice, 2, 'live meanwhile')
  bob.socket.flush()
  await idle()
  t.strictSame(textsOf(bob.socket), ['one', 'two', 'three', 'live meanwhile'], 'then the rest, and what came meanwhile after it')

  for (const text of ['a', 'b']) await message(alice, 3, text)
  const carolAgain = connect(3)
  carolAgain.socket.bufferedAmount = 600_000
  await idle()
  t.strictSame(textsOf(carolAgain.socket), ['a'], 'a replay waiting on the network')
  carolAgain.disconnect()
  await idle()
  const carolLast = connect(3)
  await idle()
  // An unfinished catch-up moves no cursor, so the next socket starts again from the stored one.
  t.strictSame(textsOf(carolLast.socket), ['a', 'b'], 'the wait ends with its socket; the next one catches up in full')
})

test('a live message that arrives during a paced replay longer than the recent-ids window is sent once', async (t) => {
  const { connect, idle, message } = setup(t, { recentWindowMs: 50 })
  const alice = connect(1)
  await idle()
  // One store page and one more: the second page is read after the live message was stored.
  const backlog = Array.from({ length: 501 }, (_, index) => `backlog ${index}`)
  for (const text of backlog) await message(alice, 2, text)
  const bob = connect(2)
  bob.socket.bufferedAmount = 600_000
  await idle()
  await message(alice, 2, 'live meanwhile')
  // Longer than the window: the replay meets the live message in the store only now.
  await sleep(120)
  bob.socket.flush()
  await idle()
  t.strictSame(textsOf(bob.socket), [...backlog, 'live meanwhile'], 'each once, in order')
})

test('a bus outage during a paced replay loses nothing that was held back', async (t) => {
  const steered = steeredCluster()
  const { connect, idle, message } = setup(t, { cluster: steered.cluster })
  const alice = connect(1)
  await idle()
  await message(alice, 2, 'stored')
  const bob = connect(2)
  bob.socket.bufferedAmount = 600_000
  await idle()
  const heldId = await message(alice, 2, 'held back')
  // The gap starts after the held-back message: the resync will not replay it.
  steered.events.interrupted(firstIdAt(idTime(heldId) + 1))
  bob.socket.flush()
  await idle()
  steered.events.restored(firstIdAt(idTime(heldId) + 1))
  await idle()
  t.strictSame(textsOf(bob.socket), ['stored', 'held back'])
})

test('after a bus outage, sockets whose replays wait on slow clients do not hold up the others', async (t) => {
  const steered = steeredCluster()
  const { connect, idle, message } = setup(t, { cluster: steered.cluster })
  const alice = connect(1)
  const slow = Array.from({ length: 40 }, (_, index) => connect(100 + index))
  const healthy = connect(2)
  await idle()
  const gapFrom = firstIdAt(Date.now() - 1000)
  steered.events.interrupted(gapFrom)
  for (const [index] of slow.entries()) await message(alice, 100 + index, `for slow ${index}`)
  await message(alice, 100, 'a second one')
  await message(alice, 2, 'for healthy')
  for (const client of slow) client.socket.bufferedAmount = 600_000
  steered.events.restored(gapFrom)
  await healthy.socket.until(() => textsOf(healthy.socket).length > 0)
  t.strictSame(textsOf(healthy.socket), ['for healthy'], 'the healthy socket is resynced while 40 others wait on their clients')
})

test('a replay whose client does not drain in time is dropped as slow (1013), and trusted with no cursor', async (t) => {
  const { connect, idle, message, store } = setup(t, { replayDrainWaitMs: 50 })
  const alice = connect(1)
  await idle()
  for (const text of ['one', 'two']) await message(alice, 2, text)
  const bob = connect(2)
  bob.socket.bufferedAmount = 600_000
  await bob.socket.closed
  t.match(bob.socket.closes, [{ code: 1013 }])
  bob.disconnect()
  await idle()
  t.equal(await store.seenThrough(2), null, 'no cursor written on its word')
})

test('frames that wait behind a paced catch-up are capped at the burst; past it they are RATE_LIMITED', async (t) => {
  const { connect, idle, message } = setup(t, { messageBurst: 5 })
  const alice = connect(1)
  await idle()
  await message(alice, 2, 'backlog')
  const bob = connect(2)
  bob.socket.bufferedAmount = 600_000
  await idle()
  for (let index = 0; index < 7; index++) bob.send({ type: 'ping' })
  await idle()
  t.strictSame(frames(bob.socket).filter((frame) => frame.type !== 'message').map((frame) => frame.code ?? frame.type), ['RATE_LIMITED', 'RATE_LIMITED'],
    'five wait; the sixth and seventh are refused at once')
  bob.socket.flush()
  await idle()
  t.equal(frames(bob.socket).filter((frame) => frame.type === 'pong').length, 5, 'the five are answered once the catch-up is done')
})

test('the frames one turn sends a socket go out in one write: its transport is corked at the first and uncorked when the turn ends', async (t) => {
  const { connect, idle } = setup(t)
  const senders = [connect(1), connect(3), connect(4)]
  const bob = connect(2)
  await idle()
  const calls: string[] = []
  const transport = {
    cork: () => { calls.push('cork') },
    uncork: () => { calls.push(`uncork after ${bob.socket.sent.length} frames`) }
  }
  Object.assign(bob.socket, { _socket: transport })
  // Three senders, so the three messages are stored in one batch and routed in one turn.
  for (const [index, text] of ['one', 'two', 'three'].entries()) senders[index]?.send({ type: 'message', to: 2, text })
  await idle()
  t.strictSame(calls, ['cork', 'uncork after 3 frames'], 'corked once, uncorked once, after all three')
  t.strictSame(textsOf(bob.socket), ['one', 'two', 'three'])
})

test('sockets that watch no one share nothing: a watch and an unwatch elsewhere never reach them', async (t) => {
  const steered = steeredCluster()
  const { connect, idle } = setup(t, { cluster: steered.cluster })
  const watcher = connect(1)
  const bystander = connect(3)
  await idle()
  watcher.send({ type: 'watch', users: [2] })
  await idle()
  steered.events.presence(2, true)
  watcher.send({ type: 'watch', users: [] })
  await idle()
  steered.events.presence(2, false)
  await idle()
  t.strictSame(frames(watcher.socket).filter((frame) => frame.type === 'presence'), [
    { type: 'presence', userId: 2, online: false },
    { type: 'presence', userId: 2, online: true }
  ], 'the watcher got the state and the change while it watched')
  t.strictSame(frames(bystander.socket), [], 'the bystander got nothing')
  bystander.send({ type: 'watch', users: [4] })
  await idle()
  t.strictSame(frames(bystander.socket), [{ type: 'presence', userId: 4, online: false }], 'and its own first watch starts clean')
})

test('the cork holds at most 16 KiB: a burst to one socket goes out in pieces, and a socket that reads is not taken for slow', async (t) => {
  const { connect, idle } = setup(t)
  const senders = Array.from({ length: 200 }, (_, index) => connect(10 + index))
  const bob = connect(2)
  await idle()
  const calls: string[] = []
  // The worst case for the count: nothing queued is taken until the uncork, and then all of it.
  Object.assign(bob.socket, {
    _socket: {
      cork: () => { calls.push(`cork at ${bob.socket.sent.length}`) },
      uncork: () => {
        calls.push(`uncork at ${bob.socket.sent.length}`)
        bob.socket.bufferedAmount = 0
      }
    }
  })
  const send = bob.socket.send.bind(bob.socket)
  bob.socket.send = (data, sent) => {
    send(data, sent)
    bob.socket.bufferedAmount += 6_000
  }
  // 200 frames of 6 kB in one turn: 1.2 MB, over the 1 MiB cap if the cork held it all.
  for (const sender of senders) sender.send({ type: 'message', to: 2, text: 'x'.repeat(100) })
  await idle()
  t.strictSame(bob.socket.closes, [], 'not taken for a slow consumer')
  t.equal(textsOf(bob.socket).length, 200, 'every message sent')
  t.strictSame(calls.slice(0, 4), ['cork at 0', 'uncork at 3', 'cork at 3', 'uncork at 6'], 'uncorked each time more than 16 KiB was held')
  t.equal(calls.filter((call) => call.startsWith('cork')).length, calls.filter((call) => call.startsWith('uncork')).length, 'every cork has its uncork')
})
