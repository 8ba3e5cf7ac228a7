import { test, type Test } from 'tap'
import { readEnvironment, resolveConfig, type ConfigInput } from '../../src/config.js'
import { ConfigError } from '../../src/errors.js'
import { thrown } from '../helper.js'

const SECRET = 'a-test-secret-of-at-least-32-bytes!!'
const local = { sharedState: false }

/** The ConfigError `fn` throws; fails the test when it throws nothing or something else. */
function configError (t: Test, fn: () => unknown): ConfigError {
  return thrown(t, fn, ConfigError)
}

test('resolveConfig fills every default', async (t) => {
  const config = resolveConfig({ jwtSecret: SECRET }, local)
  t.strictSame(config, {
    jwtSecret: SECRET,
    jwtSecretGenerated: false,
    jwtIssuer: 'switchboard',
    jwtAudience: 'switchboard',
    accessTokenTtl: 900,
    refreshTokenTtl: 604_800,
    bcryptCost: 12,
    wsMaxPayload: 65_536,
    wsAllowedOrigins: [],
    wsMessageRate: 20,
    wsMessageBurst: 40,
    wsPingInterval: 30,
    wsMaxBuffered: 1_048_576,
    wsMaxConnectionsPerUser: 10,
    wsMaxConnections: 10_000,
    messageMaxChars: 4000,
    rateLimitMax: 300,
    rateLimitWindow: 60,
    authRateLimitMax: 10,
    authRateLimitWindow: 60,
    redisKeyPrefix: 'switchboard:',
    presenceTtl: 15
  })
  t.notOk('mysqlUrl' in config, 'no database unless configured')
  t.notOk('redisUrl' in config, 'no Redis unless configured')
})

test('resolveConfig keeps given values and does not touch its input', async (t) => {
  const input: ConfigInput = { jwtSecret: SECRET, bcryptCost: 4, wsAllowedOrigins: ['https://chat.example'] }
  const config = resolveConfig(input, local)
  t.equal(config.bcryptCost, 4)
  t.strictSame(config.wsAllowedOrigins, ['https://chat.example'])
  t.strictSame(input, { jwtSecret: SECRET, bcryptCost: 4, wsAllowedOrigins: ['https://chat.example'] })
})

test('resolveConfig refuses an unknown option, naming it', async (t) => {
  const error = configError(t, () => resolveConfig({ jwtSecret: SECRET, bcryptRounds: 10 } as ConfigInput, local))
  t.match(error.message, /unknown option "bcryptRounds"/)
})

test('resolveConfig refuses a __proto__ key', async (t) => {
  const input = JSON.parse(`{"jwtSecret":"${SECRET}","__proto__":{"bcryptCost":4}}`) as ConfigInput
  const error = configError(t, () => resolveConfig(input, local))
  t.match(error.message, /__proto__/)
})

test('resolveConfig names the environment variable of a bad value', async (t) => {
  const cases: Array<[ConfigInput, string]> = [
    [{ bcryptCost: 3 }, 'BCRYPT_COST'],
    [{ bcryptCost: 16 }, 'BCRYPT_COST'],
    [{ bcryptCost: 12.5 }, 'BCRYPT_COST'],
    [{ bcryptCost: '12' as unknown as number }, 'BCRYPT_COST'],
    [{ accessTokenTtl: 0 }, 'ACCESS_TOKEN_TTL'],
    [{ refreshTokenTtl: -1 }, 'REFRESH_TOKEN_TTL'],
    [{ wsMaxPayload: 10 }, 'WS_MAX_PAYLOAD'],
    [{ wsMessageRate: 0 }, 'WS_MESSAGE_RATE'],
    [{ wsAllowedOrigins: [''] }, 'WS_ALLOWED_ORIGINS'],
    [{ mysqlUrl: 'postgres://localhost/db' }, 'MYSQL_URL'],
    [{ redisUrl: 'http://localhost:6379' }, 'REDIS_URL']
  ]
  for (const [input, variable] of cases) {
    const error = configError(t, () => resolveConfig({ jwtSecret: SECRET, ...input }, local))
    t.match(error.message, variable, `${JSON.stringify(input)} names ${variable}`)
  }
})

test('resolveConfig accepts rediss:// and mysql:// URLs', async (t) => {
  const config = resolveConfig({ jwtSecret: SECRET, mysqlUrl: 'mysql://root@db/app', redisUrl: 'rediss://cache:6380' }, local)
  t.equal(config.mysqlUrl, 'mysql://root@db/app')
  t.equal(config.redisUrl, 'rediss://cache:6380')
})

test('a jwtSecret shorter than 32 bytes is refused', async (t) => {
  const error = configError(t, () => resolveConfig({ jwtSecret: 'x'.repeat(31) }, local))
  t.match(error.message, 'JWT_SECRET')
  t.match(error.message, '32 bytes')
  t.equal(resolveConfig({ jwtSecret: 'x'.repeat(32) }, local).jwtSecret, 'x'.repeat(32))
})

test('the secret length is counted in bytes, not characters', async (t) => {
  // 16 characters of 2 UTF-8 bytes each: 32 bytes, enough (counted in characters it would be refused).
  t.equal(resolveConfig({ jwtSecret: 'é'.repeat(16) }, local).jwtSecretGenerated, false)
  configError(t, () => resolveConfig({ jwtSecret: 'é'.repeat(15) }, local))
})

test('a missing secret is generated, per process, and flagged', async (t) => {
  const first = resolveConfig({}, local)
  const second = resolveConfig({}, local)
  t.equal(first.jwtSecretGenerated, true)
  t.ok(Buffer.byteLength(first.jwtSecret) >= 32, 'a generated secret is long enough too')
  t.not(first.jwtSecret, second.jwtSecret, 'random, not a fixed fallback')
})

test('a missing secret with shared state is an error naming JWT_SECRET', async (t) => {
  const error = configError(t, () => resolveConfig({ redisUrl: 'redis://127.0.0.1:6379' }, { sharedState: true }))
  t.match(error.message, 'JWT_SECRET')
  t.equal(resolveConfig({ jwtSecret: SECRET }, { sharedState: true }).jwtSecret, SECRET)
})

test('readEnvironment with nothing set gives the server defaults and no app options', async (t) => {
  const { app, server } = readEnvironment({})
  t.strictSame(app, {})
  t.strictSame(server, { port: 3000, host: '127.0.0.1', logLevel: 'info', trustProxy: false })
})

test('readEnvironment maps variables to options', async (t) => {
  const { app, server } = readEnvironment({
    JWT_SECRET: SECRET,
    ACCESS_TOKEN_TTL: '60',
    REFRESH_TOKEN_TTL: '3600',
    BCRYPT_COST: '10',
    WS_MAX_PAYLOAD: '2048',
    WS_MESSAGE_RATE: '2.5',
    MYSQL_URL: 'mysql://root@127.0.0.1/app',
    REDIS_URL: 'redis://127.0.0.1:6379',
    PORT: '8080',
    HOST: '0.0.0.0',
    LOG_LEVEL: 'debug',
    UNRELATED: 'ignored'
  })
  t.strictSame(app, {
    jwtSecret: SECRET,
    accessTokenTtl: 60,
    refreshTokenTtl: 3600,
    bcryptCost: 10,
    wsMaxPayload: 2048,
    wsMessageRate: 2.5,
    mysqlUrl: 'mysql://root@127.0.0.1/app',
    redisUrl: 'redis://127.0.0.1:6379'
  })
  t.strictSame(server, { port: 8080, host: '0.0.0.0', logLevel: 'debug', trustProxy: false })
  t.equal(resolveConfig(app, { sharedState: true }).bcryptCost, 10, 'what it reads, resolveConfig accepts')
})

test('readEnvironment parses whole numbers strictly and names the variable', async (t) => {
  for (const text of ['12abc', '1.5', '1e3', '0x10', 'twelve', ' ']) {
    const error = configError(t, () => readEnvironment({ BCRYPT_COST: text }))
    t.match(error.message, 'BCRYPT_COST', `"${text}" refused`)
  }
  const error = configError(t, () => readEnvironment({ PORT: '80a' }))
  t.match(error.message, 'PORT')
})

test('readEnvironment parses decimal numbers strictly and names the variable', async (t) => {
  for (const text of ['fast', '1x', 'Infinity', ' ']) {
    const error = configError(t, () => readEnvironment({ WS_MESSAGE_RATE: text }))
    t.match(error.message, 'WS_MESSAGE_RATE', `"${text}" refused`)
  }
})

test('a value read from the environment but out of range names the variable', async (t) => {
  t.match(configError(t, () => resolveConfig(readEnvironment({ BCRYPT_COST: '99' }).app, local)).message, 'BCRYPT_COST')
  t.match(configError(t, () => readEnvironment({ PORT: '70000' })).message, 'PORT')
  t.match(configError(t, () => readEnvironment({ PORT: '-1' })).message, 'PORT')
  t.match(configError(t, () => readEnvironment({ LOG_LEVEL: 'verbose' })).message, 'LOG_LEVEL')
})

test('readEnvironment reads WS_ALLOWED_ORIGINS as a comma-separated list', async (t) => {
  const { app } = readEnvironment({ WS_ALLOWED_ORIGINS: 'https://a.example, https://b.example ,,' })
  t.strictSame(app.wsAllowedOrigins, ['https://a.example', 'https://b.example'])
})

test('empty variables count as unset', async (t) => {
  const { app, server } = readEnvironment({ JWT_SECRET: '', BCRYPT_COST: '', WS_ALLOWED_ORIGINS: '', PORT: '', HOST: '', LOG_LEVEL: '', TRUST_PROXY: '' })
  t.strictSame(app, {})
  t.strictSame(server, { port: 3000, host: '127.0.0.1', logLevel: 'info', trustProxy: false })
  t.equal(resolveConfig(app, local).jwtSecretGenerated, true, 'an empty JWT_SECRET is no secret')
})

test('TRUST_PROXY reads as a boolean, a hop count or a list of addresses', async (t) => {
  const trustProxy = (text: string) => readEnvironment({ TRUST_PROXY: text }).server.trustProxy
  t.equal(trustProxy('true'), true)
  t.equal(trustProxy('false'), false)
  t.equal(trustProxy('0'), 0)
  t.equal(trustProxy('2'), 2)
  t.strictSame(trustProxy('10.0.0.0/8, 127.0.0.1'), ['10.0.0.0/8', '127.0.0.1'])
  t.strictSame(trustProxy('loopback'), ['loopback'])
})
