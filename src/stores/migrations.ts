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
  },
  {
    version: 2,
    name: 'create messages and message cursors',
    up: [`
      CREATE TABLE messages (
        id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
        sender_id BIGINT UNSIGNED NOT NULL,
        recipient_id BIGINT UNSIGNED NOT NULL,
        user_low BIGINT UNSIGNED NOT NULL COMMENT 'conversation key: the smaller user id',
        user_high BIGINT UNSIGNED NOT NULL COMMENT 'conversation key: the larger user id',
        body MEDIUMTEXT NOT NULL COMMENT 'MESSAGE_MAX_CHARS may reach 65535 characters of 4 bytes: more than TEXT holds',
        sent_at DATETIME(3) NOT NULL,
        client_ref VARBINARY(512) NULL COMMENT 'the sender''s id for the message in UTF-8, binary so trailing spaces count in the unique key; cleared after 24 h',
        UNIQUE KEY messages_sender_ref (sender_id, client_ref),
        KEY messages_conversation (user_low, user_high, id),
        KEY messages_recipient (recipient_id, id),
        KEY messages_sender (sender_id, id)
      ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`, `
      CREATE TABLE message_cursors (
        user_id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
        seen_through BIGINT UNSIGNED NOT NULL
      ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`],
    down: ['DROP TABLE message_cursors', 'DROP TABLE messages']
  }
]
