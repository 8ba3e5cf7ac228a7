import { createPool } from 'mysql2/promise'
import { test, type Test } from 'tap'
import { ConflictError } from '../../../src/errors.js'
import { migrate } from '../../../src/stores/migrate.js'
import { createMemoryUsersStore, EMAIL_TAKEN, type NewUser, type UsersStore } from '../../../src/stores/users-memory.js'
import { createMysqlUsersStore } from '../../../src/stores/users-mysql.js'
import { freshDatabase, realBackends } from '../../helper.js'

/** Makes an empty store that lives as long as `t`. */
type UsersStoreFactory = (t: Test) => Promise<UsersStore>

const ISO_8601_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/
const UNKNOWN_ID = 987_654_321

let emailCounter = 0
function newUser (overrides: Partial<NewUser> = {}): NewUser {
  return { email: `user${++emailCounter}@example.com`, name: 'Ada Lovelace', passwordHash: `hash-${emailCounter}`, ...overrides }
}

/** What every users store must do, whatever keeps the data. */
function usersStoreContract (t: Test, makeStore: UsersStoreFactory): void {
  t.test('create returns the new user with increasing ids, no avatar and an ISO creation time', async (t) => {
    const store = await makeStore(t)
    const before = Date.now()
    const first = await store.create(newUser({ email: 'first@example.com', name: 'First' }))
    const second = await store.create(newUser({ email: 'second@example.com', name: 'Second' }))
    const after = Date.now()

    t.strictSame(first, { id: first.id, email: 'first@example.com', name: 'First', avatarUrl: null, createdAt: first.createdAt })
    t.ok(Number.isSafeInteger(first.id) && first.id >= 1, 'ids are positive integers')
    t.ok(second.id > first.id, 'a later user has a larger id')
    for (const user of [first, second]) {
      t.match(user.createdAt, ISO_8601_UTC)
      const createdAt = Date.parse(user.createdAt)
      t.ok(createdAt >= before && createdAt <= after, 'createdAt is the moment of creation')
    }
    t.notOk('passwordHash' in first, 'the user carries no hash')
  })

  t.test('a taken email is a ConflictError with code EMAIL_TAKEN and changes nothing', async (t) => {
    const store = await makeStore(t)
    const original = await store.create(newUser({ email: 'taken@example.com', passwordHash: 'original-hash' }))

    await t.rejects(store.create(newUser({ email: 'taken@example.com', passwordHash: 'intruder-hash' })), ConflictError)
    await t.rejects(store.create(newUser({ email: 'taken@example.com' })), { code: EMAIL_TAKEN })

    const credentials = await store.findCredentialsByEmail('taken@example.com')
    t.strictSame(credentials, { user: original, passwordHash: 'original-hash' })
    const next = await store.create(newUser({ email: 'next@example.com' }))
    t.ok(next.id > original.id, 'the store still accepts new users afterwards')
  })

  t.test('findCredentialsByEmail returns the user with the hash, or null', async (t) => {
    const store = await makeStore(t)
    const user = await store.create(newUser({ email: 'creds@example.com', passwordHash: '$2b$04$abcdefghijklmnopqrstuv' }))

    t.strictSame(await store.findCredentialsByEmail('creds@example.com'), { user, passwordHash: '$2b$04$abcdefghijklmnopqrstuv' })
    t.equal(await store.findCredentialsByEmail('nobody@example.com'), null)
  })

  t.test('findById returns the user without hash, or null', async (t) => {
    const store = await makeStore(t)
    const user = await store.create(newUser())

    t.strictSame(await store.findById(user.id), user)
    t.equal(await store.findById(UNKNOWN_ID), null)
  })

  t.test('findByIds returns the known users once each, in ascending id order', async (t) => {
    const store = await makeStore(t)
    const a = await store.create(newUser({ name: 'A' }))
    const b = await store.create(newUser({ name: 'B' }))
    const c = await store.create(newUser({ name: 'C' }))

    t.strictSame(await store.findByIds([c.id, a.id, UNKNOWN_ID, c.id, b.id, a.id]), [a, b, c])
    t.strictSame(await store.findByIds([b.id]), [b])
    t.strictSame(await store.findByIds([UNKNOWN_ID]), [])
    t.strictSame(await store.findByIds([]), [])
  })

  t.test('returned users are copies: changing one does not change the store', async (t) => {
    const store = await makeStore(t)
    const user = await store.create(newUser({ name: 'Original' }))
    const snapshot = { ...user }

    user.name = 'Changed'
    const found = await store.findById(user.id)
    t.strictSame(found, snapshot)
    if (found !== null) found.name = 'Changed again'
    t.strictSame(await store.findById(user.id), snapshot)
  })

  t.test('names in any script, with 4-byte emoji, come back byte for byte', async (t) => {
    const store = await makeStore(t)
    const names = [
      'Zoë 😀 Ñandú 日本語 مرحبا Ωμέγα Привет',
      '👩🏽‍💻🏳️‍🌈𝔘𝔫𝔦𝔠𝔬𝔡𝔢',
      // Decomposed é (e + combining acute) must not be normalised to the composed form.
      'Rene\u0301e',
      // The schema allows 100 characters; emoji are 4 bytes each in UTF-8.
      '😀'.repeat(100)
    ]
    for (const name of names) {
      const email = `${Buffer.from(name).toString('hex').slice(0, 40)}@example.com`
      const created = await store.create(newUser({ email, name }))
      t.equal(created.name, name)
      const found = await store.findById(created.id)
      t.same(Buffer.from(found?.name ?? '', 'utf8'), Buffer.from(name, 'utf8'), `findById keeps ${JSON.stringify(name)}`)
      t.equal((await store.findCredentialsByEmail(email))?.user.name, name)
      t.equal((await store.findByIds([created.id]))[0]?.name, name)
    }
  })

  t.test('createdAt reads back identical to what create returned', async (t) => {
    const store = await makeStore(t)
    const user = await store.create(newUser())
    const found = await store.findById(user.id)
    t.equal(found?.createdAt, user.createdAt)
    t.equal((await store.findCredentialsByEmail(user.email))?.user.createdAt, user.createdAt)
  })
}

test('in-memory users store', async (t) => {
  usersStoreContract(t, async () => createMemoryUsersStore())
})

test('MySQL users store', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  usersStoreContract(t, async (t) => {
    const uri = await freshDatabase(t, backends.mysqlUrl)
    // The same connection settings as plugins/db.ts.
    const pool = createPool({ uri, timezone: 'Z', charset: 'utf8mb4_unicode_ci' })
    t.teardown(() => pool.end())
    await migrate(pool)
    return createMysqlUsersStore(pool)
  })
})
