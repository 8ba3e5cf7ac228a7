import type { FastifyInstance, InjectOptions } from 'fastify'
import { Redis } from 'ioredis'
import { test, type Test } from 'tap'
import type { SwitchboardOptions } from '../../src/app.js'
import { build, call, realBackendOptions, realBackends, scanKeys } from '../helper.js'

interface ErrorBody {
  statusCode: number
  code: string
  error: string
  message: string
}

/** Small limits, so a handful of requests reaches them. */
const LIMITS: SwitchboardOptions = { authRateLimitMax: 3, rateLimitMax: 5 }
const PASSWORD = 'correct horse battery'

let counter = 0
function uniqueEmail (): string {
  return `limited${++counter}-${process.pid}-${Date.now()}@example.com`
}

function login (email: string, remoteAddress: string): InjectOptions {
  return { method: 'POST', url: '/auth/login', payload: { email, password: PASSWORD }, remoteAddress }
}

function assertRateLimited (t: Test, response: { statusCode: number, body: ErrorBody, headers: Record<string, unknown> }): void {
  t.equal(response.statusCode, 429)
  t.same(response.body.code, 'RATE_LIMITED')
  t.same(Object.keys(response.body).sort(), ['code', 'error', 'message', 'statusCode'], 'the usual error shape')
  t.equal(response.body.statusCode, 429)
  const retryAfter = Number(response.headers['retry-after'])
  t.ok(Number.isInteger(retryAfter) && retryAfter > 0, `retry-after is a positive number of seconds (${String(response.headers['retry-after'])})`)
}

async function signup (app: FastifyInstance, email: string, remoteAddress: string): Promise<void> {
  const response = await call(app, { method: 'POST', url: '/auth/signup', payload: { email, password: PASSWORD, name: 'Limited' }, remoteAddress })
  if (response.statusCode !== 201) throw new Error(`signup failed: ${JSON.stringify(response.body)}`)
}

/** Every limit of the service, on one backend. */
async function rateLimits (t: Test, options: SwitchboardOptions): Promise<FastifyInstance> {
  const app = await build(t, { ...options, ...LIMITS })

  await t.test('the 4th login from one IP is refused', async (t) => {
    // A different email each time: only the per-IP limit can be reached.
    for (let attempt = 1; attempt <= 3; attempt++) {
      const response = await call(app, login(uniqueEmail(), '10.1.0.1'))
      t.equal(response.statusCode, 401, `login ${attempt} is answered`)
      t.equal(response.headers['x-ratelimit-limit'], '3', 'the stricter auth limit applies')
    }
    assertRateLimited(t, await call<ErrorBody>(app, login(uniqueEmail(), '10.1.0.1')))
    const otherIp = await call(app, login(uniqueEmail(), '10.1.0.2'))
    t.equal(otherIp.statusCode, 401, 'another IP is not affected')
  })

  await t.test('the 4th signup from one IP is refused', async (t) => {
    for (let attempt = 1; attempt <= 3; attempt++) await signup(app, uniqueEmail(), '10.2.0.1')
    const fourth = await call<ErrorBody>(app, { method: 'POST', url: '/auth/signup', payload: { email: uniqueEmail(), password: PASSWORD, name: 'Limited' }, remoteAddress: '10.2.0.1' })
    assertRateLimited(t, fourth)
  })

  await t.test('logins for one account from many IPs are limited too', async (t) => {
    const email = uniqueEmail()
    // The account's email in other cases is still the same account.
    const spellings = [email, email.toUpperCase(), ` ${email}`]
    for (let attempt = 1; attempt <= 3; attempt++) {
      const response = await call(app, login(spellings[attempt - 1] as string, `10.3.0.${attempt}`))
      t.equal(response.statusCode, 401, `login ${attempt} from a fresh IP is answered`)
    }
    assertRateLimited(t, await call<ErrorBody>(app, login(email, '10.3.0.4')))
    const otherAccount = await call(app, login(uniqueEmail(), '10.3.0.5'))
    t.equal(otherAccount.statusCode, 401, 'another account from a fresh IP is not affected')
  })

  await t.test('the account limit refuses the right password too', async (t) => {
    const email = uniqueEmail()
    await signup(app, email, '10.4.0.1')
    const wrong = await call(app, { ...login(email, '10.4.0.2'), payload: { email, password: 'wrong password' } })
    t.equal(wrong.statusCode, 401)
    // Signup and the wrong guess used up two of the account's three attempts...
    const right = await call(app, login(email, '10.4.0.3'))
    t.equal(right.statusCode, 200, 'the right password still logs in within the limit')
    // ...so from here on even the right password waits.
    assertRateLimited(t, await call<ErrorBody>(app, login(email, '10.4.0.4')))
  })

  await t.test('the global per-IP limit covers the other routes', async (t) => {
    const ip = '10.5.0.1'
    for (let attempt = 1; attempt <= 5; attempt++) {
      const response = await call(app, { method: 'GET', url: '/users/me', remoteAddress: ip })
      t.equal(response.statusCode, 401, `request ${attempt} reaches the route`)
      t.equal(response.headers['x-ratelimit-limit'], '5', 'the global limit applies')
    }
    assertRateLimited(t, await call<ErrorBody>(app, { method: 'GET', url: '/users/me', remoteAddress: ip }))
    const other = await call(app, { method: 'GET', url: '/users/me', remoteAddress: '10.5.0.2' })
    t.equal(other.statusCode, 401, 'another IP is not affected')
  })

  await t.test('unknown routes are limited too', async (t) => {
    const ip = '10.6.0.1'
    for (let attempt = 1; attempt <= 5; attempt++) {
      const response = await call(app, { method: 'GET', url: `/no-such-route-${attempt}`, remoteAddress: ip })
      t.equal(response.statusCode, 404)
    }
    assertRateLimited(t, await call<ErrorBody>(app, { method: 'GET', url: '/no-such-route', remoteAddress: ip }))
  })

  await t.test('WebSocket upgrades count against the global limit, refused ones included', async (t) => {
    const ip = '10.8.0.1'
    for (let attempt = 1; attempt <= 5; attempt++) {
      const response = await call(app, { method: 'GET', url: '/ws', headers: { authorization: 'Bearer not-a-token' }, remoteAddress: ip })
      t.equal(response.statusCode, 401, `upgrade ${attempt} reaches the token check`)
    }
    assertRateLimited(t, await call<ErrorBody>(app, { method: 'GET', url: '/ws', headers: { authorization: 'Bearer not-a-token' }, remoteAddress: ip }))
  })

  await t.test('/health and /ready are never limited', async (t) => {
    const ip = '10.7.0.1'
    for (let attempt = 1; attempt <= 12; attempt++) {
      for (const url of ['/health', '/ready']) {
        const response = await app.inject({ method: 'GET', url, remoteAddress: ip })
        t.equal(response.statusCode, 200, `${url} request ${attempt}`)
        t.equal(response.headers['x-ratelimit-limit'], undefined, 'no rate-limit headers')
      }
    }
  })

  return app
}

test('rate limits on the embedded default', async (t) => {
  await rateLimits(t, {})
})

test('rate limits on Redis, with the counters under the test\'s prefix', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const options = await realBackendOptions(t, backends)
  await rateLimits(t, options)

  const redis = new Redis(backends.redisUrl)
  t.teardown(() => redis.quit())
  const all = await scanKeys(redis, `${options.redisKeyPrefix}rl:*`)
  t.ok(all.some((key) => key.includes('/auth/login') && key.endsWith('10.1.0.1')), 'the per-IP login counter is in Redis')
  t.ok(all.some((key) => key.includes('10.5.0.1')), 'the global counter is in Redis')
  t.ok(all.some((key) => key.includes('account:')), 'the per-account counter is in Redis')
  t.notOk(all.some((key) => key.includes('@')), 'under a hash of the email, not the address')
})

test('a second app on the same Redis shares the counters', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const options = await realBackendOptions(t, backends)
  // Two nodes on one Redis prefix (the second reuses the first one's database).
  const first = await build(t, { ...options, ...LIMITS })
  const second = await build(t, { ...options, ...LIMITS })
  for (const app of [first, second, first]) {
    t.equal((await call(app, login(uniqueEmail(), '10.8.0.1'))).statusCode, 401)
  }
  assertRateLimited(t, await call<ErrorBody>(second, login(uniqueEmail(), '10.8.0.1')))
})
