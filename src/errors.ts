/**
 * Errors the domain throws. They carry a stable machine-readable `code`;
 * the HTTP edge (plugins/error-handler.ts) decides the status code.
 */
export class DomainError extends Error {
  readonly code: string

  constructor (code: string, message: string, options?: ErrorOptions) {
    super(message, options)
    this.code = code
    this.name = new.target.name
  }
}

/** The request is well-formed JSON but makes no sense (400). */
export class InvalidInputError extends DomainError {}
/** Credentials or tokens are missing, wrong, expired or revoked (401). */
export class UnauthorizedError extends DomainError {}
/** The caller is known but not allowed (403). */
export class ForbiddenError extends DomainError {}
/** The named thing does not exist (404). */
export class NotFoundError extends DomainError {}
/** The request conflicts with existing state (409). */
export class ConflictError extends DomainError {}
/** The request must switch protocols: a plain GET to the WebSocket endpoint (426). */
export class UpgradeRequiredError extends DomainError {}
/** A backend the request needs is unreachable (503). */
export class UnavailableError extends DomainError {}
/** This node is at capacity (503); unlike a fault, the client is told so. */
export class OverloadedError extends DomainError {}
/** The caller holds as many of something as it may (429). */
export class TooManyError extends DomainError {}

/** Thrown for a bad configuration value; the message names the setting. */
export class ConfigError extends Error {
  override name = 'ConfigError'
}

/** Network errors of a backend that cannot be reached (or answers too late), as the drivers name them. */
const UNREACHABLE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENOTFOUND', 'EPIPE', 'PROTOCOL_CONNECTION_LOST', 'PROTOCOL_SEQUENCE_TIMEOUT'])
const UNREACHABLE_MESSAGES = /^(Command timed out|Connection is closed|Stream isn't writeable|Reached the max retries per request limit|Queue limit reached)/

/**
 * Whether an error says that MySQL or Redis could not be reached, rather
 * than that something is wrong: the request may succeed once it is back (503).
 */
export function isBackendUnreachable (error: unknown): boolean {
  if (typeof error !== 'object' || error === null) return false
  const { code, message, name } = error as { code?: unknown, message?: unknown, name?: unknown }
  if (typeof code === 'string' && UNREACHABLE_CODES.has(code)) return true
  if (name === 'MaxRetriesPerRequestError') return true
  return typeof message === 'string' && UNREACHABLE_MESSAGES.test(message)
}

/**
 * An error as it may be logged. Database drivers attach the statement with
 * its values (`sql`: message text, emails, hashes); those stay out of logs.
 */
export function loggable (error: unknown): unknown {
  if (typeof error !== 'object' || error === null || !('sql' in error)) return error
  const { name, message, code, errno, sqlState, stack } = error as Partial<Error> & { code?: unknown, errno?: unknown, sqlState?: unknown }
  return { type: name, message, code, errno, sqlState, stack }
}
