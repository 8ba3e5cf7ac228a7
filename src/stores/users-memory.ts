import { ConflictError } from '../errors.js'
import type { User } from '../schemas.js'

export interface NewUser {
  email: string
  name: string
  passwordHash: string
}

export interface UserCredentials {
  user: User
  passwordHash: string
}

export const EMAIL_TAKEN = 'EMAIL_TAKEN'

export function emailTakenError (): ConflictError {
  return new ConflictError(EMAIL_TAKEN, 'an account with this email already exists')
}

/**
 * Users kept in this process. Emails arrive normalised (the auth service
 * lower-cases them), so equality here is exact.
 */
export function createMemoryUsersStore () {
  const byId = new Map<number, UserCredentials>()
  const idByEmail = new Map<string, number>()
  let lastId = 0

  return {
    async create ({ email, name, passwordHash }: NewUser): Promise<User> {
      if (idByEmail.has(email)) throw emailTakenError()
      const user: User = { id: ++lastId, email, name, avatarUrl: null, createdAt: new Date().toISOString() }
      byId.set(user.id, { user, passwordHash })
      idByEmail.set(email, user.id)
      return { ...user }
    },

    async findCredentialsByEmail (email: string): Promise<UserCredentials | null> {
      const id = idByEmail.get(email)
      const found = id === undefined ? undefined : byId.get(id)
      return found === undefined ? null : { user: { ...found.user }, passwordHash: found.passwordHash }
    },

    async findById (id: number): Promise<User | null> {
      const found = byId.get(id)
      return found === undefined ? null : { ...found.user }
    },

    /** The users among `ids` that exist, in ascending id order. */
    async findByIds (ids: readonly number[]): Promise<User[]> {
      return [...new Set(ids)]
        .sort((a, b) => a - b)
        .flatMap((id) => {
          const found = byId.get(id)
          return found === undefined ? [] : [{ ...found.user }]
        })
    }
  }
}

export type UsersStore = ReturnType<typeof createMemoryUsersStore>
