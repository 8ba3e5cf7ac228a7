import { nextTick } from 'node:process'
import type { AccessTokenIdentity } from './access-tokens.js'
import type { Cluster } from './cluster.js'
import type { Connection, ConnectionRegistry, DeliveryRoute } from './connections.js'
import { ExpiryTimers } from './expiry-timers.js'
import { compareIds, firstIdAt, idTime, previousId } from './ids.js'
import {
  CLOSE_CODES, PONG_FRAME, ackFrame, encodeMessage, errorFrame, parseClientFrame, presenceFrame, welcomeFrame,
  type ClientFrame, type EncodedMessage, type OutputFormat, type ProtocolError
} from './protocol.js'
import { createRecentIds, type RecentIds } from './recent-ids.js'
import type { PublicUser } from './schemas.js'
import type { MessageStore, SaveOutcome, StoredMessage } from './stores/messages-memory.js'
import { createLimiter } from './limiter.js'
import { TokenBucket, tokenRate, type TokenRate } from './token-bucket.js'

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

let isoMillisecond = -1
let isoText = ''
/** The time now in ISO 8601, made once per millisecond: a busy node stamps many messages in each. */
function isoNow (): string {
  const now = Date.now()
  if (now !== isoMillisecond) {
    isoMillisecond = now
    isoText = new Date(now).toISOString()
  }
  return isoText
}

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

/** What `open` returns: the socket's connection, and the handlers its events call. */
export interface OpenedSession {
  readonly connection: Connection
  // Bound: they are handed to socket.on() as they are.
  /** One frame from the client; binary frames are refused. */
  readonly receive: (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => void
  /** The peer answered a ping. */
  readonly pong: () => void
  /** The socket closed, for whatever reason. */
  readonly closed: () => void
}

/** What every session of one chat shares: the chat's dependencies, and its state that is not one socket's. */
class ChatContext {
  readonly registry: ConnectionRegistry
  readonly cluster: Cluster
  readonly userExists: ChatDependencies['userExists']
  readonly verifyAccessToken: ChatDependencies['verifyAccessToken']
  readonly isSessionLive: ChatDependencies['isSessionLive']
  readonly nextMessageId: ChatDependencies['nextMessageId']
  readonly saveMessage: ChatDependencies['saveMessage']
  readonly messages: ChatDependencies['messages']
  readonly limits: ChatDependencies['limits']
  readonly observer: ChatObserver | undefined
  readonly onError: ChatDependencies['onError']
  readonly recentWindowMs: number
  /** Past this much queued, a replay waits for the socket to drain: well below the slow-consumer cap. */
  readonly replayHighWater: number
  readonly replayDrainWaitMs: number
  readonly replayReads = createLimiter(REPLAY_READS_AT_ONCE)
  /** How fast one socket may send frames: every socket's bucket refills at this rate. */
  readonly frameRate: TokenRate
  /** Closes each socket once its access token has expired, with one timer for all of them. */
  readonly expiries = new ExpiryTimers<Session>((session) => session.close(CLOSE_CODES.tokenExpired, 'access token expired'))
  /** The sockets corked this turn, uncorked together once it ends. */
  toUncork: Session[] = []
  /** Per online user: the newest message one of their sockets received (or had acknowledged). */
  readonly newestReceived = new Map<number, string>()
  /**
   * Users one of whose connections is still replaying from their cursor. Until
   * one finishes, the cursor must not move (a live message may be newer than
   * a missed one not yet replayed), and further connections catch up too.
   */
  readonly catchingUp = new Set<number>()
  /**
   * Ids whose save failed: the row may be stored all the same (the failure
   * came after the write), so a resend that turns out to be a duplicate of
   * one of them is routed then, not just acknowledged.
   */
  readonly unrouted = new Set<string>()
  /** Cursor writes still in flight, so shutdown can wait for them. */
  readonly cursorWrites = new Set<Promise<void>>()
  /** Users whose joining the cluster is under way or done, by user: replays wait for it. */
  readonly joined = new Map<number, Promise<void>>()
  readonly sessions = new Set<Session>()
  /** Sockets watching a user's presence, by watched user. */
  readonly watchers = new Map<number, Set<Session>>()
  /** While true, messages from other nodes may be lost: sockets stay paused. */
  busDown = false
  /**
   * From a bus outage until every socket has resynced: what was stored after
   * this may not have reached the user, so no cursor is written past it.
   */
  cursorCeiling: string | null = null
  /** Resyncs under way: the ceiling goes once none is left. */
  resyncsRunning = 0

  constructor (dependencies: ChatDependencies) {
    this.registry = dependencies.registry
    this.cluster = dependencies.cluster
    this.userExists = dependencies.userExists
    this.verifyAccessToken = dependencies.verifyAccessToken
    this.isSessionLive = dependencies.isSessionLive
    this.nextMessageId = dependencies.nextMessageId
    this.saveMessage = dependencies.saveMessage
    this.messages = dependencies.messages
    this.limits = dependencies.limits
    this.observer = dependencies.observer
    this.onError = dependencies.onError
    this.recentWindowMs = dependencies.recentWindowMs ?? LOCAL_RECENT_WINDOW_MS
    this.replayHighWater = this.limits.maxBufferedBytes / 2
    this.replayDrainWaitMs = dependencies.replayDrainWaitMs ?? REPLAY_DRAIN_WAIT_MS
    this.frameRate = tokenRate({ ratePerSecond: this.limits.messageRate, burst: this.limits.messageBurst })
  }

  readonly uncorkAll = (): void => {
    const sessions = this.toUncork
    this.toUncork = []
    for (const session of sessions) session.uncork()
  }

  received (userId: number, id: string): void {
    const newest = this.newestReceived.get(userId)
    if (newest === undefined || compareIds(newest, id) < 0) this.newestReceived.set(userId, id)
  }

  /** Where a catch-up really starts: with several nodes, a little before `after` (see CROSS_NODE_SETTLE_MS). */
  overlapStart (after: string): string {
    if (after === '0' || this.cluster.nodeCount() <= 1) return after
    const earlier = firstIdAt(idTime(after) - CROSS_NODE_SETTLE_MS)
    return compareIds(earlier, after) < 0 ? earlier : after
  }

  /** The user's last socket here closed: remember how far they got, for the next connection. */
  wentOffline (userId: number): void {
    this.joined.delete(userId)
    this.cluster.leave(userId)
    let newest = this.newestReceived.get(userId)
    this.newestReceived.delete(userId)
    if (this.catchingUp.delete(userId) || newest === undefined) return
    if (this.cursorCeiling !== null && compareIds(this.cursorCeiling, newest) < 0) newest = this.cursorCeiling
    this.track(this.messages.markSeen(userId, newest))
  }

  /** A cursor write, which shutdown waits for. */
  track (cursorWrite: Promise<void>): void {
    const write: Promise<void> = cursorWrite
      .catch(this.onError)
      .finally(() => { this.cursorWrites.delete(write) })
    this.cursorWrites.add(write)
  }

  /** Hands a stored message to every socket of its two users here (but `except`), and to other nodes. */
  route (message: EncodedMessage, except: Connection | null): void {
    for (const recipient of this.registry.connectionsOf(message.to) ?? []) {
      if (recipient !== except) recipient.deliver(message, 'local')
    }
    if (message.to !== message.from) {
      // The sender's other devices see the conversation too.
      for (const device of this.registry.connectionsOf(message.from) ?? []) {
        if (device !== except) device.deliver(message, 'local')
      }
    }
    this.cluster.publish(message)
  }

  /** A message stored by another node, for users connected here. */
  routeRemote (message: EncodedMessage): void {
    for (const recipient of this.registry.connectionsOf(message.to) ?? []) recipient.deliver(message, 'remote')
    if (message.to === message.from) return
    for (const device of this.registry.connectionsOf(message.from) ?? []) device.deliver(message, 'remote')
  }

  /** Runs `work` for every session, a few at a time. */
  async forEachSession (work: (session: Session) => Promise<void>): Promise<void> {
    const queue = [...this.sessions]
    const worker = async (): Promise<void> => {
      for (let session = queue.shift(); session !== undefined; session = queue.shift()) {
        await work(session).catch(this.onError)
      }
    }
    await Promise.all(Array.from({ length: Math.min(RESYNC_CONCURRENCY, queue.length) }, worker))
  }
}

/** A live message that came while the socket was replaying. */
interface HeldBack {
  message: EncodedMessage
  route: DeliveryRoute
}

/**
 * One socket bound to a user: the connection the registry routes to, and
 * what the socket's frames and the bus's events do to it.
 *
 * A class, not a factory of closures, because every socket has one: its
 * methods are shared, and an idle socket holds one object of fields. Every
 * field is declared here, so each session gets them in the same order and
 * all sessions share one hidden class.
 */
class Session implements Connection, SessionControl {
  private readonly chat: ChatContext
  private readonly socket: Socket
  private readonly user: PublicUser
  sessionId: string
  readonly format: OutputFormat
  private expiresAt: number
  /** How fast the client may send frames. */
  private readonly bucket: TokenBucket
  private readonly recent: RecentIds
  private slowTimer: NodeJS.Timeout | undefined = undefined
  /** The transport corked this turn, if any. */
  private corkedTransport: Transport | null = null
  /** Ends a paced replay's wait for the socket to drain. */
  private drained: (() => void) | null = null
  /** Pings sent since the peer last answered one. */
  private unansweredPings = 0
  /** Set once we or the peer start closing: no frame is handled after that. */
  private closing = false
  /** Set once the socket has closed. */
  private socketClosed = false
  /**
   * replaying: live messages wait in `heldBack` until the replay has sent what the store holds;
   * live: messages go out as they come; paused: the bus is down, the store will have them.
   */
  private mode: 'replaying' | 'live' | 'paused' = 'replaying'
  /** Null until a message is held back: most sockets never hold one. */
  private heldBack: HeldBack[] | null = null
  /** A resync asked for while a replay runs, which then goes on from here. */
  private resyncFrom: string | null = null
  /** The replay under way, if one is. */
  private running: Promise<boolean> | null = null
  // Frames are handled strictly in arrival order, even when one must wait on a store.
  private pending: Promise<void> | undefined = undefined
  /** Frames waiting in `pending` to be handled. */
  private queuedFrames = 0
  /** Watched users and the state last sent for each (null: the first answer is still to come). */
  // Shared and empty until the socket watches someone: most never do, and every socket has these.
  private watched: Map<number, boolean | null> = NOT_WATCHING
  private watchGeneration = 0
  /** Presence events so far, and the count when each watched user's last one came: an answer asked before it is older. */
  private presenceEvents = 0
  private lastEventAt: Map<number, number> = NO_EVENTS

  constructor (chat: ChatContext, socket: Socket, { user, identity, format }: OpenOptions) {
    this.chat = chat
    this.socket = socket
    this.user = user
    this.sessionId = identity.sessionId
    this.format = format
    this.expiresAt = identity.expiresAt
    this.bucket = new TokenBucket(chat.frameRate)
    this.recent = createRecentIds({ windowMs: chat.recentWindowMs })
  }

  get userId (): number {
    return this.user.id
  }

  get connection (): Connection {
    return this
  }

  /** Registers the socket and welcomes it, then replays what the user missed or goes live. */
  start (since: string | undefined): void {
    const { chat, user } = this
    // Back from offline (no socket of theirs that can still receive, or one still catching up):
    // replay from where they left off. A socket that is closing does not count: it may miss messages.
    const needsCatchUp = !chat.registry.hasOpenConnection(user.id) || chat.catchingUp.has(user.id)
    if (chat.registry.add(this)) {
      const joining = chat.cluster.join(user.id)
      // Awaited by the replay; a failure closes the socket there.
      joining.catch(() => {})
      chat.joined.set(user.id, joining)
    }
    chat.sessions.add(this)
    if (chat.busDown) this.pause()
    this.sendJson(welcomeFrame(user, this.expiresAt))
    this.armExpiry()
    if (needsCatchUp) {
      // A `since` replay is this socket's catch-up: until it ends, other sockets catch up too.
      this.settle(this.catchUp(since))
    } else if (since !== undefined) {
      this.settle(this.replay(chat.overlapStart(since)).then(() => {}))
    } else {
      this.mode = chat.busDown ? 'paused' : 'live'
    }
  }

  /** Sends one frame, in the same write as the others this turn sends this socket. */
  private transmit (data: string, sent?: (error?: Error) => void): void {
    const { socket } = this
    if (this.corkedTransport === null) {
      const transport = socket._socket
      if (transport != null) {
        transport.cork()
        this.corkedTransport = transport
        if (this.chat.toUncork.length === 0) nextTick(this.chat.uncorkAll)
        this.chat.toUncork.push(this)
      }
    }
    socket.send(data, sent)
    // Node counts a write as unsent until all of it is taken, and the slow-consumer check reads
    // that count: so the cork holds a little, never a burst the size of the cap.
    if (this.corkedTransport !== null && socket.bufferedAmount > CORK_MAX_BYTES) this.uncork()
  }

  /** Lets go of what this turn corked (at the turn's end, or at once when the cork holds too much). */
  uncork (): void {
    const transport = this.corkedTransport
    this.corkedTransport = null
    transport?.uncork()
  }

  /** Sends a message and counts it as this socket's (the caller checks the socket is open). */
  private handOver (message: EncodedMessage, route: DeliveryRoute | null, sent?: () => void): void {
    this.transmit(this.format === 'json' ? message.json : message.text, sent)
    this.recent.add(message.id)
    this.chat.received(this.user.id, message.id)
    if (route !== null) this.chat.observer?.delivered(route, Date.now() - idTime(message.id))
  }

  private write (message: EncodedMessage, route: DeliveryRoute | null): void {
    if (this.socket.readyState !== OPEN) return
    this.handOver(message, route)
    this.checkBacklog()
  }

  /**
   * Writes a message of a replay, no faster than the socket drains: a long
   * backlog (a week offline) is not a slow consumer. Past the high-water
   * mark it waits until this frame, and so all before it, left the queue;
   * a peer that takes longer than `replayDrainWaitMs` is dropped as slow.
   */
  private async writePaced (message: EncodedMessage, route: DeliveryRoute | null): Promise<void> {
    if (this.socket.readyState !== OPEN) return
    if (this.socket.bufferedAmount <= this.chat.replayHighWater) {
      this.write(message, route)
      return
    }
    // A socket that ends first may never call back, so its close ends the wait as well.
    const timer = setTimeout(() => this.dropAsSlow(), this.chat.replayDrainWaitMs)
    await new Promise<void>((resolve) => {
      this.drained = resolve
      this.handOver(message, route, resolve)
    })
    clearTimeout(timer)
    this.drained = null
  }

  /**
   * What this socket was sent may never have reached its peer (it stopped
   * reading, or stopped answering): no cursor of the user moves on its
   * word, and their next socket catches up from the stored cursor.
   */
  private distrust (): void {
    this.chat.catchingUp.add(this.user.id)
  }

  /** A peer that does not read would make the server hold its frames without end: it is dropped. */
  private checkBacklog (): void {
    if (this.socket.bufferedAmount > this.chat.limits.maxBufferedBytes) this.dropAsSlow()
  }

  private dropAsSlow (): void {
    if (this.closing) return
    this.distrust()
    this.close(CLOSE_CODES.overloaded, 'too slow: frames are not being read')
    this.slowTimer = setTimeout(() => this.terminate(), SLOW_CLOSE_WAIT_MS)
    this.slowTimer.unref()
  }

  deliver (message: EncodedMessage, route: DeliveryRoute): void {
    if (this.mode === 'paused') return
    if (this.mode === 'replaying') {
      (this.heldBack ??= []).push({ message, route })
      // The replay may read it from the store much later (it goes at the client's pace): remember it until then.
      this.recent.keepFrom(message.id)
      return
    }
    // Already sent: a replay read it from the store before this live copy came.
    if (this.recent.has(message.id)) return
    this.write(message, route)
  }

  isOpen (): boolean {
    return this.socket.readyState === OPEN
  }

  close (code: number, reason: string): void {
    if (this.closing) return
    this.closing = true
    this.socket.close(code, reason)
  }

  terminate (): void {
    this.closing = true
    this.socket.terminate()
  }

  private sendJson (frame: string): void {
    if (this.format !== 'json' || this.socketClosed) return
    this.transmit(frame)
    this.checkBacklog()
  }

  private sendError (error: ProtocolError): void {
    if (this.socketClosed) return
    this.transmit(errorFrame(error, this.format))
    this.checkBacklog()
  }

  /** Closes the socket once its token expires: at once if it has, else by the chat's one expiry timer. */
  private armExpiry (): void {
    // A refresh that finished after the socket closed: nothing to close, and nothing may keep the session.
    if (this.socketClosed) return
    if (this.expiresAt <= Date.now()) {
      this.close(CLOSE_CODES.tokenExpired, 'access token expired')
      return
    }
    this.chat.expiries.add(this, this.expiresAt)
  }

  /** Sends what the store holds for the user after `after` that this socket was not sent yet. */
  private async sendStored (after: string): Promise<void> {
    const { chat, user } = this
    let cursor = after
    for (;;) {
      const from = cursor
      const page = await chat.replayReads.run(() => chat.messages.since({ userId: user.id, after: from, limit: REPLAY_PAGE }))
      for (const message of page) {
        if (!this.recent.has(message.id)) await this.writePaced(encodeMessage(message), null)
        cursor = message.id
      }
      if (page.length < REPLAY_PAGE || this.closing) return
    }
  }

  /**
   * Sends what the user missed after `after`, then what arrived meanwhile,
   * then goes live. Resolves true when it got to the end (the socket stayed
   * open); a replay that ends while the bus is down leaves the socket paused.
   */
  private replay (after: string): Promise<boolean> {
    const run = this.replayFrom(after).finally(() => { if (this.running === run) this.running = null })
    this.running = run
    return run
  }

  private async replayFrom (after: string): Promise<boolean> {
    const { chat } = this
    this.mode = 'replaying'
    // Other nodes must be routing this user's messages here before the store is read.
    await chat.joined.get(this.user.id)
    let from: string | null = after
    for (;;) {
      if (from !== null) await this.sendStored(from)
      from = null
      if (this.closing) return false
      if (this.resyncFrom !== null && !chat.busDown) {
        from = this.resyncFrom
        this.resyncFrom = null
        continue
      }
      if (this.heldBack !== null && this.heldBack.length > 0) {
        // What arrives while the held-back messages go out is held back too, so the order stays.
        // Also with the bus down: they may be older than the gap the resync will replay.
        const arrived = this.heldBack
        this.heldBack = null
        for (const { message, route } of arrived) if (!this.recent.has(message.id)) await this.writePaced(message, route)
        continue
      }
      if (chat.busDown) {
        // What comes from now on is stored: the resync after the outage sends it.
        this.mode = 'paused'
        return true
      }
      break
    }
    this.mode = 'live'
    this.recent.holdFrom(null)
    return true
  }

  /**
   * Replays what the user's sockets have not received: after the newest
   * message one of them got, or, when none is known here (or another
   * catch-up is still under way), after the stored cursor.
   */
  private async catchUp (since: string | undefined): Promise<void> {
    const { chat, user } = this
    const known = chat.catchingUp.has(user.id) ? undefined : chat.newestReceived.get(user.id)
    chat.catchingUp.add(user.id)
    const after = since ?? known ?? await chat.messages.seenThrough(user.id) ?? '0'
    if (await this.replay(chat.overlapStart(after))) chat.catchingUp.delete(user.id)
  }

  /** A message from the client: stored, then acknowledged and routed to both users' sockets. */
  private async storeAndRoute (to: number, text: string, ref: string | undefined): Promise<void> {
    const { chat, user } = this
    if (!chat.registry.isOnline(to) && !await chat.userExists(to)) {
      this.sendError({ code: 'UNKNOWN_USER', message: `user ${to} does not exist`, ref })
      return
    }
    const stored: StoredMessage = { id: chat.nextMessageId(), from: user.id, to, text, sentAt: isoNow(), ref: ref ?? null }
    let outcome: SaveOutcome
    try {
      outcome = await chat.saveMessage(stored)
    } catch (error) {
      if (stored.ref !== null) remember(chat.unrouted, stored.id, MAX_UNROUTED)
      throw error
    }
    const id = outcome.message.id
    // A resend of a stored message is acknowledged again, never delivered twice,
    // unless the first attempt failed after all and was never routed.
    if (!outcome.duplicate || chat.unrouted.delete(id)) chat.route(encodeMessage(outcome.message), this)
    if (!outcome.duplicate) chat.observer?.accepted()
    // The sender has it: a replay after a bus outage must not send it back.
    this.recent.add(id)
    if (this.socket.readyState === OPEN) chat.received(user.id, id)
    this.sendJson(ackFrame(id, ref))
  }

  private async refresh (token: string): Promise<void> {
    let next: AccessTokenIdentity
    try {
      next = this.chat.verifyAccessToken(token)
    } catch {
      this.sendError({ code: 'BAD_FORMAT', message: 'refresh token is not a valid access token' })
      return
    }
    if (next.userId !== this.user.id) {
      this.close(CLOSE_CODES.policy, 'token belongs to another user')
      return
    }
    if (!await this.chat.isSessionLive(next.sessionId)) {
      this.sendError({ code: 'BAD_FORMAT', message: 'the session of this token has ended' })
      return
    }
    this.chat.expiries.delete(this, this.expiresAt)
    this.expiresAt = next.expiresAt
    // A token from a newer login moves the socket to that session (its logout closes it).
    this.sessionId = next.sessionId
    this.armExpiry()
    this.sendJson(welcomeFrame(this.user, this.expiresAt))
  }

  private sendPresence (userId: number, online: boolean): void {
    this.watched.set(userId, online)
    this.sendJson(presenceFrame(userId, online))
  }

  private unwatchAll (): void {
    const { watchers } = this.chat
    this.lastEventAt = NO_EVENTS
    for (const userId of this.watched.keys()) {
      const set = watchers.get(userId)
      set?.delete(this)
      if (set?.size === 0) watchers.delete(userId)
    }
    this.watched = NOT_WATCHING
  }

  /** Asks the cluster for the watched users' state and sends each that is new to the socket. */
  async refreshWatch (): Promise<void> {
    const generation = this.watchGeneration
    const asked = this.presenceEvents
    const userIds = [...this.watched.keys()]
    if (userIds.length === 0) return
    const states = await this.chat.cluster.onlineStates(userIds)
    // A newer watch replaced this one meanwhile.
    if (generation !== this.watchGeneration || this.socketClosed) return
    userIds.forEach((userId, index) => {
      // A change that came while asking is at least as new as the answer.
      if ((this.lastEventAt.get(userId) ?? -1) >= asked) return
      const online = states[index] ?? false
      if (this.watched.has(userId) && this.watched.get(userId) !== online) this.sendPresence(userId, online)
    })
  }

  /**
   * Replaces the watched users. Each one's state is sent once, then every
   * change. A change that comes while the state is being asked for is as
   * new as the answer or newer, so the answer is not sent after it.
   */
  private async watch (userIds: readonly number[]): Promise<void> {
    const { watchers } = this.chat
    this.unwatchAll()
    this.watchGeneration++
    // The text format carries messages and errors only.
    if (this.format === 'text') return
    this.watched = new Map()
    this.lastEventAt = new Map()
    for (const userId of userIds) {
      this.watched.set(userId, null)
      let set = watchers.get(userId)
      if (set === undefined) {
        set = new Set()
        watchers.set(userId, set)
      }
      set.add(this)
    }
    const generation = this.watchGeneration
    const states = await this.chat.cluster.onlineStates(userIds)
    if (generation !== this.watchGeneration || this.socketClosed) return
    userIds.forEach((userId, index) => {
      if (this.watched.get(userId) === null) this.sendPresence(userId, states[index] ?? false)
    })
  }

  private handle (frame: ClientFrame): void | Promise<void> {
    switch (frame.type) {
      case 'message': return this.storeAndRoute(frame.to, frame.text, frame.ref)
      case 'ping': return this.sendJson(PONG_FRAME)
      case 'refresh': return this.refresh(frame.token)
      case 'watch': return this.watch(frame.users)
    }
  }

  private process (data: string): void | Promise<void> {
    if (this.closing) return
    const parsed = parseClientFrame(data, { maxChars: this.chat.limits.messageMaxChars })
    if (!parsed.ok) return this.sendError(parsed)
    return this.handle(parsed.frame)
  }

  private failed (error: unknown): void {
    this.chat.onError(error)
    this.close(CLOSE_CODES.internalError, 'internal error')
  }

  private settle (work: Promise<void>): void {
    // One `then` rather than catch and finally: this runs for every frame, and each of those is promises more.
    const tracked: Promise<void> = work.then(() => {
      if (this.pending === tracked) this.pending = undefined
    }, (error: unknown) => {
      this.failed(error)
      if (this.pending === tracked) this.pending = undefined
    })
    this.pending = tracked
  }

  heartbeat (): void {
    if (this.closing || this.socket.readyState !== OPEN) return
    if (this.unansweredPings >= 2) {
      this.distrust()
      this.terminate()
      return
    }
    this.unansweredPings++
    this.socket.ping()
  }

  pause (): void {
    // Keep every id sent so far: the resync after the outage must not send them again.
    this.recent.holdFrom('0')
    if (this.mode !== 'live') return
    this.heldBack = null
    this.mode = 'paused'
  }

  async resync (gapFrom: string): Promise<void> {
    if (this.closing) return
    this.recent.holdFrom(gapFrom)
    if (this.mode === 'replaying') {
      // The replay under way (or about to start) goes on from the gap; the resync ends with it.
      this.resyncFrom = this.resyncFrom !== null && compareIds(this.resyncFrom, gapFrom) < 0 ? this.resyncFrom : gapFrom
      // (Its failure is handled where it was started.)
      await this.running?.then(() => {}, () => {})
      return
    }
    await this.replay(gapFrom).catch((error: unknown) => this.failed(error))
  }

  presence (userId: number, online: boolean): void {
    const last = this.watched.get(userId)
    if (last === undefined) return
    this.lastEventAt.set(userId, this.presenceEvents++)
    if (last !== online) this.sendPresence(userId, online)
  }

  // Arrow functions, this one, pong and closed: the socket's events call them unbound.
  readonly receive = (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void => {
    if (this.closing) return
    const { limits } = this.chat
    // ws enforces this itself, except under a host's own @fastify/websocket with other options.
    if (byteLength(data) > limits.maxFrameBytes) {
      this.close(CLOSE_CODES.tooBig, 'frame too large')
      return
    }
    if (!this.bucket.take()) {
      this.sendError({ code: 'RATE_LIMITED', message: 'too many frames; slow down' })
      return
    }
    if (isBinary) {
      this.sendError({ code: 'BAD_FORMAT', message: 'binary frames are not accepted; send text' })
      return
    }
    const text = Buffer.isBuffer(data)
      ? data.toString('utf8')
      : Array.isArray(data) ? Buffer.concat(data).toString('utf8') : Buffer.from(data).toString('utf8')
    if (this.pending !== undefined) {
      // Frames wait behind a catch-up that goes at the client's pace: so many, and no more.
      if (this.queuedFrames >= limits.messageBurst) {
        this.sendError({ code: 'RATE_LIMITED', message: 'too many frames waiting to be handled; slow down' })
        return
      }
      this.queuedFrames++
      this.settle(this.pending.then(() => {
        this.queuedFrames--
        return this.process(text)
      }))
      return
    }
    try {
      const work = this.process(text)
      if (work !== undefined) this.settle(work)
    } catch (error) {
      this.failed(error)
    }
  }

  readonly pong = (): void => {
    this.unansweredPings = 0
  }

  readonly closed = (): void => {
    if (this.socketClosed) return
    this.socketClosed = true
    this.closing = true
    this.drained?.()
    this.chat.expiries.delete(this, this.expiresAt)
    clearTimeout(this.slowTimer)
    this.chat.sessions.delete(this)
    this.unwatchAll()
    if (this.chat.registry.remove(this)) this.chat.wentOffline(this.user.id)
  }
}

/**
 * Routes messages to this node's connections and, through the cluster, to
 * other nodes'. A message is stored before it is acknowledged or delivered;
 * a connection first replays what its user missed, then goes live. `open`
 * binds one socket to a user and returns the handlers its events call.
 */
export function createChat (dependencies: ChatDependencies) {
  const chat = new ChatContext(dependencies)
  const { registry, cluster, isSessionLive, messages, onError } = chat

  cluster.attach({
    message: (message) => { chat.routeRemote(message) },
    presence (userId, online) {
      for (const session of chat.watchers.get(userId) ?? []) session.presence(userId, online)
    },
    sessionRevoked (userId, sessionId) {
      registry.closeSession(userId, sessionId, CLOSE_CODES.policy, 'session ended')
    },
    interrupted (gapFrom) {
      chat.busDown = true
      chat.cursorCeiling = chat.cursorCeiling !== null && compareIds(chat.cursorCeiling, gapFrom) < 0 ? chat.cursorCeiling : gapFrom
      for (const session of chat.sessions) session.pause()
    },
    rerouted (routed) {
      // Each user of a late message may have gone offline with a cursor past it: move it back.
      for (const { id, from, to } of routed) {
        for (const userId of new Set([from, to])) chat.track(messages.rewindSeen(userId, previousId(id)))
      }
    },
    restored (gapFrom) {
      chat.busDown = false
      chat.resyncsRunning++
      // A socket that could not resync would stay paused: the client reconnects and catches up instead.
      const failed = (session: SessionControl) => (error: unknown) => {
        onError(error)
        session.connection.close(CLOSE_CODES.internalError, 'internal error')
      }
      const resyncs: Array<Promise<void>> = []
      chat.forEachSession(async (session) => {
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
        if (--chat.resyncsRunning === 0 && !chat.busDown) chat.cursorCeiling = null
      }).catch(onError)
    }
  })

  return {
    registry,
    cluster,

    open (socket: Socket, options: OpenOptions): OpenedSession {
      const session = new Session(chat, socket, options)
      session.start(options.since)
      return session
    },

    /** Pings every socket; one that left the two pings before unanswered is dropped. */
    heartbeat (): void {
      for (const session of chat.sessions) session.heartbeat()
    },

    /** Resolves once every cursor write started so far has finished (for shutdown). */
    async drain (): Promise<void> {
      while (chat.cursorWrites.size > 0) await Promise.allSettled([...chat.cursorWrites])
    }
  }
}

export type Chat = ReturnType<typeof createChat>
