import type { Pool } from 'mysql2/promise'
import { withTimeout } from '../timeout.js'

/**
 * The pool, with every `query` and `execute` failing once `ms` pass without
 * an answer. A server that stops answering (rather than refusing) would
 * otherwise hold each statement until TCP gives up, many minutes later; the
 * statement itself is not cancelled, its connection stays busy until then.
 */
export function withStatementDeadline (pool: Pool, ms: number): Pool {
  return new Proxy(pool, {
    get (target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver)
      if ((property !== 'query' && property !== 'execute') || typeof value !== 'function') return value
      return (...args: unknown[]) => withTimeout(Promise.resolve(value.apply(target, args)), ms, 'MySQL statement')
    }
  })
}
