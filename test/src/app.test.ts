import { once } from 'node:events'
import fastifyJwt from '@fastify/jwt'
import fastifyWebsocket from '@fastify/websocket'
import Fastify, { type FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import WebSocket from 'ws'
import switchboard, { type SwitchboardOptions } from '../../src/app.js'
import { call, loadDocsUi, TEST_SETTINGS, until } from '../helper.js'

interface ErrorBody {
  statusCode: number
  code?: string
  error: string
  message: string
}

/** Small limits, so that anything they wrongly cover shows up within a few requests. */
const SMALL_LIMITS = { ...TEST_SETTINGS, rateLimitMax: 3, authRateLimitMax: 3 }

/**
 * A host app with its own route, error and validation behaviour, and
 * Switchboard embedded under /chat as a user would do it: the default
 * export, unwrapped, with settings only.
 */
async function hostApp (t: Test, { options = TEST_SETTINGS, setup = () => {} }: {
  options?: SwitchboardOptions
  setup?: (host: FastifyInstance) => Promise<void> | void
} = {}): Promise<FastifyInstance> {
  const host = Fastify()
  await setup(host)
  host.get('/hello', async () => ({ hello: 'world' }))
  host.get('/host-fails', async () => { throw new Error('host detail') })
  host.post('/host-echo', {
    schema: { body: { type: 'object', properties: { n: { type: 'integer' } } } }
  }, async (request) => request.body)
  await host.register(switchboard, { prefix: '/chat', ...options })
  await host.ready()
  t.teardown(() => host.close())
  return host
}

async function signupAndLogin (app: FastifyInstance, prefix: string): Promise<{ id: number, accessToken: string }> {
  const email = `embedded-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}@example.com`
  const password = 'correct horse battery'
  const signup = await call<{ id: number }>(app, { method: 'POST', url: `${prefix}/auth/signup`, payload: { email, password, name: 'Embedded' } })
  if (signup.statusCode !== 201) throw new Error(`signup: ${JSON.stringify(signup.body)}`)
  const login = await call<{ access_token: string }>(app, { method: 'POST', url: `${prefix}/auth/login`, payload: { email, password } })
  if (login.statusCode !== 200) throw new Error(`login: ${JSON.stringify(login.body)}`)
  return { id: signup.body.id, accessToken: login.body.access_token }
}

test('embedded under /chat, the service answers under the prefix', async (t) => {
  const host = await hostApp(t)

  t.same((await call(host, { method: 'GET', url: '/chat/health' })).body, { status: 'ok' }, '/chat/health')
  t.equal((await call(host, { method: 'GET', url: '/chat/ready' })).statusCode, 200, '/chat/ready')
  const user = await signupAndLogin(host, '/chat')
  const me = await call<{ id: number }>(host, { method: 'GET', url: '/chat/users/me', headers: { authorization: `Bearer ${user.accessToken}` } })
  t.equal(me.statusCode, 200, '/chat/users/me')
  t.equal(me.body.id, user.id)

  for (const url of ['/health', '/auth/signup', '/users/me', '/docs/json', '/ws']) {
    t.equal((await host.inject({ method: 'GET', url })).statusCode, 404, `nothing at the unprefixed ${url}`)
  }

  const ours = await call<ErrorBody>(host, { method: 'GET', url: '/chat/nope' })
  t.equal(ours.statusCode, 404)
  t.equal(ours.body.code, 'NOT_FOUND', 'an unknown route under the prefix gets our 404')
})

test('the embedded OpenAPI document lists the prefixed paths', async (t) => {
  const host = await hostApp(t)
  const response = await call<{ paths: Record<string, unknown>, servers?: unknown }>(host, { method: 'GET', url: '/chat/docs/json' })
  t.equal(response.statusCode, 200)
  const paths = Object.keys(response.body.paths).sort()
  // The paths carry the prefix themselves; no server URL is added.
  t.same(paths, ['/chat/auth/login', '/chat/auth/logout', '/chat/auth/refresh', '/chat/auth/signup',
    '/chat/health', '/chat/messages', '/chat/metrics', '/chat/ready', '/chat/users/me', '/chat/users/online', '/chat/users/{id}'])
  t.equal(response.body.servers, undefined, 'no servers entry')
  t.notOk(paths.includes('/hello'), 'the host\'s own routes are not in our document')

  const ui = await loadDocsUi(host, '/chat/docs')
  t.equal(ui.statusCode, 200, 'the UI is at /chat/docs')
  t.ok(ui.assets.length >= 3, 'it links its assets')
  for (const asset of ui.assets) {
    t.ok(asset.url.startsWith('/chat/docs/'), `${asset.url} is under the prefix`)
    t.equal(asset.statusCode, 200, `${asset.url} is served`)
  }
})

test('the host\'s own routes, errors and parsing are untouched', async (t) => {
  const host = await hostApp(t, { options: SMALL_LIMITS })

  // More requests than our global limit (3) allows: the host's route must not count them.
  for (let attempt = 1; attempt <= 6; attempt++) {
    const hello = await host.inject({ method: 'GET', url: '/hello' })
    t.equal(hello.statusCode, 200, `/hello request ${attempt}`)
    t.equal(hello.headers['x-ratelimit-limit'], undefined, 'no rate-limit headers on the host\'s route')
  }
  t.same((await call(host, { method: 'GET', url: '/hello' })).body, { hello: 'world' })

  const notFound = await call<ErrorBody>(host, { method: 'GET', url: '/nope' })
  t.equal(notFound.statusCode, 404)
  t.same(notFound.body, { message: 'Route GET:/nope not found', error: 'Not Found', statusCode: 404 }, 'the host\'s 404 is Fastify\'s own, not ours')

  const failure = await call<ErrorBody>(host, { method: 'GET', url: '/host-fails' })
  t.equal(failure.statusCode, 500)
  t.equal(failure.body.message, 'host detail', 'the host\'s own error handler still answers its errors')

  // The host keeps Fastify's default coercion and parsers; our strict ones stay inside /chat.
  const coerced = await call(host, { method: 'POST', url: '/host-echo', payload: { n: '5' } })
  t.equal(coerced.statusCode, 200)
  t.same(coerced.body, { n: 5 }, 'the host\'s validator still coerces')
  const text = await host.inject({ method: 'POST', url: '/host-echo', headers: { 'content-type': 'text/plain' }, payload: 'hi' })
  t.not(text.statusCode, 415, 'the host still parses text/plain')
  const strict = await call<ErrorBody>(host, { method: 'POST', url: '/chat/auth/signup', payload: { email: 'a@example.com', password: 'correct horse battery', name: 42 } })
  t.equal(strict.statusCode, 400, 'inside /chat, bodies are still strict')
  t.equal(strict.body.code, 'VALIDATION_FAILED')

  // Our limits do apply inside /chat.
  const limited = []
  for (let attempt = 1; attempt <= 4; attempt++) limited.push((await host.inject({ method: 'GET', url: '/chat/users/me' })).statusCode)
  t.same(limited, [401, 401, 401, 429], 'the global limit applies under the prefix')
})

test('a WebSocket to /chat/ws works on a listening host', async (t) => {
  const host = await hostApp(t)
  const address = await host.listen({ port: 0, host: '127.0.0.1' })
  const user = await signupAndLogin(host, '/chat')

  const client = new WebSocket(`${address.replace(/^http/, 'ws')}/chat/ws`, { headers: { authorization: `Bearer ${user.accessToken}` } })
  t.teardown(() => { client.terminate() })
  const frames: string[] = []
  const welcome = new Promise<Record<string, unknown>>((resolve, reject) => {
    client.on('message', (data) => {
      frames.push(String(data))
      if (frames.length === 1) resolve(JSON.parse(String(data)) as Record<string, unknown>)
    })
    client.once('error', reject)
  })
  const first = await welcome
  t.equal(first.type, 'welcome')
  t.match(first.user, { id: user.id })

  // A message to oneself comes back as an ack (there is no other device to deliver to).
  const ack = new Promise<Record<string, unknown>>((resolve) => {
    client.on('message', (data) => {
      const frame = JSON.parse(String(data)) as Record<string, unknown>
      if (frame.type === 'ack') resolve(frame)
    })
  })
  client.send(JSON.stringify({ type: 'message', to: user.id, text: 'hello me', id: 'ref-1' }))
  t.match(await ack, { type: 'ack', ref: 'ref-1' })

  const online = await call<{ count: number }>(host, { method: 'GET', url: '/chat/users/online', headers: { authorization: `Bearer ${user.accessToken}` } })
  t.equal(online.body.count, 1, 'the socket counts as online')
})

test('under a host\'s own @fastify/websocket, the host still hears of socket errors on our route', async (t) => {
  const heard: string[] = []
  const host = await hostApp(t, {
    setup: async (app) => {
      await app.register(fastifyWebsocket, {
        errorHandler (error, socket) {
          heard.push(`errorHandler: ${error.message}`)
          socket.terminate()
        }
      })
      app.websocketServer.on('connection', (socket: WebSocket) => {
        socket.on('error', (error: Error) => { heard.push(`connection listener: ${error.message}`) })
      })
    }
  })
  const address = await host.listen({ port: 0, host: '127.0.0.1' })
  const user = await signupAndLogin(host, '/chat')
  const client = new WebSocket(`${address.replace(/^http/, 'ws')}/chat/ws`, { headers: { authorization: `Bearer ${user.accessToken}` } })
  t.teardown(() => { client.terminate() })
  await once(client, 'message')
  // A masked frame with the reserved opcode 3: the server's ws refuses it with an error.
  const closed = once(client, 'close')
  const tcp = (client as unknown as { _socket: { write: (data: Buffer) => void } })._socket
  tcp.write(Buffer.from([0x83, 0x80, 0, 0, 0, 0]))
  await closed
  await until('the host heard of the error', () => heard.length >= 2)
  t.match(heard.sort(), [/^connection listener: .*invalid opcode 3/, /^errorHandler: .*invalid opcode 3/], 'both the host\'s errorHandler and its own listener')
})

test('a host with its own @fastify/jwt and `config` decorator can embed it', async (t) => {
  const hostConfig = { greeting: 'hi' }
  const hostSecret = 'the-host-s-own-secret-that-is-32-bytes-or-more'
  const host = await hostApp(t, {
    setup: async (host) => {
      await host.register(fastifyJwt, { secret: hostSecret })
      host.decorate('config', hostConfig)
    }
  })

  t.equal((host as FastifyInstance & { config: unknown }).config, hostConfig, 'the host\'s config decorator is untouched')
  const hostToken = host.jwt.sign({ sub: 'host-user' })
  t.match(host.jwt.verify(hostToken), { sub: 'host-user' }, 'the host\'s JWT still signs and verifies with its secret')

  const user = await signupAndLogin(host, '/chat')
  const me = await call(host, { method: 'GET', url: '/chat/users/me', headers: { authorization: `Bearer ${user.accessToken}` } })
  t.equal(me.statusCode, 200, 'our own tokens work')
  t.throws(() => host.jwt.verify(user.accessToken), 'our tokens are not signed with the host\'s secret')
  const hostTokenHere = await call<ErrorBody>(host, { method: 'GET', url: '/chat/users/me', headers: { authorization: `Bearer ${hostToken}` } })
  t.equal(hostTokenHere.statusCode, 401, 'the host\'s tokens are not ours')
})
