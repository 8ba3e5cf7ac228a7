/**
 * Switchboard as the benchmark runs it: the standalone server's own
 * `buildServer` with the production server options, configured from the
 * environment like `npm start`. Before it listens it makes BENCH_USERS users
 * and a login session for each through the app's own stores and JWT signer
 * (signing up 15,000 accounts through bcrypt would take minutes), and hands
 * their tokens to the parent.
 */
import { randomUUID } from 'node:crypto'
import type { JWT } from '@fastify/jwt'
import bcrypt from 'bcrypt'
import type { FastifyInstance } from 'fastify'
import { hashRefreshToken, newRefreshToken } from '../../src/auth.js'
import { readEnvironment } from '../../src/config.js'
import { buildServer } from '../../src/server.js'
import type { BenchUser } from './ipc.js'
import { serveParent, usersToSeed } from './server-control.js'

/** Users written at once (MySQL's pool holds 10 connections). */
const SEED_CONCURRENCY = 50
const SESSION_TTL_MS = 24 * 60 * 60 * 1000

async function seedUsers (app: FastifyInstance, count: number): Promise<BenchUser[]> {
  const { users } = app.switchboardDb
  const { refreshTokens } = app.switchboardShared
  // The plugin registers @fastify/jwt under its own namespace (see plugins/auth.ts).
  const jwt = (app.jwt as unknown as Record<string, JWT>).switchboard as JWT
  // Nobody logs in with it: one hash at the lowest cost serves every account.
  const passwordHash = await bcrypt.hash('benchmark password', 4)
  const run = randomUUID().slice(0, 8)
  const seeded: BenchUser[] = new Array(count)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < count) {
      const index = next++
      const user = await users.create({ email: `bench-${run}-${index}@example.com`, name: `Bench ${index}`, passwordHash })
      const sessionId = randomUUID()
      await refreshTokens.create(hashRefreshToken(newRefreshToken()), { userId: user.id, familyId: sessionId, expiresAt: Date.now() + SESSION_TTL_MS })
      seeded[index] = { id: user.id, token: jwt.sign({ sub: String(user.id), sid: sessionId }) }
    }
  }
  await Promise.all(Array.from({ length: Math.min(SEED_CONCURRENCY, count) }, worker))
  return seeded
}

const { app: options, server: serverConfig } = readEnvironment(process.env)
const app = await buildServer(serverConfig, options)
await app.ready()
const seeded = await seedUsers(app, usersToSeed())
await app.listen({ port: 0, host: serverConfig.host })
const address = app.server.address()
if (address === null || typeof address === 'string') throw new Error('no port')

serveParent({ port: address.port, users: seeded, close: () => app.close() })
