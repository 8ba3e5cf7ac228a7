/**
 * Access tokens for the two baselines, made and checked the way Switchboard
 * makes and checks its own (HS256, `typ: at+jwt`, `sub`, `sid`, `iss`,
 * `aud`, `exp`), with fast-jwt, which @fastify/jwt uses underneath.
 */
import { randomUUID } from 'node:crypto'
import { createSigner, createVerifier } from 'fast-jwt'
import type { BenchUser } from './ipc.js'

const ISSUER = 'switchboard'
const AUDIENCE = 'switchboard'
/** Long enough for any run: no socket is closed for an expired token. */
const TOKEN_TTL_MS = 24 * 60 * 60 * 1000

/** Users 1..count with a token each. */
export function signBenchUsers (count: number, secret: string): BenchUser[] {
  const sign = createSigner({ key: secret, algorithm: 'HS256', iss: ISSUER, aud: AUDIENCE, expiresIn: TOKEN_TTL_MS, header: { alg: 'HS256', typ: 'at+jwt' } })
  return Array.from({ length: count }, (_, index) => ({ id: index + 1, token: sign({ sub: String(index + 1), sid: randomUUID() }) }))
}

/** The user id a token names, or null when it is not a valid access token. */
export function tokenVerifier (secret: string): (token: unknown) => number | null {
  const verify = createVerifier({
    key: secret,
    algorithms: ['HS256'],
    allowedIss: ISSUER,
    allowedAud: AUDIENCE,
    requiredClaims: ['sub', 'sid', 'iat', 'exp', 'iss', 'aud'],
    checkTyp: 'at+jwt'
  })
  return (token) => {
    if (typeof token !== 'string') return null
    try {
      const userId = Number((verify(token) as { sub?: unknown }).sub)
      return Number.isSafeInteger(userId) && userId > 0 ? userId : null
    } catch {
      return null
    }
  }
}
