import { Ajv, type Options } from 'ajv'
import addFormats from 'ajv-formats'
import fp from 'fastify-plugin'
import secureJson from 'secure-json-parse'
import { InvalidInputError } from '../src/errors.js'
import { isMessageId } from '../src/ids.js'

const shared: Options = { useDefaults: true, allErrors: false, strict: false, removeAdditional: false }

/**
 * Request validation that does not depend on the host app's server options:
 * bodies are checked strictly (no coercion, unknown keys refused), while
 * query strings and path parameters, which are text by nature, are coerced.
 * Only JSON bodies are accepted; anything else is a 415. Keys that could
 * pollute prototypes are refused, with a message that says so.
 */
export default fp(async function validationPlugin (fastify) {
  const strict = new Ajv({ ...shared, coerceTypes: false })
  const coercing = new Ajv({ ...shared, coerceTypes: true })
  for (const ajv of [strict, coercing]) {
    addFormats.default(ajv)
    ajv.addFormat('message-id', { type: 'string', validate: isMessageId })
  }

  fastify.setValidatorCompiler(({ schema, httpPart }) => {
    const ajv = httpPart === 'body' ? strict : coercing
    return ajv.compile(schema)
  })
  fastify.removeContentTypeParser('text/plain')
  // Our own JSON parser only to say clearly why a body is refused.
  fastify.removeContentTypeParser('application/json')
  fastify.addContentTypeParser('application/json', { parseAs: 'string' }, (_request, body, done) => {
    const text = String(body)
    if (text.trim() === '') {
      done(new InvalidInputError('INVALID_JSON', 'the body is empty; send a JSON object'), undefined)
      return
    }
    try {
      done(null, secureJson.parse(text, undefined, { protoAction: 'error', constructorAction: 'error' }))
    } catch (error) {
      const forbidden = error instanceof SyntaxError && error.message.includes('forbidden prototype')
      done(forbidden
        ? new InvalidInputError('FORBIDDEN_KEY', 'the body may not contain "__proto__" or "constructor.prototype" keys')
        : new InvalidInputError('INVALID_JSON', 'the body is not valid JSON'), undefined)
    }
  })
}, { fastify: '5.x', name: 'switchboard-validation' })
