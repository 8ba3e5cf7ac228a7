import { createHash, randomBytes, randomUUID } from 'node:crypto'
import type { AccessTokens } from './access-tokens.js'
import { InvalidInputError, UnauthorizedError } from './errors.js'
import type { PasswordHasher } from './passwords.js'
import type { Tokens, User } from './schemas.js'
import type { RefreshTokenStore } from './stores/refresh-tokens-memory.js'
import type { UsersStore } from './stores/users-memory.js'
import { hasLoneSurrogate } from './unicode.js'

export const INVALID_CREDENTIALS = 'INVALID_CREDENTIALS'
export const INVALID_REFRESH_TOKEN = 'INVALID_REFRESH_TOKEN'

/** Refresh tokens are 256 random bits; only their SHA-256 is stored. */
export function newRefreshToken (): string {
  return randomBytes(32).toString('base64url')
}

export function hashRefreshToken (token: string): string {
  return createHash('sha256').update(token).digest('base64url')
}

export function normalizeEmail (email: string): string {
  return email.trim().toLowerCase()
}

export interface AuthDependencies {
  users: UsersStore
  refreshTokens: RefreshTokenStore
  passwords: PasswordHasher
  accessTokens: AccessTokens
  refreshTokenTtlSeconds: number
}

export type SessionRevokedListener = (userId: number, sessionId: string) => void

export function createAuthService ({ users, refreshTokens, passwords, accessTokens, refreshTokenTtlSeconds }: AuthDependencies) {
  const revokedListeners: SessionRevokedListener[] = []

  function sessionRevoked (userId: number, sessionId: string): void {
    for (const listener of revokedListeners) listener(userId, sessionId)
  }

  function invalidRefreshToken (): UnauthorizedError {
    return new UnauthorizedError(INVALID_REFRESH_TOKEN, 'refresh token is invalid, expired or already used')
  }

  function tokens (userId: number, sessionId: string, refreshToken: string): Tokens {
    return {
      access_token: accessTokens.issue(userId, sessionId).token,
      refresh_token: refreshToken,
      token_type: 'Bearer',
      expires_in: accessTokens.ttlSeconds
    }
  }

  const refreshExpiry = () => Date.now() + refreshTokenTtlSeconds * 1000

  return {
    async signup ({ email, password, name }: { email: string, password: string, name: string }): Promise<User> {
      // Storage would turn it into U+FFFD, and the account would not say what was signed up.
      if (hasLoneSurrogate(name)) throw new InvalidInputError('VALIDATION_FAILED', 'name must be valid Unicode (it has a lone surrogate)')
      passwords.assertAcceptable(password)
      const passwordHash = await passwords.hash(password)
      return users.create({ email: normalizeEmail(email), name: name.trim(), passwordHash })
    },

    /** Unknown email and wrong password fail alike, after the same bcrypt work. */
    async login ({ email, password }: { email: string, password: string }): Promise<Tokens> {
      const found = await users.findCredentialsByEmail(normalizeEmail(email))
      const valid = await passwords.verify(password, found?.passwordHash ?? null)
      if (found === null || !valid) throw new UnauthorizedError(INVALID_CREDENTIALS, 'email or password is wrong')
      const sessionId = randomUUID()
      const refreshToken = newRefreshToken()
      await refreshTokens.create(hashRefreshToken(refreshToken), { userId: found.user.id, familyId: sessionId, expiresAt: refreshExpiry() })
      return tokens(found.user.id, sessionId, refreshToken)
    },

    /** Spends `refreshToken` and returns the next pair; reuse revokes the session. */
    async refresh (refreshToken: string): Promise<Tokens> {
      const next = newRefreshToken()
      const result = await refreshTokens.rotate(hashRefreshToken(refreshToken), hashRefreshToken(next), refreshExpiry())
      if (result.status === 'reused') sessionRevoked(result.userId, result.familyId)
      if (result.status !== 'rotated') throw invalidRefreshToken()
      return tokens(result.userId, result.familyId, next)
    },

    /** Ends the session the token belongs to (listeners are told, so its sockets close). */
    async logout (refreshToken: string): Promise<{ userId: number, sessionId: string }> {
      const result = await refreshTokens.revoke(hashRefreshToken(refreshToken))
      if (result.status !== 'invalid') sessionRevoked(result.userId, result.familyId)
      if (result.status !== 'revoked') throw invalidRefreshToken()
      return { userId: result.userId, sessionId: result.familyId }
    },

    verifyAccessToken: accessTokens.verify,

    /** Whether a session still exists: access tokens of a logged-out or revoked session do not open sockets. */
    async isSessionLive (sessionId: string): Promise<boolean> {
      return refreshTokens.isFamilyLive(sessionId)
    },

    /** Called whenever a session ends: logout, or reuse of a spent refresh token. */
    onSessionRevoked (listener: SessionRevokedListener): void {
      revokedListeners.push(listener)
    }
  }
}

export type AuthService = ReturnType<typeof createAuthService>
