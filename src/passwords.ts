import bcrypt from 'bcrypt'
import { InvalidInputError } from './errors.js'
import { hasLoneSurrogate } from './unicode.js'

/** bcrypt reads at most 72 bytes; anything longer would be silently cut. */
export const MAX_PASSWORD_BYTES = 72
export const MIN_PASSWORD_CHARS = 8

export function createPasswordHasher ({ cost }: { cost: number }) {
  // Compared against when the email is unknown, so that a login for a missing
  // account costs the same bcrypt work as one with a wrong password.
  const decoyHash = bcrypt.hashSync('switchboard-decoy-password', cost)

  function assertAcceptable (password: string): void {
    // bcrypt hashes UTF-8, where every lone surrogate becomes U+FFFD: different passwords, one hash.
    if (hasLoneSurrogate(password)) throw new InvalidInputError('VALIDATION_FAILED', 'password must be valid Unicode (it has a lone surrogate)')
    if ([...password].length < MIN_PASSWORD_CHARS) {
      throw new InvalidInputError('PASSWORD_TOO_SHORT', `password must have at least ${MIN_PASSWORD_CHARS} characters`)
    }
    if (Buffer.byteLength(password, 'utf8') > MAX_PASSWORD_BYTES) {
      throw new InvalidInputError('PASSWORD_TOO_LONG', `password must be at most ${MAX_PASSWORD_BYTES} bytes of UTF-8`)
    }
  }

  return {
    assertAcceptable,

    async hash (password: string): Promise<string> {
      assertAcceptable(password)
      return bcrypt.hash(password, cost)
    },

    /** Verifies against `hash`, or burns the same time on a decoy when there is none. */
    async verify (password: string, hash: string | null): Promise<boolean> {
      if (Buffer.byteLength(password, 'utf8') > MAX_PASSWORD_BYTES) {
        await bcrypt.compare('', decoyHash)
        return false
      }
      const matches = await bcrypt.compare(password, hash ?? decoyHash)
      return hash !== null && matches
    }
  }
}

export type PasswordHasher = ReturnType<typeof createPasswordHasher>
