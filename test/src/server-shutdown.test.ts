import { once } from 'node:events'
import { test } from 'tap'
import WebSocket from 'ws'
import { build, listen, realBackendOptions, realBackends, TEST_JWT_SECRET, startServerProcess, type ServerProcess } from '../helper.js'

/*
 * The standalone server in a child process gets SIGTERM while messages flow,
 * and nothing acknowledged may be lost: the process closes its sockets with
 * 1001, stores what it accepted, and exits 0; a node started afterwards on
 * the same database and Redis hands every acknowledged message to its
 * recipient, counting what reached them before the signal, exactly once.
 */

const PAIRS = 4
/** Messages each sender keeps unacknowledged, so some are always between the socket and the store. */
const IN_FLIGHT = 50
/** Acknowledgements before the signal, so the flow is at full speed when it comes. */
const ACKS_BEFORE_SIGNAL = 400

interface Account {
  id: number
  accessToken: string
}

interface Stream {
  socket: WebSocket
  /** Server ids of this socket's acknowledged messages. */
  acked: string[]
  /** Server ids of the messages this socket received. */
  received: string[]
  closed: Promise<number>
}

async function signUp (server: ServerProcess, name: string): Promise<Account> {
  const email = `${name.toLowerCase().replace(/\W/g, '')}-${process.pid}-${Date.now()}@example.com`
  const credentials = { email, password: 'correct horse battery' }
  const post = (path: string, body: object) => fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  const signup = await post('/auth/signup', { ...credentials, name })
  if (signup.status !== 201) throw new Error(`signup: ${signup.status} ${await signup.text()}`)
  const { id } = await signup.json() as { id: number }
  const login = await post('/auth/login', credentials)
  if (login.status !== 200) throw new Error(`login: ${login.status} ${await login.text()}`)
  const { access_token: accessToken } = await login.json() as { access_token: string }
  return { id, accessToken }
}

async function openStream (wsUrl: string, account: Account): Promise<Stream> {
  const socket = new WebSocket(new URL('/ws', wsUrl), { headers: { authorization: `Bearer ${account.accessToken}` } })
  const stream: Stream = { socket, acked: [], received: [], closed: once(socket, 'close').then(([code]) => code as number) }
  socket.on('message', (data: Buffer) => {
    const frame = JSON.parse(data.toString()) as { type: string, id?: string }
    if (frame.type === 'ack' && frame.id !== undefined) stream.acked.push(frame.id)
    if (frame.type === 'message' && frame.id !== undefined) stream.received.push(frame.id)
  })
  socket.on('error', () => {})
  await once(socket, 'open')
  // The pong comes after the catch-up, so from then on messages to this socket go out live.
  socket.send('{"type":"ping"}')
  await pong(socket)
  return stream
}

function pong (socket: WebSocket): Promise<void> {
  return new Promise((resolve) => {
    socket.on('message', function answered (data: Buffer) {
      if (data.toString() !== '{"type":"pong"}') return
      socket.off('message', answered)
      resolve()
    })
  })
}

/** Keeps IN_FLIGHT messages unacknowledged from `sender` to `to` for as long as the socket is open. */
function keepSending (sender: Stream, to: number, name: string): void {
  let sent = 0
  const send = (): void => {
    if (sender.socket.readyState !== WebSocket.OPEN) return
    sender.socket.send(JSON.stringify({ type: 'message', to, text: `${name} ${sent}`, id: `${name}-${sent}` }))
    sent++
  }
  for (let index = 0; index < IN_FLIGHT; index++) send()
  sender.socket.on('message', (data: Buffer) => { if (data.toString().startsWith('{"type":"ack"')) send() })
}

test('SIGTERM while messages flow: sockets get 1001, the process exits 0, and every acknowledged message reaches its recipient exactly once', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const options = await realBackendOptions(t, backends)
  const server = await startServerProcess(t, {
    MYSQL_URL: options.mysqlUrl,
    REDIS_URL: options.redisUrl,
    REDIS_KEY_PREFIX: options.redisKeyPrefix,
    JWT_SECRET: TEST_JWT_SECRET,
    BCRYPT_COST: '4',
    WS_MESSAGE_RATE: '100000',
    WS_MESSAGE_BURST: '100000',
    AUTH_RATE_LIMIT_MAX: '1000'
  })

  const pairs = await Promise.all(Array.from({ length: PAIRS }, async (_, index) => {
    const [sender, recipient] = await Promise.all([signUp(server, `Sender ${index}`), signUp(server, `Recipient ${index}`)])
    return { sender, recipient, from: await openStream(server.wsUrl, sender), to: await openStream(server.wsUrl, recipient) }
  }))
  for (const [index, { from, recipient }] of pairs.entries()) keepSending(from, recipient.id, `pair${index}`)

  const ackCount = () => pairs.reduce((sum, { from }) => sum + from.acked.length, 0)
  while (ackCount() < ACKS_BEFORE_SIGNAL) await new Promise((resolve) => setTimeout(resolve, 5))
  server.child.kill('SIGTERM')
  const liveBeforeSignal = pairs.map(({ to }) => to.received.length)

  const closeCodes = await Promise.all(pairs.flatMap(({ from, to }) => [from.closed, to.closed]))
  t.same(closeCodes, closeCodes.map(() => 1001), 'every socket is closed with 1001')
  const [code, signal] = await server.exited
  t.same({ code, signal }, { code: 0, signal: null }, 'the process exits 0 once it has closed')
  t.notMatch(server.output(), /"level":(50|60)/, 'and logged no error on the way')
  t.ok(ackCount() >= ACKS_BEFORE_SIGNAL, `${ackCount()} messages acknowledged in all`)
  t.ok(liveBeforeSignal.every((count) => count > 0), `messages were reaching the recipients live when the signal came (${liveBeforeSignal.join(', ')})`)

  // The next node: the same database and Redis, so the same accounts, sessions and stored cursors.
  const next = await listen(t, options)
  for (const [index, { recipient, from, to }] of pairs.entries()) {
    // Its pong comes after the catch-up, so everything waiting has arrived by then.
    const later = await openStream(next.wsUrl, recipient)
    later.socket.close()

    const delivered = [...to.received, ...later.received]
    const missing = from.acked.filter((id) => !delivered.includes(id))
    t.same(missing, [], `pair ${index}: every one of the ${from.acked.length} acknowledged messages was delivered (${to.received.length} before the signal, ${later.received.length} after)`)
    t.equal(new Set(delivered).size, delivered.length, `pair ${index}: none twice`)
  }

  // And each is in the history: what was acknowledged is what was stored.
  const history = await build(t, options)
  for (const [index, { sender, recipient, from }] of pairs.entries()) {
    const stored: string[] = []
    let before: string | null = null
    do {
      const query = new URLSearchParams({ with: String(recipient.id), limit: '100', ...(before === null ? {} : { before }) })
      const response = await history.inject({ method: 'GET', url: `/messages?${query.toString()}`, headers: { authorization: `Bearer ${sender.accessToken}` } })
      const page = response.json() as { messages: Array<{ id: string }>, nextBefore: string | null }
      stored.unshift(...page.messages.map(({ id }) => id))
      before = page.nextBefore
    } while (before !== null)
    t.same(stored.slice(0, from.acked.length), from.acked, `pair ${index}: the acknowledged messages are stored, in order`)
  }
})
