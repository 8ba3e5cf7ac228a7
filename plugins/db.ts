import fastifyMysql, { type MySQLPromisePool } from '@fastify/mysql'
import fp from 'fastify-plugin'
import type { Pool } from 'mysql2/promise'
import { loggable } from '../src/errors.js'
import { createMemoryMessageStore, REF_WINDOW_MS, type MessageStore } from '../src/stores/messages-memory.js'
import { createMysqlMessageStore } from '../src/stores/messages-mysql.js'
import { migrate } from '../src/stores/migrate.js'
import { withStatementDeadline } from '../src/stores/mysql-deadline.js'
import { createMemoryUsersStore, type UsersStore } from '../src/stores/users-memory.js'
import { createMysqlUsersStore } from '../src/stores/users-mysql.js'

export interface Database {
  backend: 'memory' | 'mysql'
  users: UsersStore
  messages: MessageStore
  /** Resolves when the backend answers; rejects otherwise. */
  check (): Promise<void>
}

declare module 'fastify' {
  interface FastifyInstance {
    switchboardDb: Database
  }
}

export interface DbPluginOptions {
  /** A mysql2 promise pool the host app already owns; used instead of `mysqlUrl`. */
  pool?: Pool
}

/** A statement (or a new connection) without an answer in this long fails: a silent server is a 503, not a hang. */
const STATEMENT_DEADLINE_MS = 1500

/** How often refs past the resend window are cleared. */
const FORGET_REFS_EVERY_MS = 60_000

/** Durable stores (users, messages): MySQL/MariaDB when configured (migrated at start-up), memory otherwise. */
export default fp<DbPluginOptions>(async function dbPlugin (fastify, { pool: hostPool }) {
  const { mysqlUrl } = fastify.switchboardConfig
  let pool = hostPool

  if (pool === undefined && mysqlUrl !== undefined) {
    await fastify.register(fastifyMysql, {
      promise: true,
      name: 'switchboard',
      uri: mysqlUrl,
      // Dates travel as UTC and every Unicode character survives.
      timezone: 'Z',
      charset: 'utf8mb4_unicode_ci',
      connectionLimit: 10,
      // Requests waiting for a connection past this fail at once (503) instead of piling up.
      queueLimit: 1000,
      // With MySQL down, a request fails (503) within this, rather than waiting for the OS to give up.
      connectTimeout: STATEMENT_DEADLINE_MS
    })
    // Named, so a host app's own @fastify/mysql stays untouched.
    pool = (fastify as unknown as { mysql: Record<string, MySQLPromisePool> }).mysql.switchboard?.pool
  }

  let database: Database
  if (pool === undefined) {
    database = {
      backend: 'memory',
      users: createMemoryUsersStore(),
      messages: createMemoryMessageStore(),
      check: async () => {}
    }
  } else {
    const result = await migrate(pool)
    if (result.applied.length > 0) fastify.log.info({ applied: result.applied }, 'database migrations applied')
    const connected = withStatementDeadline(pool, STATEMENT_DEADLINE_MS)
    database = {
      backend: 'mysql',
      users: createMysqlUsersStore(connected),
      messages: createMysqlMessageStore(connected),
      check: async () => { await connected.query('SELECT 1') }
    }
  }
  fastify.decorate('switchboardDb', database)

  // Client refs identify resends for 24 hours; past that they are cleared.
  const forgetting = setInterval(() => {
    database.messages.forgetRefsBefore(Date.now() - REF_WINDOW_MS)
      .catch((error: unknown) => fastify.log.warn({ err: loggable(error) }, 'clearing old message refs failed'))
  }, FORGET_REFS_EVERY_MS)
  forgetting.unref()
  fastify.addHook('onClose', async () => { clearInterval(forgetting) })
}, { fastify: '5.x', name: 'switchboard-db', dependencies: ['switchboard-config'] })
