/**
 * The bare `ws` baseline: the least a Node server can do for the same job,
 * the limit for Node. A JWT check at the upgrade, a `Map<userId,
 * Set<socket>>` router and Switchboard's JSON frames: a message goes to
 * every socket of its recipient and every other socket of its sender, and
 * the sender gets an ack. Nothing is stored; nothing else is checked.
 */
import { createServer } from 'node:http'
import { WebSocketServer, type WebSocket } from 'ws'
import { benchSecret, listenOnLoopback, serveParent, usersToSeed } from './server-control.js'
import { signBenchUsers, tokenVerifier } from './tokens.js'

const MAX_PAYLOAD = 65_536
const MAX_CHARS = 4000

const secret = benchSecret()
const verify = tokenVerifier(secret)
const byUser = new Map<number, Set<WebSocket>>()
let lastId = 0

function authenticate (authorization: string | undefined, url: string | undefined): number | null {
  if (authorization?.startsWith('Bearer ') === true) return verify(authorization.slice(7))
  const token = new URL(url ?? '/', 'http://localhost').searchParams.get('token')
  return verify(token)
}

function attach (socket: WebSocket, userId: number): void {
  let sockets = byUser.get(userId)
  if (sockets === undefined) {
    sockets = new Set()
    byUser.set(userId, sockets)
  }
  sockets.add(socket)
  socket.on('message', (data, isBinary) => {
    if (isBinary) return
    let frame: { type?: unknown, to?: unknown, text?: unknown, id?: unknown }
    try {
      frame = JSON.parse(data.toString())
    } catch {
      socket.send('{"type":"error","code":"BAD_JSON","message":"frame is not valid JSON"}')
      return
    }
    if (frame.type === 'ping') {
      socket.send('{"type":"pong"}')
      return
    }
    const { to, text, id: ref } = frame
    if (frame.type !== 'message' || typeof to !== 'number' || !Number.isSafeInteger(to) || to < 1 ||
      typeof text !== 'string' || text.length === 0 || text.length > MAX_CHARS || (ref !== undefined && typeof ref !== 'string')) {
      socket.send(JSON.stringify({ type: 'error', code: 'BAD_FORMAT', message: 'bad message', ref }))
      return
    }
    const id = String(++lastId)
    const message = JSON.stringify({ type: 'message', id, from: userId, to, text, sentAt: new Date().toISOString() })
    for (const recipient of byUser.get(to) ?? []) recipient.send(message)
    if (to !== userId) for (const device of byUser.get(userId) ?? []) if (device !== socket) device.send(message)
    socket.send(JSON.stringify(ref === undefined ? { type: 'ack', id } : { type: 'ack', id, ref }))
  })
  socket.on('close', () => {
    sockets.delete(socket)
    if (sockets.size === 0) byUser.delete(userId)
  })
}

const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_PAYLOAD, perMessageDeflate: false })
const server = createServer((_request, response) => {
  response.writeHead(426, { 'content-type': 'text/plain' }).end('WebSocket only')
})
server.on('upgrade', (request, socket, head) => {
  const userId = request.url?.startsWith('/ws') === true ? authenticate(request.headers.authorization, request.url) : null
  if (userId === null) {
    socket.end('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 0\r\n\r\n')
    return
  }
  wss.handleUpgrade(request, socket, head, (ws) => attach(ws, userId))
})
serveParent({
  port: await listenOnLoopback(server),
  users: signBenchUsers(usersToSeed(), secret),
  close: async () => {
    for (const client of wss.clients) client.terminate()
    await new Promise((resolve) => server.close(resolve))
  }
})
