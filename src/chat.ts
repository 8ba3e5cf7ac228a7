import type { AccessTokenIdentity } from './access-tokens.js'
import type { Connection, ConnectionRegistry } from './connections.js'
import {
  CLOSE_CODES, PONG_FRAME, ackFrame, encodeMessage, errorFrame, parseClientFrame, welcomeFrame,
  type ClientFrame, type OutputFormat, type ProtocolError
} from './protocol.js'
import type { PublicUser } from './schemas.js'
import { createTokenBucket } from './token-bucket.js'

/** The socket as the chat sees it: the `ws` WebSocket satisfies this. */
export interface Socket {
  send (data: string): void
  close (code: number, reason: string): void
}

export interface ChatDependencies {
  registry: ConnectionRegistry
  /** Whether a user id names an account (asked only for recipients with no live connection). */
  userExists: (userId: number) => Promise<boolean>
  verifyAccessToken: (token: string) => AccessTokenIdentity
  /** Whether a login session still exists (not logged out, not revoked). */
  isSessionLive: (sessionId: string) => Promise<boolean>
  nextMessageId: () => string
  limits: { messageMaxChars: number, messageRate: number, messageBurst: number }
  onError: (error: unknown) => void
}

export interface OpenOptions {
  user: PublicUser
  identity: AccessTokenIdentity
  format: OutputFormat
}

/** Timers longer than this overflow Node's 32-bit delay; re-armed when they fire early. */
const MAX_TIMER_MS = 2_147_483_647

/**
 * Routes messages between connections on this node. `open` binds one socket
 * to a user and returns the handlers its events call.
 */
export function createChat ({ registry, userExists, verifyAccessToken, isSessionLive, nextMessageId, limits, onError }: ChatDependencies) {
  function open (socket: Socket, { user, identity, format }: OpenOptions) {
    const bucket = createTokenBucket({ ratePerSecond: limits.messageRate, burst: limits.messageBurst })
    let expiresAt = identity.expiresAt
    let expiryTimer: NodeJS.Timeout | undefined
    /** Set once we or the peer start closing: no frame is handled after that. */
    let closing = false
    let closed = false
    // Frames are handled strictly in arrival order, even when one must wait on a store.
    let pending: Promise<void> | undefined

    const connection: Connection = {
      userId: user.id,
      sessionId: identity.sessionId,
      format,
      send: (data) => { if (!closed) socket.send(data) },
      close: (code, reason) => {
        if (closing) return
        closing = true
        socket.close(code, reason)
      }
    }

    function sendJson (frame: string): void {
      if (format === 'json') connection.send(frame)
    }

    function sendError (error: ProtocolError): void {
      connection.send(errorFrame(error, format))
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

    function deliver (to: number, text: string, ref: string | undefined): void | Promise<void> {
      const recipients = registry.connectionsOf(to)
      if (recipients === undefined) return refuseOffline(to, ref)
      const id = nextMessageId()
      const message = encodeMessage({ id, from: user.id, to, text, sentAt: new Date().toISOString() })
      for (const recipient of recipients) {
        if (recipient !== connection) recipient.send(recipient.format === 'json' ? message.json : message.text)
      }
      if (to !== user.id) {
        // The sender's other devices see the conversation too.
        for (const device of registry.connectionsOf(user.id) ?? []) {
          if (device !== connection) device.send(device.format === 'json' ? message.json : message.text)
        }
      }
      sendJson(ackFrame(id, ref))
    }

    async function refuseOffline (to: number, ref: string | undefined): Promise<void> {
      const exists = await userExists(to)
      if (exists) sendError({ code: 'USER_OFFLINE', message: `user ${to} is not connected`, ref })
      else sendError({ code: 'UNKNOWN_USER', message: `user ${to} does not exist`, ref })
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

    registry.add(connection)
    sendJson(welcomeFrame(user, expiresAt))
    armExpiry()

    return {
      connection,

      /** One frame from the client; binary frames are refused. */
      receive (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void {
        if (closing) return
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
        registry.remove(connection)
      }
    }
  }

  return { registry, open }
}

export type Chat = ReturnType<typeof createChat>
