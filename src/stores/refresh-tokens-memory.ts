/**
 * Refresh tokens are stored only as hashes, grouped in families (one family
 * per login session). Rotation spends the presented token and issues the next
 * one in the same family; presenting a spent token again is reuse, which
 * revokes the whole family (RFC 9700 §4.14.2).
 */
export interface RefreshTokenRecord {
  userId: number
  familyId: string
  /** Epoch milliseconds. */
  expiresAt: number
}

export type RotateResult =
  | { status: 'rotated', userId: number, familyId: string }
  | { status: 'reused', userId: number, familyId: string }
  | { status: 'invalid' }

export type RevokeResult =
  | { status: 'revoked', userId: number, familyId: string }
  | { status: 'reused', userId: number, familyId: string }
  | { status: 'invalid' }

interface StoredToken extends RefreshTokenRecord {
  spent: boolean
}

const SWEEP_EVERY = 1000

export function createMemoryRefreshTokenStore (clock: () => number = Date.now) {
  const tokens = new Map<string, StoredToken>()
  /** Live families and when the last of their tokens expires. */
  const families = new Map<string, number>()
  let writes = 0

  function sweep (): void {
    const now = clock()
    for (const [hash, token] of tokens) if (token.expiresAt <= now) tokens.delete(hash)
    for (const [family, expiresAt] of families) if (expiresAt <= now) families.delete(family)
  }

  function save (hash: string, record: RefreshTokenRecord): void {
    if (++writes % SWEEP_EVERY === 0) sweep()
    tokens.set(hash, { ...record, spent: false })
    families.set(record.familyId, Math.max(families.get(record.familyId) ?? 0, record.expiresAt))
  }

  /** The token if it exists, has not expired and its family is live. */
  function live (hash: string): StoredToken | undefined {
    const token = tokens.get(hash)
    if (token === undefined || token.expiresAt <= clock() || !families.has(token.familyId)) return undefined
    return token
  }

  function revokeFamily (familyId: string): void {
    families.delete(familyId)
    for (const [hash, token] of tokens) if (token.familyId === familyId) tokens.delete(hash)
  }

  return {
    /** Stores the first token of a new family. */
    async create (hash: string, record: RefreshTokenRecord): Promise<void> {
      save(hash, record)
    },

    /** Atomically spends `hash` and stores `nextHash` in its family. */
    async rotate (hash: string, nextHash: string, nextExpiresAt: number): Promise<RotateResult> {
      const token = live(hash)
      if (token === undefined) return { status: 'invalid' }
      const { userId, familyId } = token
      if (token.spent) {
        revokeFamily(familyId)
        return { status: 'reused', userId, familyId }
      }
      token.spent = true
      save(nextHash, { userId, familyId, expiresAt: nextExpiresAt })
      return { status: 'rotated', userId, familyId }
    },

    /** Ends the family of a live token (logout). A spent token counts as reuse. */
    async revoke (hash: string): Promise<RevokeResult> {
      const token = live(hash)
      if (token === undefined) return { status: 'invalid' }
      const { userId, familyId, spent } = token
      revokeFamily(familyId)
      return { status: spent ? 'reused' : 'revoked', userId, familyId }
    },

    async isFamilyLive (familyId: string): Promise<boolean> {
      const expiresAt = families.get(familyId)
      return expiresAt !== undefined && expiresAt > clock()
    }
  }
}

export type RefreshTokenStore = ReturnType<typeof createMemoryRefreshTokenStore>
