/**
 * The part every benchmarked server shares: it tells the parent where it
 * listens and which users it made, forces a garbage collection and reports
 * its memory when asked, and leaves when the parent does.
 */
import { once } from 'node:events'
import type { Server } from 'node:http'
import { setImmediate as nextTurn } from 'node:timers/promises'
import type { BenchUser, MemoryRequest, ServerMemory, ServerReady } from './ipc.js'

/** Users to make at start (BENCH_USERS, ids 1..n), 0 for a node that joins another's database. */
export function usersToSeed (env: NodeJS.ProcessEnv = process.env): number {
  const count = Number(env.BENCH_USERS ?? '0')
  if (!Number.isInteger(count) || count < 0) throw new Error('BENCH_USERS must be a whole number')
  return count
}

/** The JWT key every server of one run shares, so the same tokens open sockets on all of them. */
export function benchSecret (env: NodeJS.ProcessEnv = process.env): string {
  const secret = env.JWT_SECRET
  if (secret === undefined || Buffer.byteLength(secret) < 32) throw new Error('JWT_SECRET (at least 32 bytes) is required')
  return secret
}

async function measureMemory (collect: boolean): Promise<ServerMemory> {
  if (collect) {
    if (globalThis.gc === undefined) throw new Error('start the server with --expose-gc')
    // Twice, a turn apart: the first collection's finalizers free more for the second.
    globalThis.gc()
    await nextTurn()
    globalThis.gc()
  }
  const { rss, heapUsed, heapTotal, external, arrayBuffers } = process.memoryUsage()
  return { type: 'memory', rss, heapUsed, heapTotal, external, arrayBuffers }
}

/** Listens on a free loopback port and says which (the baselines' plain HTTP servers). */
export async function listenOnLoopback (server: Server): Promise<number> {
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const address = server.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  return address.port
}

/**
 * Reports readiness to the parent and serves its requests. `close` runs
 * when the parent goes away or sends SIGTERM; the process then exits.
 */
export function serveParent ({ port, users, close }: { port: number, users: BenchUser[], close: () => Promise<void> }): void {
  const send = (message: ServerReady | ServerMemory): void => { process.send?.(message) }
  process.on('message', (request: MemoryRequest) => {
    if (request.type !== 'memory') return
    measureMemory(request.collect).then(send, (error: unknown) => {
      console.error(error)
      process.exit(1)
    })
  })
  let leaving = false
  const leave = (): void => {
    if (leaving) return
    leaving = true
    // A server that cannot close within a few seconds is not waited for.
    setTimeout(() => process.exit(0), 5000).unref()
    close().then(() => process.exit(0), (error: unknown) => {
      console.error(error)
      process.exit(1)
    })
  }
  process.on('disconnect', leave)
  process.on('SIGTERM', leave)
  process.on('SIGINT', leave)
  send({ type: 'ready', port, users })
}
