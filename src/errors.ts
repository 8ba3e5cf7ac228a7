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

/**
 * An error as it may be logged. Database drivers attach the statement with
 * its values (`sql`: message text, emails, hashes); those stay out of logs.
 */
export function loggable (error: unknown): unknown {
  if (typeof error !== 'object' || error === null || !('sql' in error)) return error
  const { name, message, code, errno, sqlState, stack } = error as Partial<Error> & { code?: unknown, errno?: unknown, sqlState?: unknown }
  return { type: name, message, code, errno, sqlState, stack }
}
