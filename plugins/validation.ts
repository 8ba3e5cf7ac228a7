import { Ajv, type Options } from 'ajv'
import addFormats from 'ajv-formats'
import fp from 'fastify-plugin'

const shared: Options = { useDefaults: true, allErrors: false, strict: false, removeAdditional: false }

/**
 * Request validation that does not depend on the host app's server options:
 * bodies are checked strictly (no coercion, unknown keys refused), while
 * query strings and path parameters, which are text by nature, are coerced.
 * Only JSON bodies are accepted; anything else is a 415.
 */
export default fp(async function validationPlugin (fastify) {
  const strict = new Ajv({ ...shared, coerceTypes: false })
  const coercing = new Ajv({ ...shared, coerceTypes: true })
  addFormats.default(strict)
  addFormats.default(coercing)

  fastify.setValidatorCompiler(({ schema, httpPart }) => {
    const ajv = httpPart === 'body' ? strict : coercing
    return ajv.compile(schema)
  })
  fastify.removeContentTypeParser('text/plain')
}, { fastify: '5.x', name: 'switchboard-validation' })
