import { createPool, type Pool, type RowDataPacket } from 'mysql2/promise'
import { test, type Test } from 'tap'
import { migrate } from '../../../src/stores/migrate.js'
import { migrations, type Migration } from '../../../src/stores/migrations.js'
import { freshDatabase, realBackends } from '../../helper.js'

const ALL = migrations.map((migration) => migration.version)
/** Every table the shipped migrations make, in name order. */
const ALL_TABLES = ['message_cursors', 'messages', 'schema_migrations', 'users']
const LATEST = ALL.at(-1) ?? 0
/** The version of a test-only migration after the shipped ones. */
const NEXT = LATEST + 1

/** A pool on `uri`, closed when `t` ends. */
function openPool (t: Test, uri: string): Pool {
  const pool = createPool({ uri, timezone: 'Z', charset: 'utf8mb4_unicode_ci' })
  t.teardown(() => pool.end())
  return pool
}

async function tableNames (pool: Pool): Promise<string[]> {
  const [rows] = await pool.query<RowDataPacket[]>(
    'SELECT TABLE_NAME AS name FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()'
  )
  return rows.map((row) => String(row.name)).sort()
}

async function recordedVersions (pool: Pool): Promise<number[]> {
  const [rows] = await pool.query<RowDataPacket[]>('SELECT version FROM schema_migrations ORDER BY version')
  return rows.map((row) => Number(row.version))
}

/** The shipped migrations plus one that depends on the first, to see the order of both directions. */
const withBio: readonly Migration[] = [
  ...migrations,
  { version: NEXT, name: 'add users.bio', up: ['ALTER TABLE users ADD COLUMN bio TEXT NULL'], down: ['ALTER TABLE users DROP COLUMN bio'] }
]

test('migrations on MariaDB/MySQL', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const freshPool = async (t: Test) => openPool(t, await freshDatabase(t, backends.mysqlUrl))

  t.test('an empty database gets every version and utf8mb4 tables', async (t) => {
    const pool = await freshPool(t)
    t.strictSame(await migrate(pool), { from: 0, to: LATEST, applied: ALL, reverted: [] })
    t.strictSame(await tableNames(pool), ALL_TABLES)
    t.strictSame(await recordedVersions(pool), ALL)

    const [[table]] = await pool.query<RowDataPacket[]>(
      "SELECT TABLE_COLLATION AS collation FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'users'"
    )
    t.match(table?.collation, /^utf8mb4_/)
    const [columns] = await pool.query<RowDataPacket[]>(
      "SELECT COLUMN_NAME AS name, CHARACTER_SET_NAME AS charset FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'users' AND CHARACTER_SET_NAME IS NOT NULL"
    )
    t.ok(columns.length >= 3, 'the text columns are there')
    for (const column of columns) t.equal(column.charset, 'utf8mb4', `users.${String(column.name)} is utf8mb4`)
  })

  t.test('migrating an up-to-date database applies nothing', async (t) => {
    const pool = await freshPool(t)
    await migrate(pool)
    t.strictSame(await migrate(pool), { from: LATEST, to: LATEST, applied: [], reverted: [] })
    t.strictSame(await recordedVersions(pool), ALL)
  })

  t.test('two nodes migrating at once both succeed and the work is done once', async (t) => {
    const uri = await freshDatabase(t, backends.mysqlUrl)
    const [first, second] = await Promise.all([migrate(openPool(t, uri)), migrate(openPool(t, uri))])
    t.strictSame([first.applied, second.applied].sort((a, b) => b.length - a.length), [ALL, []], 'one applies, the other finds it done')
    t.strictSame(await recordedVersions(openPool(t, uri)), ALL)
  })

  t.test('migrating to 0 rolls back everything, and migrating up again works', async (t) => {
    const pool = await freshPool(t)
    await migrate(pool)
    const [inserted] = await pool.query<RowDataPacket[]>("INSERT INTO users (email, name, password_hash) VALUES ('a@example.com', 'A', 'h') RETURNING id")
    t.equal(inserted.length, 1)

    t.strictSame(await migrate(pool, { to: 0 }), { from: LATEST, to: 0, applied: [], reverted: [...ALL].reverse() })
    t.strictSame(await tableNames(pool), ['schema_migrations'])
    t.strictSame(await recordedVersions(pool), [])

    t.strictSame(await migrate(pool), { from: 0, to: LATEST, applied: ALL, reverted: [] })
    t.strictSame(await tableNames(pool), ALL_TABLES)
    const [rows] = await pool.query<RowDataPacket[]>('SELECT COUNT(*) AS count FROM users')
    t.equal(Number(rows[0]?.count), 0, 'the table is new')
  })

  t.test('migrations apply in ascending and roll back in descending order', async (t) => {
    const pool = await freshPool(t)
    // Given out of order, to show that migrate sorts them.
    const shuffled = [...withBio].reverse()
    t.strictSame(await migrate(pool, { migrations: shuffled }), { from: 0, to: NEXT, applied: [...ALL, NEXT], reverted: [] })
    t.strictSame(await recordedVersions(pool), [...ALL, NEXT])
    t.strictSame(await migrate(pool, { migrations: shuffled, to: LATEST }), { from: NEXT, to: LATEST, applied: [], reverted: [NEXT] })
    t.strictSame(await migrate(pool, { migrations: shuffled, to: NEXT }), { from: LATEST, to: NEXT, applied: [NEXT], reverted: [] })
    t.strictSame(await migrate(pool, { migrations: shuffled, to: 0 }), { from: NEXT, to: 0, applied: [], reverted: [...ALL, NEXT].reverse() })
    t.strictSame(await tableNames(pool), ['schema_migrations'])
  })

  t.test('a failing migration rejects, is not recorded, and releases the lock', async (t) => {
    const uri = await freshDatabase(t, backends.mysqlUrl)
    const pool = openPool(t, uri)
    const broken: readonly Migration[] = [
      ...migrations,
      { version: NEXT, name: 'broken', up: ['ALTER TABLE no_such_table ADD COLUMN x INT'], down: [] }
    ]
    await t.rejects(migrate(pool, { migrations: broken }), { code: 'ER_NO_SUCH_TABLE' })
    t.strictSame(await recordedVersions(pool), ALL, 'what succeeded before it stays recorded')

    // Another node (another connection) gets the lock; were it still held,
    // this would wait for GET_LOCK's timeout and reject.
    t.strictSame(await migrate(openPool(t, uri)), { from: LATEST, to: LATEST, applied: [], reverted: [] })
  })
})
