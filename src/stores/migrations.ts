/**
 * Versioned schema changes, applied in order and recorded in
 * `schema_migrations`. A released migration is never edited: add a new one.
 */
export interface Migration {
  version: number
  name: string
  up: string[]
  down: string[]
}

export const migrations: readonly Migration[] = [
  {
    version: 1,
    name: 'create users',
    up: [`
      CREATE TABLE users (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        email VARCHAR(254) NOT NULL,
        name VARCHAR(100) NOT NULL,
        avatar_url VARCHAR(2048) NULL,
        password_hash VARCHAR(100) NOT NULL,
        created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
        UNIQUE KEY users_email_unique (email)
      ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`],
    down: ['DROP TABLE users']
  }
]
