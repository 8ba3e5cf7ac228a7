import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { test, type Test } from 'tap'
import { createMemoryRefreshTokenStore, type RefreshTokenStore, type RotateResult } from '../../../src/stores/refresh-tokens-memory.js'
import { createRedisRefreshTokenStore } from '../../../src/stores/refresh-tokens-redis.js'
import { freshRedisPrefix, realBackends } from '../../helper.js'

/** A store and the clock it runs on. */
interface Harness {
  store: RefreshTokenStore
  /** The store's current time, epoch ms. */
  now (): number
  /** Resolves once the store's clock is past `epochMs`. */
  passTime (epochMs: number): Promise<void>
}

/** Makes an empty store that lives as long as `t`. */
type HarnessFactory = (t: Test) => Promise<Harness>

const USER_ID = 42
const OTHER_USER_ID = 7
const LONG_MS = 60 * 60 * 1000
/**
 * Long enough that the steps before the wait finish inside it even on a busy
 * machine (Redis runs on the real clock), short enough to wait for.
 */
const SHORT_MS = 1000

/** Stands for the hash of a new token (the stores never see the token itself). */
function tokenHash (): string {
  return randomBytes(32).toString('base64url')
}

function familyId (): string {
  return randomBytes(16).toString('hex')
}

/** What every refresh-token store must do, whatever keeps the data. */
function refreshTokenStoreContract (t: Test, makeHarness: HarnessFactory): void {
  t.test('create, then rotate: the token is spent and the next one works', async (t) => {
    const { store, now } = await makeHarness(t)
    const family = familyId()
    const [first, second, third] = [tokenHash(), tokenHash(), tokenHash()]
    await store.create(first, { userId: USER_ID, familyId: family, expiresAt: now() + LONG_MS })

    t.strictSame(await store.rotate(first, second, now() + LONG_MS), { status: 'rotated', userId: USER_ID, familyId: family })
    t.strictSame(await store.rotate(second, third, now() + LONG_MS), { status: 'rotated', userId: USER_ID, familyId: family })
    t.equal(await store.isFamilyLive(family), true)
  })

  t.test('rotating a spent token is reuse and kills every token of the family', async (t) => {
    const { store, now } = await makeHarness(t)
    const family = familyId()
    const otherFamily = familyId()
    const [first, second, newest, attacker, other, otherNext] = [tokenHash(), tokenHash(), tokenHash(), tokenHash(), tokenHash(), tokenHash()]
    await store.create(first, { userId: USER_ID, familyId: family, expiresAt: now() + LONG_MS })
    await store.create(other, { userId: USER_ID, familyId: otherFamily, expiresAt: now() + LONG_MS })
    await store.rotate(first, second, now() + LONG_MS)
    await store.rotate(second, newest, now() + LONG_MS)

    t.strictSame(await store.rotate(first, attacker, now() + LONG_MS), { status: 'reused', userId: USER_ID, familyId: family })
    t.equal(await store.isFamilyLive(family), false)
    for (const [name, hash] of Object.entries({ first, second, newest, attacker })) {
      t.strictSame(await store.rotate(hash, tokenHash(), now() + LONG_MS), { status: 'invalid' }, `${name} no longer rotates`)
      t.strictSame(await store.revoke(hash), { status: 'invalid' }, `${name} no longer revokes`)
    }
    // Another session of the same user is not touched.
    t.equal(await store.isFamilyLive(otherFamily), true)
    t.strictSame(await store.rotate(other, otherNext, now() + LONG_MS), { status: 'rotated', userId: USER_ID, familyId: otherFamily })
  })

  t.test('revoke ends the family of a live token', async (t) => {
    const { store, now } = await makeHarness(t)
    const family = familyId()
    const [first, second] = [tokenHash(), tokenHash()]
    await store.create(first, { userId: OTHER_USER_ID, familyId: family, expiresAt: now() + LONG_MS })
    await store.rotate(first, second, now() + LONG_MS)

    t.strictSame(await store.revoke(second), { status: 'revoked', userId: OTHER_USER_ID, familyId: family })
    t.equal(await store.isFamilyLive(family), false)
    t.strictSame(await store.rotate(second, tokenHash(), now() + LONG_MS), { status: 'invalid' })
    t.strictSame(await store.revoke(second), { status: 'invalid' }, 'a second logout is refused')
    t.strictSame(await store.rotate(first, tokenHash(), now() + LONG_MS), { status: 'invalid' }, 'a spent token of a dead family is just invalid')
  })

  t.test('revoking a spent token is reuse and ends the family', async (t) => {
    const { store, now } = await makeHarness(t)
    const family = familyId()
    const [first, second] = [tokenHash(), tokenHash()]
    await store.create(first, { userId: USER_ID, familyId: family, expiresAt: now() + LONG_MS })
    await store.rotate(first, second, now() + LONG_MS)

    t.strictSame(await store.revoke(first), { status: 'reused', userId: USER_ID, familyId: family })
    t.equal(await store.isFamilyLive(family), false)
    t.strictSame(await store.rotate(second, tokenHash(), now() + LONG_MS), { status: 'invalid' })
  })

  t.test('an unknown token is invalid', async (t) => {
    const { store, now } = await makeHarness(t)
    const unknown = tokenHash()
    t.strictSame(await store.rotate(unknown, tokenHash(), now() + LONG_MS), { status: 'invalid' })
    t.strictSame(await store.revoke(unknown), { status: 'invalid' })
    t.equal(await store.isFamilyLive(familyId()), false)
  })

  t.test('isFamilyLive follows the family through create, rotation and revocation', async (t) => {
    const { store, now } = await makeHarness(t)
    const family = familyId()
    const [first, second] = [tokenHash(), tokenHash()]
    t.equal(await store.isFamilyLive(family), false, 'before its first token')
    await store.create(first, { userId: USER_ID, familyId: family, expiresAt: now() + LONG_MS })
    t.equal(await store.isFamilyLive(family), true, 'after create')
    await store.rotate(first, second, now() + LONG_MS)
    t.equal(await store.isFamilyLive(family), true, 'after rotation')
    await store.revoke(second)
    t.equal(await store.isFamilyLive(family), false, 'after revocation')
  })

  t.test('tokens expire; rotating to a later expiry keeps the family alive', async (t) => {
    const { store, now, passTime } = await makeHarness(t)
    const shortExpiry = now() + SHORT_MS
    const expiring = familyId()
    const extended = familyId()
    const [expiringToken, first, second] = [tokenHash(), tokenHash(), tokenHash()]
    await store.create(expiringToken, { userId: USER_ID, familyId: expiring, expiresAt: shortExpiry })
    await store.create(first, { userId: USER_ID, familyId: extended, expiresAt: shortExpiry })
    t.equal(await store.isFamilyLive(expiring), true, 'live before its expiry')
    t.strictSame(await store.rotate(first, second, now() + LONG_MS), { status: 'rotated', userId: USER_ID, familyId: extended })

    await passTime(shortExpiry)

    t.strictSame(await store.rotate(expiringToken, tokenHash(), now() + LONG_MS), { status: 'invalid' })
    t.strictSame(await store.revoke(expiringToken), { status: 'invalid' })
    t.equal(await store.isFamilyLive(expiring), false)
    t.strictSame(await store.rotate(first, tokenHash(), now() + LONG_MS), { status: 'invalid' }, 'an expired spent token is invalid, not reuse')
    t.equal(await store.isFamilyLive(extended), true, 'the family lives as long as its newest token')
    t.strictSame(await store.rotate(second, tokenHash(), now() + LONG_MS), { status: 'rotated', userId: USER_ID, familyId: extended })
  })

  t.test('a token whose expiry has already passed is invalid at once', async (t) => {
    const { store, now } = await makeHarness(t)
    const family = familyId()
    const token = tokenHash()
    await store.create(token, { userId: USER_ID, familyId: family, expiresAt: now() - 1000 })
    t.strictSame(await store.rotate(token, tokenHash(), now() + LONG_MS), { status: 'invalid' })
    t.equal(await store.isFamilyLive(family), false)
  })

  t.test('20 parallel rotations of one token: exactly one wins, the next is reuse', async (t) => {
    const { store, now } = await makeHarness(t)
    const family = familyId()
    const token = tokenHash()
    await store.create(token, { userId: USER_ID, familyId: family, expiresAt: now() + LONG_MS })
    const nextTokens = Array.from({ length: 20 }, tokenHash)

    const results = await Promise.all(nextTokens.map((next) => store.rotate(token, next, now() + LONG_MS)))

    const count = (status: RotateResult['status']) => results.filter((result) => result.status === status).length
    t.equal(count('rotated'), 1, 'one rotation wins')
    // The first loser presents a spent token: reuse, which kills the family,
    // so every later one finds nothing.
    t.equal(count('reused'), 1)
    t.equal(count('invalid'), 18)
    t.equal(await store.isFamilyLive(family), false)
    for (const next of nextTokens) {
      t.strictSame(await store.rotate(next, tokenHash(), now() + LONG_MS), { status: 'invalid' })
    }
  })
}

test('in-memory refresh-token store', async (t) => {
  refreshTokenStoreContract(t, async () => {
    let time = Date.now()
    return {
      store: createMemoryRefreshTokenStore(() => time),
      now: () => time,
      passTime: async (epochMs) => { time = Math.max(time, epochMs + 1) }
    }
  })
})

/** A Redis client closed when `t` ends. */
function redisClient (t: Test, url: string, options: { keyPrefix?: string } = {}): Redis {
  const redis = new Redis(url, options)
  t.teardown(async () => { await redis.quit() })
  return redis
}

/** Redis expires on its own clock, which is this machine's: wait it out. */
async function waitUntilPast (epochMs: number): Promise<void> {
  // Redis treats a key as expired only once its time is strictly past.
  while (Date.now() <= epochMs + 1) await sleep(epochMs + 2 - Date.now())
}

test('Redis refresh-token store', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const { redisUrl } = backends

  t.test('contract', async (t) => {
    refreshTokenStoreContract(t, async (t) => ({
      store: createRedisRefreshTokenStore(redisClient(t, redisUrl), { prefix: freshRedisPrefix(t, redisUrl) }),
      now: Date.now,
      passTime: waitUntilPast
    }))
  })

  t.test('contract, on a host client that has its own keyPrefix', async (t) => {
    refreshTokenStoreContract(t, async (t) => ({
      // The scripts build the family key themselves, so they must add the client's prefix too.
      store: createRedisRefreshTokenStore(redisClient(t, redisUrl, { keyPrefix: `${freshRedisPrefix(t, redisUrl)}host:` }), { prefix: 'switchboard:' }),
      now: Date.now,
      passTime: waitUntilPast
    }))
  })

  t.test('writes only keys under its prefix, each with a TTL', async (t) => {
    const prefix = freshRedisPrefix(t, redisUrl)
    const redis = redisClient(t, redisUrl)
    const store = createRedisRefreshTokenStore(redis, { prefix })
    // Every token and family name carries a marker, so any key written for
    // them, under the prefix or not, can be found in the whole keyspace.
    const marker = randomBytes(8).toString('hex')
    const name = (label: string) => `${marker}-${label}`
    const expiresAt = Date.now() + LONG_MS

    await store.create(name('t1'), { userId: USER_ID, familyId: name('live'), expiresAt })
    await store.rotate(name('t1'), name('t2'), expiresAt)
    await store.create(name('t3'), { userId: USER_ID, familyId: name('revoked'), expiresAt })
    await store.rotate(name('t3'), name('t4'), expiresAt)
    await store.rotate(name('t3'), name('t5'), expiresAt)

    const keys: string[] = []
    let cursor = '0'
    do {
      const [next, found] = await redis.scan(cursor, 'MATCH', `*${marker}*`, 'COUNT', 1000)
      keys.push(...found)
      cursor = next
    } while (cursor !== '0')

    t.ok(keys.length >= 3, `the store wrote keys (${keys.length})`)
    for (const key of keys) {
      t.ok(key.startsWith(prefix), `${key} is under the prefix`)
      const ttl = await redis.pttl(key)
      t.ok(ttl > 0 && ttl <= LONG_MS, `${key} expires (pttl ${ttl})`)
    }
  })
})
