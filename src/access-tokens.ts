import { UnauthorizedError } from './errors.js'

/** The claims Switchboard puts in an access token. */
export interface AccessClaims {
  sub: string
  sid: string
  iat: number
  exp: number
  iss: string
  aud: string
}

/**
 * Signing and verification are done by the JWT library the edge provides
 * (@fastify/jwt, configured with HS256, `typ: at+jwt`, `iss` and `aud`);
 * this module decides what goes into a token and what a valid one means.
 */
export interface JwtFunctions {
  sign: (payload: { sub: string, sid: string }) => string
  /** Throws for any signature, algorithm, `typ`, `iss`, `aud`, `exp` or `nbf` failure. */
  verify: (token: string) => unknown
}

export interface AccessTokenIdentity {
  userId: number
  sessionId: string
  /** Epoch milliseconds. */
  expiresAt: number
}

export const INVALID_TOKEN = 'INVALID_TOKEN'
export const TOKEN_EXPIRED = 'TOKEN_EXPIRED'

const USER_ID = /^[1-9]\d{0,15}$/

function isAccessClaims (claims: unknown): claims is AccessClaims {
  if (typeof claims !== 'object' || claims === null) return false
  const { sub, sid, exp } = claims as Partial<AccessClaims>
  return typeof sub === 'string' && USER_ID.test(sub) && Number.isSafeInteger(Number(sub)) &&
    typeof sid === 'string' && sid.length > 0 && typeof exp === 'number'
}

export function createAccessTokens ({ jwt, ttlSeconds }: { jwt: JwtFunctions, ttlSeconds: number }) {
  return {
    ttlSeconds,

    issue (userId: number, sessionId: string): { token: string, expiresAt: number } {
      const token = jwt.sign({ sub: String(userId), sid: sessionId })
      return { token, expiresAt: Date.now() + ttlSeconds * 1000 }
    },

    verify (token: string): AccessTokenIdentity {
      let claims: unknown
      try {
        claims = jwt.verify(token)
      } catch (error) {
        const expired = (error as { code?: string }).code === 'FAST_JWT_EXPIRED'
        throw expired
          ? new UnauthorizedError(TOKEN_EXPIRED, 'access token has expired', { cause: error })
          : new UnauthorizedError(INVALID_TOKEN, 'access token is invalid', { cause: error })
      }
      if (!isAccessClaims(claims)) throw new UnauthorizedError(INVALID_TOKEN, 'access token is invalid')
      return { userId: Number(claims.sub), sessionId: claims.sid, expiresAt: claims.exp * 1000 }
    }
  }
}

export type AccessTokens = ReturnType<typeof createAccessTokens>
