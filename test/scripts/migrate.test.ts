import { createPool, type RowDataPacket } from 'mysql2/promise'
import { test, type Test } from 'tap'
import { runMigrateCommand, USAGE } from '../../scripts/migrate.js'
import { freshDatabase, realBackends } from '../helper.js'

interface Outcome {
  code: number
  out: string
  err: string
}

/** Runs `db:migrate` with `args` and `env`, capturing what it prints. */
async function run (args: string[], env: NodeJS.ProcessEnv = {}): Promise<Outcome> {
  const out: string[] = []
  const err: string[] = []
  const code = await runMigrateCommand(args, { env, log: (line) => out.push(line), error: (line) => err.push(line) })
  return { code, out: out.join('\n'), err: err.join('\n') }
}

async function tablesOf (t: Test, uri: string): Promise<string[]> {
  const pool = createPool({ uri })
  t.teardown(() => pool.end())
  const [rows] = await pool.query<RowDataPacket[]>(
    'SELECT TABLE_NAME AS name FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()'
  )
  return rows.map((row) => String(row.name)).sort()
}

test('without MYSQL_URL it fails and names the variable', async (t) => {
  const { code, err } = await run([], {})
  t.equal(code, 1)
  t.match(err, /MYSQL_URL is not set/)
})

test('bad arguments fail with the usage, before touching any database', async (t) => {
  // A URL nothing listens on: reaching it would fail differently.
  const env = { MYSQL_URL: 'mysql://root@127.0.0.1:1/none' }
  for (const args of [['--to'], ['--to', 'abc'], ['--to', '-1'], ['--to', '999'], ['--force'], ['extra']]) {
    const { code, err } = await run(args, env)
    t.equal(code, 2, `${args.join(' ')} is refused`)
    t.match(err, USAGE)
  }
  const { err } = await run(['--to', '999'], env)
  t.match(err, /--to must be 0 or a known version \(1[,)]/)
})

test('--help prints the usage', async (t) => {
  t.strictSame(await run(['--help']), { code: 0, out: USAGE, err: '' })
})

test('an unreachable database is a failure with the cause', async (t) => {
  const { code, err } = await run([], { MYSQL_URL: 'mysql://root@127.0.0.1:1/none' })
  t.equal(code, 1)
  t.match(err, /db:migrate: failed: .*ECONNREFUSED/)
})

/** Every table the migrations make, in name order. */
const ALL_TABLES = ['message_cursors', 'messages', 'schema_migrations', 'users']

test('db:migrate on MariaDB/MySQL', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  const uri = await freshDatabase(t, backends.mysqlUrl)
  const env = { MYSQL_URL: uri }

  const first = await run([], env)
  t.equal(first.code, 0, first.err)
  t.match(first.out, /^applied {2}1 create users$/m)
  t.match(first.out, /^applied {2}2 create messages and message cursors$/m)
  t.match(first.out, /^schema version: 2$/m)
  t.strictSame(await tablesOf(t, uri), ALL_TABLES)

  const again = await run([], env)
  t.equal(again.code, 0)
  t.match(again.out, /^nothing to do$/m)

  const refused = await run(['--to', '0'], env)
  t.equal(refused.code, 1, 'rolling back needs --yes')
  t.match(refused.err, /refusing to roll back from version 2 to 0.*--yes/)
  t.strictSame(await tablesOf(t, uri), ALL_TABLES, 'nothing was dropped')

  const rolledBack = await run(['--to', '0', '--yes'], env)
  t.equal(rolledBack.code, 0, rolledBack.err)
  t.match(rolledBack.out, /^reverted 2 create messages and message cursors$/m)
  t.match(rolledBack.out, /^reverted 1 create users$/m)
  t.match(rolledBack.out, /^schema version: 0$/m)
  t.strictSame(await tablesOf(t, uri), ['schema_migrations'])

  const up = await run(['--to', '1'], env)
  t.equal(up.code, 0, 'going up needs no --yes')
  t.match(up.out, /^applied {2}1 create users$/m)
  t.strictSame(await tablesOf(t, uri), ['schema_migrations', 'users'], 'only as far as asked')
})

test('the password in MYSQL_URL is never printed', async (t) => {
  const { out, err } = await run([], { MYSQL_URL: 'mysql://someone:s3cret-pass@127.0.0.1:1/none' })
  t.notMatch(out + err, /s3cret-pass/)
  t.match(out, /someone:\*\*\*@127\.0\.0\.1:1\/none/)
})
