import type { AccessTokenIdentity } from './access-tokens.js'
import type { Connection, ConnectionRegistry } from './connections.js'
import { compareIds } from './ids.js'
import {
  CLOSE_CODES, PONG_FRAME, ackFrame, encodeMessage, errorFrame, parseClientFrame, welcomeFrame,
  type ClientFrame, type EncodedMessage, type OutputFormat, type ProtocolError
} from './protocol.js'
import type { PublicUser } from './schemas.js'
import type { MessageStore, SaveOutcome, StoredMessage } from './stores/messages-memory.js'
import { createTokenBucket } from './token-bucket.js'

/** The socket as the chat sees it: the `ws` WebSocket satisfies this. */
export interface Socket {
  readonly readyState: number
  send (data: string): void
  close (code: number, reason: string): void
  terminate (): void
}

/** `WebSocket.OPEN`: only an open socket counts as having received a message. */
const OPEN = 1

/** Messages read from the store per query while replaying. */
const REPLAY_PAGE = 500

export interface ChatDependencies {
  registry: ConnectionRegistry
  /** Whether a user id names an account (asked only for recipients with no live connection). */
  userExists: (userId: number) => Promise<boolean>
  verifyAccessToken: (token: string) => AccessTokenIdentity
  /** Whether a login session still exists (not logged out, not revoked). */
  isSessionLive: (sessionId: string) => Promise<boolean>
  nextMessageId: () => string
  /** Stores one message durably (the caller batches); resolves once it is stored. */
  saveMessage: (message: StoredMessage) => Promise<SaveOutcome>
  messages: Pick<MessageStore, 'since' | 'seenThrough' | 'markSeen'>
  limits: { messageMaxChars: number, messageRate: number, messageBurst: number, maxFrameBytes: number }
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

/**
 * Routes messages between connections on this node. A message is stored
 * before it is acknowledged or delivered; a connection first replays what
 * its user missed, then goes live. `open` binds one socket to a user and
 * returns the handlers its events call.
 */
export function createChat (dependencies: ChatDependencies) {
  const { registry, userExists, verifyAccessToken, isSessionLive, nextMessageId, saveMessage, messages, limits, onError } = dependencies
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

  function received (userId: number, id: string): void {
    const newest = newestReceived.get(userId)
    if (newest === undefined || compareIds(newest, id) < 0) newestReceived.set(userId, id)
  }

  /** The user's last socket closed: remember how far they got, for the next connection. */
  function wentOffline (userId: number): void {
    const newest = newestReceived.get(userId)
    newestReceived.delete(userId)
    if (catchingUp.delete(userId) || newest === undefined) return
    const write: Promise<void> = messages.markSeen(userId, newest)
      .catch(onError)
      .finally(() => { cursorWrites.delete(write) })
    cursorWrites.add(write)
  }

  function open (socket: Socket, { user, identity, format, since }: OpenOptions) {
    const bucket = createTokenBucket({ ratePerSecond: limits.messageRate, burst: limits.messageBurst })
    let expiresAt = identity.expiresAt
    let expiryTimer: NodeJS.Timeout | undefined
    /** Set once we or the peer start closing: no frame is handled after that. */
    let closing = false
    let closed = false
    /** Live messages that arrive while the connection replays, or null once it is live. */
    let heldBack: EncodedMessage[] | null = []
    /** The newest message the replay sent; a live copy of it (stored, read by the replay, routed later) must not follow. */
    let replayedThrough: string | null = null
    // Frames are handled strictly in arrival order, even when one must wait on a store.
    let pending: Promise<void> | undefined

    function write (message: EncodedMessage): void {
      if (socket.readyState !== OPEN) return
      socket.send(format === 'json' ? message.json : message.text)
      received(user.id, message.id)
    }

    const connection: Connection = {
      userId: user.id,
      sessionId: identity.sessionId,
      format,
      deliver (message) {
        if (heldBack !== null) {
          heldBack.push(message)
          return
        }
        // On one node messages are routed in id order: one not newer than the replay's last was replayed already.
        if (replayedThrough !== null && compareIds(message.id, replayedThrough) <= 0) return
        replayedThrough = null
        write(message)
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
      if (format === 'json' && !closed) socket.send(frame)
    }

    function sendError (error: ProtocolError): void {
      if (!closed) socket.send(errorFrame(error, format))
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

    /**
     * Sends what the user missed after `after`, then what arrived meanwhile,
     * then goes live. Resolves true when it got to the end (the socket stayed open).
     */
    async function replay (after: string): Promise<boolean> {
      const replayed = new Set<string>()
      let cursor = after
      for (;;) {
        const page = await messages.since({ userId: user.id, after: cursor, limit: REPLAY_PAGE })
        for (const message of page) {
          write(encodeMessage(message))
          replayed.add(message.id)
          cursor = message.id
        }
        if (page.length < REPLAY_PAGE || closing) break
      }
      // Messages stored during the replay may have been read by it too: each goes out once.
      const arrived = heldBack ?? []
      heldBack = null
      replayedThrough = replayed.size > 0 ? cursor : null
      for (const message of arrived) if (!replayed.has(message.id)) write(message)
      return !closing
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
      if (await replay(after)) catchingUp.delete(user.id)
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
      if (!outcome.duplicate || unrouted.delete(id)) {
        const message = encodeMessage(outcome.message)
        for (const recipient of registry.connectionsOf(to) ?? []) {
          if (recipient !== connection) recipient.deliver(message)
        }
        if (to !== user.id) {
          // The sender's other devices see the conversation too.
          for (const device of registry.connectionsOf(user.id) ?? []) {
            if (device !== connection) device.deliver(message)
          }
        }
      }
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

    function handle (frame: ClientFrame): void | Promise<void> {
      switch (frame.type) {
        case 'message': return deliver(frame.to, frame.text, frame.ref)
        case 'ping': return sendJson(PONG_FRAME)
        case 'refresh': return refresh(frame.token)
        case 'watch': return sendError({ code: 'UNKNOWN_TYPE', message: 'watch is not available on this server yet' })
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

    // Back from offline (no socket of theirs that can still receive, or one still catching up):
    // replay from where they left off. A socket that is closing does not count: it may miss messages.
    const needsCatchUp = !registry.hasOpenConnection(user.id) || catchingUp.has(user.id)
    registry.add(connection)
    sendJson(welcomeFrame(user, expiresAt))
    armExpiry()
    if (needsCatchUp) {
      // A `since` replay is this socket's catch-up: until it ends, other sockets catch up too.
      settle(catchUp(since))
    } else if (since !== undefined) {
      settle(replay(since).then(() => {}))
    } else {
      heldBack = null
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
          settle(pending.then(() => process(text)))
          return
        }
        try {
          const work = process(text)
          if (work !== undefined) settle(work)
        } catch (error) {
          failed(error)
        }
      },

      /** The socket closed, for whatever reason. */
      closed (): void {
        if (closed) return
        closed = true
        closing = true
        clearTimeout(expiryTimer)
        if (registry.remove(connection)) wentOffline(user.id)
      }
    }
  }

  return {
    registry,
    open,

    /** Resolves once every cursor write started so far has finished (for shutdown). */
    async drain (): Promise<void> {
      while (cursorWrites.size > 0) await Promise.allSettled([...cursorWrites])
    }
  }
}

export type Chat = ReturnType<typeof createChat>
