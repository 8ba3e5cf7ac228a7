import { nextTick } from 'node:process'
import type { AccessTokenIdentity } from './access-tokens.js'
import type { Cluster } from './cluster.js'
import type { Connection, ConnectionRegistry, DeliveryRoute } from './connections.js'
import { compareIds, firstIdAt, idTime, previousId } from './ids.js'
import {
  CLOSE_CODES, PONG_FRAME, ackFrame, encodeMessage, errorFrame, parseClientFrame, presenceFrame, welcomeFrame,
  type ClientFrame, type EncodedMessage, type OutputFormat, type ProtocolError
} from './protocol.js'
import { createRecentIds } from './recent-ids.js'
import type { PublicUser } from './schemas.js'
import type { MessageStore, SaveOutcome, StoredMessage } from './stores/messages-memory.js'
import { createLimiter } from './limiter.js'
import { createTokenBucket } from './token-bucket.js'

/** The byte stream under a socket, which can hold writes back and hand them on together. */
interface Transport {
  cork (): void
  uncork (): void
}

/** The socket as the chat sees it: the `ws` WebSocket satisfies this. */
export interface Socket {
  readonly readyState: number
  /**
   * ws's own name for the TCP socket under it. Corked for the rest of the
   * event-loop turn at a socket's first frame, so the frames one turn sends
   * it (an ack, messages, a pong) leave in one write, not one each.
   */
  readonly _socket?: Transport | null
  /** Bytes queued for the peer and not yet handed to the network. */
  readonly bufferedAmount: number
  /** `sent` is called once the data is handed to the network, or with an error if it never will be. */
  send (data: string, sent?: (error?: Error) => void): void
  ping (): void
  close (code: number, reason: string): void
  terminate (): void
}

/** `WebSocket.OPEN`: only an open socket counts as having received a message. */
const OPEN = 1

/** Messages read from the store per query while replaying. */
const REPLAY_PAGE = 500

/** What the chat reports as it works (metrics). */
export interface ChatObserver {
  /** A new message was stored and acknowledged. */
  accepted (): void
  /** A message went out live to one socket, `latencyMs` after its id was made. */
  delivered (route: DeliveryRoute, latencyMs: number): void
}

export interface ChatDependencies {
  registry: ConnectionRegistry
  /** Presence and routing between nodes (a cluster of one without Redis). */
  cluster: Cluster
  /** Whether a user id names an account (asked only for recipients with no live connection). */
  userExists: (userId: number) => Promise<boolean>
  verifyAccessToken: (token: string) => AccessTokenIdentity
  /** Whether a login session still exists (not logged out, not revoked). */
  isSessionLive: (sessionId: string) => Promise<boolean>
  nextMessageId: () => string
  /** Stores one message durably (the caller batches); resolves once it is stored. */
  saveMessage: (message: StoredMessage) => Promise<SaveOutcome>
  messages: Pick<MessageStore, 'since' | 'seenThrough' | 'markSeen' | 'rewindSeen'>
  limits: {
    messageMaxChars: number
    messageRate: number
    messageBurst: number
    maxFrameBytes: number
    /** Bytes waiting to be sent to one socket before it is dropped as too slow. */
    maxBufferedBytes: number
  }
  /**
   * How long each socket remembers the ids it was sent, to drop late second
   * copies. With several nodes it must cover a bus outage's detection time.
   */
  recentWindowMs?: number
  /** How long a replay waits for its socket to drain before dropping it as slow (REPLAY_DRAIN_WAIT_MS). */
  replayDrainWaitMs?: number
  observer?: ChatObserver
  onError: (error: unknown) => void
}

export interface OpenOptions {
  user: PublicUser
  identity: AccessTokenIdentity
  format: OutputFormat
  /** Replay everything to or from the user after this message id, then go live. */
  since?: string
}

/** Failed saves remembered for routing a resend (the oldest are forgotten first). */
const MAX_UNROUTED = 10_000

/** Adds to a set that keeps at most `cap` entries, forgetting the oldest. */
function remember (set: Set<string>, value: string, cap: number): void {
  set.add(value)
  if (set.size > cap) set.delete(set.values().next().value as string)
}

function byteLength (data: Buffer | ArrayBuffer | Buffer[]): number {
  return Array.isArray(data) ? data.reduce((total, part) => total + part.byteLength, 0) : data.byteLength
}

/** Timers longer than this overflow Node's 32-bit delay; re-armed when they fire early. */
const MAX_TIMER_MS = 2_147_483_647

/** Without a bus, a late second copy of a message comes within moments of the first. */
export const LOCAL_RECENT_WINDOW_MS = 5000
/**
 * With several nodes, messages routed through different nodes may arrive a
 * moment out of id order: a catch-up starts this much before its cursor.
 */
const CROSS_NODE_SETTLE_MS = 1000
/** Sockets whose bus-outage checks run at once (each asks the stores). */
const RESYNC_CONCURRENCY = 32
/** Store reads of replays at once, node-wide: a reconnect storm does not flood the database. */
const REPLAY_READS_AT_ONCE = 32
/**
 * A replay waits for the socket's queue to drain; one that does not drain in
 * this long (half of WS_MAX_BUFFERED, 512 KiB by default: under 35 KB/s) is a
 * slow consumer.
 */
const REPLAY_DRAIN_WAIT_MS = 15_000

/**
 * What a socket that watches no one has, shared by all of them. Never written
 * to: writes happen only for a watched user, and watch() puts new maps in place first.
 */
const NOT_WATCHING = new Map<number, boolean | null>()
const NO_EVENTS = new Map<number, number>()

/** Bytes queued for a socket past which its frames of the turn so far go out at once. */
const CORK_MAX_BYTES = 16 * 1024

/** A socket closed for being too slow gets this long to finish the closing handshake. */
const SLOW_CLOSE_WAIT_MS = 3000

/** What a bus event, or the heartbeat, needs of one open socket. */
interface SessionControl {
  connection: Connection
  /** Pings the peer; drops it when the two pings before went unanswered. */
  heartbeat (): void
  /** The bus dropped messages: stop live delivery until `resync`. */
  pause (): void
  /** Replays what was stored after `gapFrom` that the socket was not sent, then goes live. */
  resync (gapFrom: string): Promise<void>
  /** A watched user's presence changed (or may have: `refresh` asks the cluster again). */
  presence (userId: number, online: boolean): void
  refreshWatch (): Promise<void>
}

/**
 * Routes messages to this node's connections and, through the cluster, to
 * other nodes'. A message is stored before it is acknowledged or delivered;
 * a connection first replays what its user missed, then goes live. `open`
 * binds one socket to a user and returns the handlers its events call.
 */
export function createChat (dependencies: ChatDependencies) {
  const { registry, cluster, userExists, verifyAccessToken, isSessionLive, nextMessageId, saveMessage, messages, limits, observer, onError } = dependencies
  const recentWindowMs = dependencies.recentWindowMs ?? LOCAL_RECENT_WINDOW_MS
  /** Past this much queued, a replay waits for the socket to drain: well below the slow-consumer cap. */
  const replayHighWater = limits.maxBufferedBytes / 2
  const replayReads = createLimiter(REPLAY_READS_AT_ONCE)
  /** The sockets corked this turn, uncorked together once it ends. */
  let toUncork: Array<() => void> = []
  function uncorkAll (): void {
    const uncorks = toUncork
    toUncork = []
    for (const uncork of uncorks) uncork()
  }
  const replayDrainWaitMs = dependencies.replayDrainWaitMs ?? REPLAY_DRAIN_WAIT_MS
  /** Per online user: the newest message one of their sockets received (or had acknowledged). */
  const newestReceived = new Map<number, string>()
  /**
   * Users one of whose connections is still replaying from their cursor. Until
   * one finishes, the cursor must not move (a live message may be newer than
   * a missed one not yet replayed), and further connections catch up too.
   */
  const catchingUp = new Set<number>()
  /**
   * Ids whose save failed: the row may be stored all the same (the failure
   * came after the write), so a resend that turns out to be a duplicate of
   * one of them is routed then, not just acknowledged.
   */
  const unrouted = new Set<string>()
  /** Cursor writes still in flight, so shutdown can wait for them. */
  const cursorWrites = new Set<Promise<void>>()
  /** Users whose joining the cluster is under way or done, by user: replays wait for it. */
  const joined = new Map<number, Promise<void>>()
  const sessions = new Set<SessionControl>()
  /** Sockets watching a user's presence, by watched user. */
  const watchers = new Map<number, Set<SessionControl>>()
  /** While true, messages from other nodes may be lost: sockets stay paused. */
  let busDown = false
  /**
   * From a bus outage until every socket has resynced: what was stored after
   * this may not have reached the user, so no cursor is written past it.
   */
  let cursorCeiling: string | null = null
  /** Resyncs under way: the ceiling goes once none is left. */
  let resyncsRunning = 0

  function received (userId: number, id: string): void {
    const newest = newestReceived.get(userId)
    if (newest === undefined || compareIds(newest, id) < 0) newestReceived.set(userId, id)
  }

  /** Where a catch-up really starts: with several nodes, a little before `after` (see CROSS_NODE_SETTLE_MS). */
  function overlapStart (after: string): string {
    if (after === '0' || cluster.nodeCount() <= 1) return after
    const earlier = firstIdAt(idTime(after) - CROSS_NODE_SETTLE_MS)
    return compareIds(earlier, after) < 0 ? earlier : after
  }

  /** The user's last socket here closed: remember how far they got, for the next connection. */
  function wentOffline (userId: number): void {
    joined.delete(userId)
    cluster.leave(userId)
    let newest = newestReceived.get(userId)
    newestReceived.delete(userId)
    if (catchingUp.delete(userId) || newest === undefined) return
    if (cursorCeiling !== null && compareIds(cursorCeiling, newest) < 0) newest = cursorCeiling
    track(messages.markSeen(userId, newest))
  }

  /** A cursor write, which shutdown waits for. */
  function track (cursorWrite: Promise<void>): void {
    const write: Promise<void> = cursorWrite
      .catch(onError)
      .finally(() => { cursorWrites.delete(write) })
    cursorWrites.add(write)
  }

  /** Hands a stored message to every socket of its two users here (but `except`), and to other nodes. */
  function route (message: EncodedMessage, except: Connection | null): void {
    for (const recipient of registry.connectionsOf(message.to) ?? []) {
      if (recipient !== except) recipient.deliver(message, 'local')
    }
    if (message.to !== message.from) {
      // The sender's other devices see the conversation too.
      for (const device of registry.connectionsOf(message.from) ?? []) {
        if (device !== except) device.deliver(message, 'local')
      }
    }
    cluster.publish(message)
  }

  /** A message stored by another node, for users connected here. */
  function routeRemote (message: EncodedMessage): void {
    for (const recipient of registry.connectionsOf(message.to) ?? []) recipient.deliver(message, 'remote')
    if (message.to === message.from) return
    for (const device of registry.connectionsOf(message.from) ?? []) device.deliver(message, 'remote')
  }

  /** Runs `work` for every session, a few at a time. */
  async function forEachSession (work: (session: SessionControl) => Promise<void>): Promise<void> {
    const queue = [...sessions]
    const worker = async (): Promise<void> => {
      for (let session = queue.shift(); session !== undefined; session = queue.shift()) {
        await work(session).catch(onError)
      }
    }
    await Promise.all(Array.from({ length: Math.min(RESYNC_CONCURRENCY, queue.length) }, worker))
  }

  cluster.attach({
    message: routeRemote,
    presence (userId, online) {
      for (const session of watchers.get(userId) ?? []) session.presence(userId, online)
    },
    sessionRevoked (userId, sessionId) {
      registry.closeSession(userId, sessionId, CLOSE_CODES.policy, 'session ended')
    },
    interrupted (gapFrom) {
      busDown = true
      cursorCeiling = cursorCeiling !== null && compareIds(cursorCeiling, gapFrom) < 0 ? cursorCeiling : gapFrom
      for (const session of sessions) session.pause()
    },
    rerouted (routed) {
      // Each user of a late message may have gone offline with a cursor past it: move it back.
      for (const { id, from, to } of routed) {
        for (const userId of new Set([from, to])) track(messages.rewindSeen(userId, previousId(id)))
      }
    },
    restored (gapFrom) {
      busDown = false
      resyncsRunning++
      // A socket that could not resync would stay paused: the client reconnects and catches up instead.
      const failed = (session: SessionControl) => (error: unknown) => {
        onError(error)
        session.connection.close(CLOSE_CODES.internalError, 'internal error')
      }
      const resyncs: Array<Promise<void>> = []
      forEachSession(async (session) => {
        try {
          // A logout or presence change announced during the outage was missed.
          if (!await isSessionLive(session.connection.sessionId)) {
            session.connection.close(CLOSE_CODES.policy, 'session ended')
            return
          }
          // Not awaited here: a replay goes at its client's pace, and its store reads are limited node-wide.
          resyncs.push(session.resync(gapFrom).catch(failed(session)))
          await session.refreshWatch()
        } catch (error) {
          failed(session)(error)
        }
      }).then(() => Promise.all(resyncs)).finally(() => {
        // Only when no resync of any outage is left does the ceiling go.
        if (--resyncsRunning === 0 && !busDown) cursorCeiling = null
      }).catch(onError)
    }
  })

  function open (socket: Socket, { user, identity, format, since }: OpenOptions) {
    const bucket = createTokenBucket({ ratePerSecond: limits.messageRate, burst: limits.messageBurst })
    const recent = createRecentIds({ windowMs: recentWindowMs })
    let expiresAt = identity.expiresAt
    let expiryTimer: NodeJS.Timeout | undefined
    let slowTimer: NodeJS.Timeout | undefined
    /** The transport corked this turn, if any. */
    let corkedTransport: Transport | null = null
    /** Ends a paced replay's wait for the socket to drain. */
    let drained: (() => void) | null = null
    /** Pings sent since the peer last answered one. */
    let unansweredPings = 0
    /** Set once we or the peer start closing: no frame is handled after that. */
    let closing = false
    let closed = false
    /**
     * replaying: live messages wait in `heldBack` until the replay has sent what the store holds;
     * live: messages go out as they come; paused: the bus is down, the store will have them.
     */
    let mode: 'replaying' | 'live' | 'paused' = 'replaying'
    let heldBack: Array<{ message: EncodedMessage, route: DeliveryRoute }> = []
    /** A resync asked for while a replay runs, which then goes on from here. */
    let resyncFrom: string | null = null
    /** The replay under way, if one is. */
    let running: Promise<boolean> | null = null
    // Frames are handled strictly in arrival order, even when one must wait on a store.
    let pending: Promise<void> | undefined
    /** Frames waiting in `pending` to be handled. */
    let queuedFrames = 0
    /** Watched users and the state last sent for each (null: the first answer is still to come). */
    // Shared and empty until the socket watches someone: most never do, and every socket has these.
    let watched: Map<number, boolean | null> = NOT_WATCHING
    let watchGeneration = 0
    /** Presence events so far, and the count when each watched user's last one came: an answer asked before it is older. */
    let presenceEvents = 0
    let lastEventAt: Map<number, number> = NO_EVENTS

    /** Sends one frame, in the same write as the others this turn sends this socket. */
    function transmit (data: string, sent?: (error?: Error) => void): void {
      if (corkedTransport === null) {
        const transport = socket._socket
        if (transport != null) {
          transport.cork()
          corkedTransport = transport
          if (toUncork.length === 0) nextTick(uncorkAll)
          toUncork.push(uncork)
        }
      }
      socket.send(data, sent)
      // Node counts a write as unsent until all of it is taken, and the slow-consumer check reads
      // that count: so the cork holds a little, never a burst the size of the cap.
      if (corkedTransport !== null && socket.bufferedAmount > CORK_MAX_BYTES) uncork()
    }

    function uncork (): void {
      const transport = corkedTransport
      corkedTransport = null
      transport?.uncork()
    }

    /** Sends a message and counts it as this socket's (the caller checks the socket is open). */
    function handOver (message: EncodedMessage, route: DeliveryRoute | null, sent?: () => void): void {
      transmit(format === 'json' ? message.json : message.text, sent)
      recent.add(message.id)
      received(user.id, message.id)
      if (route !== null) observer?.delivered(route, Date.now() - idTime(message.id))
    }

    function write (message: EncodedMessage, route: DeliveryRoute | null): void {
      if (socket.readyState !== OPEN) return
      handOver(message, route)
      checkBacklog()
    }

    /**
     * Writes a message of a replay, no faster than the socket drains: a long
     * backlog (a week offline) is not a slow consumer. Past the high-water
     * mark it waits until this frame, and so all before it, left the queue;
     * a peer that takes longer than `replayDrainWaitMs` is dropped as slow.
     */
    async function writePaced (message: EncodedMessage, route: DeliveryRoute | null): Promise<void> {
      if (socket.readyState !== OPEN) return
      if (socket.bufferedAmount <= replayHighWater) {
        write(message, route)
        return
      }
      // A socket that ends first may never call back, so its close ends the wait as well.
      const timer = setTimeout(dropAsSlow, replayDrainWaitMs)
      await new Promise<void>((resolve) => {
        drained = resolve
        handOver(message, route, resolve)
      })
      clearTimeout(timer)
      drained = null
    }

    /**
     * What this socket was sent may never have reached its peer (it stopped
     * reading, or stopped answering): no cursor of the user moves on its
     * word, and their next socket catches up from the stored cursor.
     */
    function distrust (): void {
      catchingUp.add(user.id)
    }

    /** A peer that does not read would make the server hold its frames without end: it is dropped. */
    function checkBacklog (): void {
      if (socket.bufferedAmount > limits.maxBufferedBytes) dropAsSlow()
    }

    function dropAsSlow (): void {
      if (closing) return
      distrust()
      connection.close(CLOSE_CODES.overloaded, 'too slow: frames are not being read')
      slowTimer = setTimeout(() => connection.terminate(), SLOW_CLOSE_WAIT_MS)
      slowTimer.unref()
    }

    const connection: Connection = {
      userId: user.id,
      sessionId: identity.sessionId,
      format,
      deliver (message, route) {
        if (mode === 'paused') return
        if (mode === 'replaying') {
          heldBack.push({ message, route })
          // The replay may read it from the store much later (it goes at the client's pace): remember it until then.
          recent.keepFrom(message.id)
          return
        }
        // Already sent: a replay read it from the store before this live copy came.
        if (recent.has(message.id)) return
        write(message, route)
      },
      isOpen: () => socket.readyState === OPEN,
      close (code, reason) {
        if (closing) return
        closing = true
        socket.close(code, reason)
      },
      terminate () {
        closing = true
        socket.terminate()
      }
    }

    function sendJson (frame: string): void {
      if (format !== 'json' || closed) return
      transmit(frame)
      checkBacklog()
    }

    function sendError (error: ProtocolError): void {
      if (closed) return
      transmit(errorFrame(error, format))
      checkBacklog()
    }

    function armExpiry (): void {
      clearTimeout(expiryTimer)
      const delay = expiresAt - Date.now()
      if (delay <= 0) {
        connection.close(CLOSE_CODES.tokenExpired, 'access token expired')
        return
      }
      expiryTimer = setTimeout(armExpiry, Math.min(delay, MAX_TIMER_MS))
      expiryTimer.unref()
    }

    /** Sends what the store holds for the user after `after` that this socket was not sent yet. */
    async function sendStored (after: string): Promise<void> {
      let cursor = after
      for (;;) {
        const from = cursor
        const page = await replayReads.run(() => messages.since({ userId: user.id, after: from, limit: REPLAY_PAGE }))
        for (const message of page) {
          if (!recent.has(message.id)) await writePaced(encodeMessage(message), null)
          cursor = message.id
        }
        if (page.length < REPLAY_PAGE || closing) return
      }
    }

    /**
     * Sends what the user missed after `after`, then what arrived meanwhile,
     * then goes live. Resolves true when it got to the end (the socket stayed
     * open); a replay that ends while the bus is down leaves the socket paused.
     */
    function replay (after: string): Promise<boolean> {
      const run = replayFrom(after).finally(() => { if (running === run) running = null })
      running = run
      return run
    }

    async function replayFrom (after: string): Promise<boolean> {
      mode = 'replaying'
      // Other nodes must be routing this user's messages here before the store is read.
      await joined.get(user.id)
      let from: string | null = after
      for (;;) {
        if (from !== null) await sendStored(from)
        from = null
        if (closing) return false
        if (resyncFrom !== null && !busDown) {
          from = resyncFrom
          resyncFrom = null
          continue
        }
        if (heldBack.length > 0) {
          // What arrives while the held-back messages go out is held back too, so the order stays.
          // Also with the bus down: they may be older than the gap the resync will replay.
          const arrived = heldBack
          heldBack = []
          for (const { message, route } of arrived) if (!recent.has(message.id)) await writePaced(message, route)
          continue
        }
        if (busDown) {
          // What comes from now on is stored: the resync after the outage sends it.
          mode = 'paused'
          return true
        }
        break
      }
      mode = 'live'
      recent.holdFrom(null)
      return true
    }

    /**
     * Replays what the user's sockets have not received: after the newest
     * message one of them got, or, when none is known here (or another
     * catch-up is still under way), after the stored cursor.
     */
    async function catchUp (since: string | undefined): Promise<void> {
      const known = catchingUp.has(user.id) ? undefined : newestReceived.get(user.id)
      catchingUp.add(user.id)
      const after = since ?? known ?? await messages.seenThrough(user.id) ?? '0'
      if (await replay(overlapStart(after))) catchingUp.delete(user.id)
    }

    async function deliver (to: number, text: string, ref: string | undefined): Promise<void> {
      if (!registry.isOnline(to) && !await userExists(to)) {
        sendError({ code: 'UNKNOWN_USER', message: `user ${to} does not exist`, ref })
        return
      }
      const stored: StoredMessage = { id: nextMessageId(), from: user.id, to, text, sentAt: new Date().toISOString(), ref: ref ?? null }
      let outcome: SaveOutcome
      try {
        outcome = await saveMessage(stored)
      } catch (error) {
        if (stored.ref !== null) remember(unrouted, stored.id, MAX_UNROUTED)
        throw error
      }
      const id = outcome.message.id
      // A resend of a stored message is acknowledged again, never delivered twice,
      // unless the first attempt failed after all and was never routed.
      if (!outcome.duplicate || unrouted.delete(id)) route(encodeMessage(outcome.message), connection)
      if (!outcome.duplicate) observer?.accepted()
      // The sender has it: a replay after a bus outage must not send it back.
      recent.add(id)
      if (socket.readyState === OPEN) received(user.id, id)
      sendJson(ackFrame(id, ref))
    }

    async function refresh (token: string): Promise<void> {
      let next: AccessTokenIdentity
      try {
        next = verifyAccessToken(token)
      } catch {
        sendError({ code: 'BAD_FORMAT', message: 'refresh token is not a valid access token' })
        return
      }
      if (next.userId !== user.id) {
        connection.close(CLOSE_CODES.policy, 'token belongs to another user')
        return
      }
      if (!await isSessionLive(next.sessionId)) {
        sendError({ code: 'BAD_FORMAT', message: 'the session of this token has ended' })
        return
      }
      expiresAt = next.expiresAt
      // A token from a newer login moves the socket to that session (its logout closes it).
      connection.sessionId = next.sessionId
      armExpiry()
      sendJson(welcomeFrame(user, expiresAt))
    }

    function sendPresence (userId: number, online: boolean): void {
      watched.set(userId, online)
      sendJson(presenceFrame(userId, online))
    }

    function unwatchAll (): void {
      lastEventAt = NO_EVENTS
      for (const userId of watched.keys()) {
        const set = watchers.get(userId)
        set?.delete(control)
        if (set?.size === 0) watchers.delete(userId)
      }
      watched = NOT_WATCHING
    }

    /** Asks the cluster for the watched users' state and sends each that is new to the socket. */
    async function refreshWatch (): Promise<void> {
      const generation = watchGeneration
      const asked = presenceEvents
      const userIds = [...watched.keys()]
      if (userIds.length === 0) return
      const states = await cluster.onlineStates(userIds)
      // A newer watch replaced this one meanwhile.
      if (generation !== watchGeneration || closed) return
      userIds.forEach((userId, index) => {
        // A change that came while asking is at least as new as the answer.
        if ((lastEventAt.get(userId) ?? -1) >= asked) return
        const online = states[index] ?? false
        if (watched.has(userId) && watched.get(userId) !== online) sendPresence(userId, online)
      })
    }

    /**
     * Replaces the watched users. Each one's state is sent once, then every
     * change. A change that comes while the state is being asked for is as
     * new as the answer or newer, so the answer is not sent after it.
     */
    async function watch (userIds: readonly number[]): Promise<void> {
      unwatchAll()
      watchGeneration++
      // The text format carries messages and errors only.
      if (format === 'text') return
      watched = new Map()
      lastEventAt = new Map()
      for (const userId of userIds) {
        watched.set(userId, null)
        let set = watchers.get(userId)
        if (set === undefined) {
          set = new Set()
          watchers.set(userId, set)
        }
        set.add(control)
      }
      const generation = watchGeneration
      const states = await cluster.onlineStates(userIds)
      if (generation !== watchGeneration || closed) return
      userIds.forEach((userId, index) => {
        if (watched.get(userId) === null) sendPresence(userId, states[index] ?? false)
      })
    }

    function handle (frame: ClientFrame): void | Promise<void> {
      switch (frame.type) {
        case 'message': return deliver(frame.to, frame.text, frame.ref)
        case 'ping': return sendJson(PONG_FRAME)
        case 'refresh': return refresh(frame.token)
        case 'watch': return watch(frame.users)
      }
    }

    function process (data: string): void | Promise<void> {
      if (closing) return
      const parsed = parseClientFrame(data, { maxChars: limits.messageMaxChars })
      if (!parsed.ok) return sendError(parsed)
      return handle(parsed.frame)
    }

    function failed (error: unknown): void {
      onError(error)
      connection.close(CLOSE_CODES.internalError, 'internal error')
    }

    function settle (work: Promise<void>): void {
      const tracked: Promise<void> = work.catch(failed).finally(() => {
        if (pending === tracked) pending = undefined
      })
      pending = tracked
    }

    const control: SessionControl = {
      connection,
      heartbeat () {
        if (closing || socket.readyState !== OPEN) return
        if (unansweredPings >= 2) {
          distrust()
          connection.terminate()
          return
        }
        unansweredPings++
        socket.ping()
      },
      pause () {
        // Keep every id sent so far: the resync after the outage must not send them again.
        recent.holdFrom('0')
        if (mode !== 'live') return
        heldBack = []
        mode = 'paused'
      },
      async resync (gapFrom) {
        if (closing) return
        recent.holdFrom(gapFrom)
        if (mode === 'replaying') {
          // The replay under way (or about to start) goes on from the gap; the resync ends with it.
          resyncFrom = resyncFrom !== null && compareIds(resyncFrom, gapFrom) < 0 ? resyncFrom : gapFrom
          // (Its failure is handled where it was started.)
          await running?.then(() => {}, () => {})
          return
        }
        await replay(gapFrom).catch(failed)
      },
      presence (userId, online) {
        const last = watched.get(userId)
        if (last === undefined) return
        lastEventAt.set(userId, presenceEvents++)
        if (last !== online) sendPresence(userId, online)
      },
      refreshWatch
    }

    // Back from offline (no socket of theirs that can still receive, or one still catching up):
    // replay from where they left off. A socket that is closing does not count: it may miss messages.
    const needsCatchUp = !registry.hasOpenConnection(user.id) || catchingUp.has(user.id)
    if (registry.add(connection)) {
      const joining = cluster.join(user.id)
      // Awaited by the replay; a failure closes the socket there.
      joining.catch(() => {})
      joined.set(user.id, joining)
    }
    sessions.add(control)
    if (busDown) control.pause()
    sendJson(welcomeFrame(user, expiresAt))
    armExpiry()
    if (needsCatchUp) {
      // A `since` replay is this socket's catch-up: until it ends, other sockets catch up too.
      settle(catchUp(since))
    } else if (since !== undefined) {
      settle(replay(overlapStart(since)).then(() => {}))
    } else {
      mode = busDown ? 'paused' : 'live'
    }

    return {
      connection,

      /** One frame from the client; binary frames are refused. */
      receive (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void {
        if (closing) return
        // ws enforces this itself, except under a host's own @fastify/websocket with other options.
        if (byteLength(data) > limits.maxFrameBytes) {
          connection.close(CLOSE_CODES.tooBig, 'frame too large')
          return
        }
        if (!bucket.take()) {
          sendError({ code: 'RATE_LIMITED', message: 'too many frames; slow down' })
          return
        }
        if (isBinary) {
          sendError({ code: 'BAD_FORMAT', message: 'binary frames are not accepted; send text' })
          return
        }
        const text = Buffer.isBuffer(data)
          ? data.toString('utf8')
          : Array.isArray(data) ? Buffer.concat(data).toString('utf8') : Buffer.from(data).toString('utf8')
        if (pending !== undefined) {
          // Frames wait behind a catch-up that goes at the client's pace: so many, and no more.
          if (queuedFrames >= limits.messageBurst) {
            sendError({ code: 'RATE_LIMITED', message: 'too many frames waiting to be handled; slow down' })
            return
          }
          queuedFrames++
          settle(pending.then(() => {
            queuedFrames--
            return process(text)
          }))
          return
        }
        try {
          const work = process(text)
          if (work !== undefined) settle(work)
        } catch (error) {
          failed(error)
        }
      },

      /** The peer answered a ping. */
      pong (): void {
        unansweredPings = 0
      },

      /** The socket closed, for whatever reason. */
      closed (): void {
        if (closed) return
        closed = true
        closing = true
        drained?.()
        clearTimeout(expiryTimer)
        clearTimeout(slowTimer)
        sessions.delete(control)
        unwatchAll()
        if (registry.remove(connection)) wentOffline(user.id)
      }
    }
  }

  return {
    registry,
    cluster,
    open,

    /** Pings every socket; one that left the two pings before unanswered is dropped. */
    heartbeat (): void {
      for (const session of sessions) session.heartbeat()
    },

    /** Resolves once every cursor write started so far has finished (for shutdown). */
    async drain (): Promise<void> {
      while (cursorWrites.size > 0) await Promise.allSettled([...cursorWrites])
    }
  }
}

export type Chat = ReturnType<typeof createChat>
