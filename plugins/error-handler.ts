import { STATUS_CODES } from 'node:http'
import fp from 'fastify-plugin'
import {
  ConflictError, DomainError, ForbiddenError, InvalidInputError, NotFoundError, OverloadedError, TooManyError, UnauthorizedError, UnavailableError, UpgradeRequiredError, isBackendUnreachable, loggable
} from '../src/errors.js'

/** The one body every error has: Fastify's shape, always with a `code`. */
export interface ErrorBody {
  statusCode: number
  code: string
  error: string
  message: string
}

const STATUS_BY_ERROR = new Map<abstract new (...args: never[]) => DomainError, number>([
  [InvalidInputError, 400],
  [UnauthorizedError, 401],
  [ForbiddenError, 403],
  [NotFoundError, 404],
  [ConflictError, 409],
  [UpgradeRequiredError, 426],
  [UnavailableError, 503],
  [OverloadedError, 503],
  [TooManyError, 429]
])

interface HttpishError {
  statusCode?: unknown
  code?: unknown
  message?: unknown
  validation?: unknown
}

function statusOf (error: HttpishError): number {
  if (isBackendUnreachable(error)) return 503
  if (error instanceof DomainError) {
    for (const [type, status] of STATUS_BY_ERROR) if (error instanceof type) return status
    return 500
  }
  const status = error.statusCode
  return typeof status === 'number' && status >= 400 && status <= 599 ? status : 500
}

function codeFor (status: number): string {
  return (STATUS_CODES[status] ?? 'Error').toUpperCase().replace(/[^A-Z]+/g, '_')
}

export function errorBody (error: HttpishError): ErrorBody {
  const statusCode = statusOf(error)
  const name = STATUS_CODES[statusCode] ?? 'Error'
  // A node at capacity tells the client so; any other 5xx is a fault, whose internals stay in the log.
  if (statusCode >= 500 && !(error instanceof OverloadedError)) {
    return { statusCode, code: codeFor(statusCode), error: name, message: statusCode === 503 ? 'a backend this request needs is unavailable; try again shortly' : 'something went wrong on our side' }
  }
  // Fastify's own codes (FST_...) name its internals; clients get the status in words instead.
  const code = error.validation !== undefined
    ? 'VALIDATION_FAILED'
    : typeof error.code === 'string' && !error.code.startsWith('FST_') ? error.code : codeFor(statusCode)
  const message = typeof error.message === 'string' && error.message !== '' ? error.message : name
  return { statusCode, code, error: name, message }
}

export default fp(async function errorHandlerPlugin (fastify) {
  fastify.setErrorHandler(function handleError (error: HttpishError, request, reply) {
    const body = errorBody(error)
    if (body.statusCode >= 500) request.log.error({ err: loggable(error) }, 'request failed')
    else request.log.info({ code: body.code, statusCode: body.statusCode }, body.message)
    return reply.code(body.statusCode).send(body)
  })
}, { fastify: '5.x', name: 'switchboard-error-handler' })
