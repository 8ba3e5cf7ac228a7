/*
 * `npm run db:migrate [-- --to <version> [--yes]]`: brings the database that
 * MYSQL_URL names to the newest schema version (or to <version>). The server
 * migrates up by itself at start-up; this is for doing it beforehand, and the
 * only way to roll back.
 */
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import { createPool, type Pool, type RowDataPacket } from 'mysql2/promise'
import { migrate } from '../src/stores/migrate.js'
import { migrations } from '../src/stores/migrations.js'

export const USAGE = `usage: npm run db:migrate [-- --to <version> [--yes]]

Applies the schema migrations to the database named by MYSQL_URL, up to the
newest version or to <version>. A <version> lower than the current one rolls
back, which drops tables and their data: that needs --yes.`

export interface CommandIo {
  env: NodeJS.ProcessEnv
  log (line: string): void
  error (line: string): void
}

interface Command {
  help: boolean
  to: number | undefined
  yes: boolean
}

class UsageError extends Error {}

const knownVersions = migrations.map((migration) => migration.version)

function parseOptions (args: string[]) {
  try {
    return parseArgs({
      args,
      options: { to: { type: 'string' }, yes: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false } },
      strict: true,
      allowPositionals: false
    }).values
  } catch (error) {
    throw new UsageError((error as Error).message)
  }
}

function parseCommand (args: string[]): Command {
  const { help = false, yes = false, to: toArgument } = parseOptions(args)
  if (toArgument === undefined) return { help, yes, to: undefined }
  const to = /^\d+$/.test(toArgument) ? Number(toArgument) : NaN
  if (to !== 0 && !knownVersions.includes(to)) {
    throw new UsageError(`--to must be 0 or a known version (${knownVersions.join(', ')}), not "${toArgument}"`)
  }
  return { help, yes, to }
}

/** The URL without its password, to say which database is being changed. */
function describe (url: string): string {
  try {
    const parsed = new URL(url)
    if (parsed.password !== '') parsed.password = '***'
    return parsed.toString()
  } catch {
    return '(unparsable MYSQL_URL)'
  }
}

async function currentVersion (pool: Pool): Promise<number> {
  try {
    const [[row]] = await pool.query<RowDataPacket[]>('SELECT COALESCE(MAX(version), 0) AS version FROM schema_migrations')
    return Number(row?.version ?? 0)
  } catch (error) {
    // A database that was never migrated.
    if ((error as { code?: string }).code === 'ER_NO_SUCH_TABLE') return 0
    throw error
  }
}

const nameOf = (version: number): string => migrations.find((migration) => migration.version === version)?.name ?? ''

/** Runs the command with `args` (what follows `--`); resolves to the exit code. */
export async function runMigrateCommand (args: string[], { env, log, error }: CommandIo): Promise<number> {
  let command: Command
  try {
    command = parseCommand(args)
  } catch (failure) {
    if (!(failure instanceof UsageError)) throw failure
    error(`db:migrate: ${failure.message}\n\n${USAGE}`)
    return 2
  }
  if (command.help) {
    log(USAGE)
    return 0
  }

  const url = env.MYSQL_URL
  if (url === undefined || url === '') {
    error('db:migrate: MYSQL_URL is not set; set it to the database to migrate, e.g. MYSQL_URL=mysql://user:password@127.0.0.1:3306/switchboard')
    return 1
  }

  let pool: Pool | undefined
  try {
    pool = createPool({ uri: url, timezone: 'Z', charset: 'utf8mb4_unicode_ci', connectionLimit: 2 })
    log(`database: ${describe(url)}`)
    const from = await currentVersion(pool)
    if (command.to !== undefined && command.to < from && !command.yes) {
      error(`db:migrate: refusing to roll back from version ${from} to ${command.to}: that drops tables and their data. Run again with --yes to do it.`)
      return 1
    }

    const result = await migrate(pool, { to: command.to })
    for (const version of result.applied) log(`applied  ${version} ${nameOf(version)}`)
    for (const version of result.reverted) log(`reverted ${version} ${nameOf(version)}`)
    if (result.applied.length === 0 && result.reverted.length === 0) log('nothing to do')
    const now = await currentVersion(pool)
    const latest = knownVersions.at(-1) ?? 0
    log(`schema version: ${now}${now > latest ? ` (newer than this code, which knows up to ${latest})` : ''}`)
    return 0
  } catch (failure) {
    error(`db:migrate: failed: ${(failure as Error).message}`)
    return 1
  } finally {
    await pool?.end()
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = await runMigrateCommand(process.argv.slice(2), {
    env: process.env,
    log: (line) => console.log(line),
    error: (line) => console.error(line)
  })
}
