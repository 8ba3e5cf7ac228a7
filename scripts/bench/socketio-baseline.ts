/**
 * The Socket.IO 4 baseline, the popular peer: WebSocket transport only, the
 * JWT in the handshake's `auth`, a room per user, and the same payloads as
 * events. A `message` event goes to the recipient's room and the sender's
 * other sockets; the sender's acknowledgement callback gets `{id, ref}`.
 */
import { createServer } from 'node:http'
import { Server } from 'socket.io'
import { benchSecret, listenOnLoopback, serveParent, usersToSeed } from './server-control.js'
import { signBenchUsers, tokenVerifier } from './tokens.js'

const MAX_PAYLOAD = 65_536
const MAX_CHARS = 4000

interface SocketData {
  userId: number
}

interface MessagePayload {
  to?: unknown
  text?: unknown
  id?: unknown
}

interface ServerToClient {
  message: (message: { id: string, from: number, to: number, text: string, sentAt: string }) => void
}

interface ClientToServer {
  message: (payload: MessagePayload, ack?: (answer: { id: string, ref?: string } | { error: string }) => void) => void
}

const secret = benchSecret()
const verify = tokenVerifier(secret)
let lastId = 0

const room = (userId: number): string => `user:${userId}`

const server = createServer()
const io = new Server<ClientToServer, ServerToClient, Record<string, never>, SocketData>(server, {
  transports: ['websocket'],
  serveClient: false,
  maxHttpBufferSize: MAX_PAYLOAD,
  perMessageDeflate: false
})

io.use((socket, next) => {
  const userId = verify((socket.handshake.auth as { token?: unknown }).token)
  if (userId === null) {
    next(new Error('INVALID_TOKEN'))
    return
  }
  socket.data.userId = userId
  next()
})

io.on('connection', (socket) => {
  const userId = socket.data.userId
  socket.join(room(userId))
  socket.on('message', (payload, ack) => {
    const { to, text, id: ref } = payload ?? {}
    if (typeof to !== 'number' || !Number.isSafeInteger(to) || to < 1 || typeof text !== 'string' || text.length === 0 ||
      text.length > MAX_CHARS || (ref !== undefined && typeof ref !== 'string')) {
      ack?.({ error: 'BAD_FORMAT' })
      return
    }
    const id = String(++lastId)
    // The recipient's sockets and the sender's other ones, encoded once.
    socket.to(room(to)).to(room(userId)).emit('message', { id, from: userId, to, text, sentAt: new Date().toISOString() })
    ack?.(ref === undefined ? { id } : { id, ref })
  })
})

serveParent({
  port: await listenOnLoopback(server),
  users: signBenchUsers(usersToSeed(), secret),
  close: async () => {
    io.disconnectSockets(true)
    await io.close()
  }
})
