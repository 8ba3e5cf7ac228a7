import type { Pool, RowDataPacket } from 'mysql2/promise'
import { migrations as allMigrations, type Migration } from './migrations.js'

/** One lock per database, so migrations of different databases on one server do not wait for each other. */
const LOCK_NAME_SQL = "CONCAT('switchboard_migrations:', DATABASE())"
const LOCK_TIMEOUT_SECONDS = 60

export interface MigrateOptions {
  /** Version to end at; lower than the current one rolls back. Default: latest. */
  to?: number
  migrations?: readonly Migration[]
}

export interface MigrateResult {
  from: number
  to: number
  applied: number[]
  reverted: number[]
}

/**
 * Brings the schema to `to` (default: the newest migration). Holds a named
 * lock while it works, so nodes starting together migrate once.
 */
export async function migrate (pool: Pool, options: MigrateOptions = {}): Promise<MigrateResult> {
  const migrations = [...(options.migrations ?? allMigrations)].sort((a, b) => a.version - b.version)
  const target = options.to ?? migrations.at(-1)?.version ?? 0
  const connection = await pool.getConnection()
  try {
    const [[lock]] = await connection.query<RowDataPacket[]>(`SELECT GET_LOCK(${LOCK_NAME_SQL}, ?) AS acquired`, [LOCK_TIMEOUT_SECONDS])
    if (lock?.acquired !== 1) throw new Error(`could not take the migration lock within ${LOCK_TIMEOUT_SECONDS} s`)
    try {
      await connection.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
        version INT UNSIGNED NOT NULL PRIMARY KEY,
        name VARCHAR(200) NOT NULL,
        applied_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
      ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`)
      const [rows] = await connection.query<RowDataPacket[]>('SELECT version FROM schema_migrations')
      const done = new Set(rows.map((row) => Number(row.version)))
      const from = Math.max(0, ...done)
      const applied: number[] = []
      const reverted: number[] = []

      for (const migration of migrations) {
        if (migration.version > target || done.has(migration.version)) continue
        for (const statement of migration.up) await connection.query(statement)
        await connection.query('INSERT INTO schema_migrations (version, name) VALUES (?, ?)', [migration.version, migration.name])
        applied.push(migration.version)
      }
      for (const migration of [...migrations].reverse()) {
        if (migration.version <= target || !done.has(migration.version)) continue
        for (const statement of migration.down) await connection.query(statement)
        await connection.query('DELETE FROM schema_migrations WHERE version = ?', [migration.version])
        reverted.push(migration.version)
      }
      return { from, to: target, applied, reverted }
    } finally {
      await connection.query(`SELECT RELEASE_LOCK(${LOCK_NAME_SQL})`)
    }
  } finally {
    connection.release()
  }
}
