import type { Pool, ResultSetHeader, RowDataPacket } from 'mysql2/promise'
import type { User } from '../schemas.js'
import { emailTakenError, type NewUser, type UserCredentials, type UsersStore } from './users-memory.js'

const USER_COLUMNS = 'id, email, name, avatar_url, created_at'

interface UserRow extends RowDataPacket {
  id: number | string
  email: string
  name: string
  avatar_url: string | null
  created_at: Date
  password_hash?: string
}

function toUser (row: UserRow): User {
  return {
    id: Number(row.id),
    email: row.email,
    name: row.name,
    avatarUrl: row.avatar_url,
    createdAt: row.created_at.toISOString()
  }
}

/** Users in MySQL/MariaDB (table `users`, created by the migrations). */
export function createMysqlUsersStore (pool: Pool): UsersStore {
  return {
    async create ({ email, name, passwordHash }: NewUser): Promise<User> {
      // The timestamp is written by us, not by the server's clock, so it reads
      // back the same whatever time zone the connection was opened with.
      const createdAt = new Date()
      try {
        const [result] = await pool.execute<ResultSetHeader>(
          'INSERT INTO users (email, name, password_hash, created_at) VALUES (?, ?, ?, ?)',
          [email, name, passwordHash, createdAt]
        )
        return { id: result.insertId, email, name, avatarUrl: null, createdAt: createdAt.toISOString() }
      } catch (error) {
        if ((error as { code?: string }).code === 'ER_DUP_ENTRY') throw emailTakenError()
        throw error
      }
    },

    async findCredentialsByEmail (email: string): Promise<UserCredentials | null> {
      const [rows] = await pool.execute<UserRow[]>(`SELECT ${USER_COLUMNS}, password_hash FROM users WHERE email = ?`, [email])
      const row = rows[0]
      return row === undefined ? null : { user: toUser(row), passwordHash: String(row.password_hash) }
    },

    async findById (id: number): Promise<User | null> {
      const [rows] = await pool.execute<UserRow[]>(`SELECT ${USER_COLUMNS} FROM users WHERE id = ?`, [id])
      const row = rows[0]
      return row === undefined ? null : toUser(row)
    },

    async findByIds (ids: readonly number[]): Promise<User[]> {
      if (ids.length === 0) return []
      const [rows] = await pool.query<UserRow[]>(`SELECT ${USER_COLUMNS} FROM users WHERE id IN (?) ORDER BY id`, [[...new Set(ids)]])
      return rows.map(toUser)
    }
  }
}
