import fastifyMysql, { type MySQLPromisePool } from '@fastify/mysql'
import fp from 'fastify-plugin'
import type { Pool } from 'mysql2/promise'
import { migrate } from '../src/stores/migrate.js'
import { createMemoryUsersStore, type UsersStore } from '../src/stores/users-memory.js'
import { createMysqlUsersStore } from '../src/stores/users-mysql.js'

export interface Database {
  backend: 'memory' | 'mysql'
  users: UsersStore
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

/** Durable stores: MySQL/MariaDB when configured (migrated at start-up), memory otherwise. */
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
      connectionLimit: 10
    })
    // Named, so a host app's own @fastify/mysql stays untouched.
    pool = (fastify as unknown as { mysql: Record<string, MySQLPromisePool> }).mysql.switchboard?.pool
  }

  if (pool === undefined) {
    fastify.decorate('switchboardDb', { backend: 'memory', users: createMemoryUsersStore(), check: async () => {} })
    return
  }

  const result = await migrate(pool)
  if (result.applied.length > 0) fastify.log.info({ applied: result.applied }, 'database migrations applied')
  const connected = pool
  fastify.decorate('switchboardDb', {
    backend: 'mysql',
    users: createMysqlUsersStore(connected),
    check: async () => { await connected.query('SELECT 1') }
  })
}, { fastify: '5.x', name: 'switchboard-db', dependencies: ['switchboard-config'] })
