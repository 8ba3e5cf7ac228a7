import { test } from 'tap'
import { createAccessTokens } from '../../src/access-tokens.js'
import { INVALID_CREDENTIALS, INVALID_REFRESH_TOKEN, createAuthService, hashRefreshToken } from '../../src/auth.js'
import { ConflictError, InvalidInputError, UnauthorizedError } from '../../src/errors.js'
import { createPasswordHasher } from '../../src/passwords.js'
import { createMemoryRefreshTokenStore } from '../../src/stores/refresh-tokens-memory.js'
import { EMAIL_TAKEN, createMemoryUsersStore } from '../../src/stores/users-memory.js'
import { pluginJwt, rejection } from '../helper.js'

const ACCESS_TTL = 900
const PASSWORD = 'correct horse battery'

const passwords = createPasswordHasher({ cost: 4 })
const accessTokens = createAccessTokens({ jwt: pluginJwt({ ttlSeconds: ACCESS_TTL }), ttlSeconds: ACCESS_TTL })

function setup () {
  const refreshTokens = createMemoryRefreshTokenStore()
  // Records the keys the service stores tokens under, to show they are hashes.
  const storedKeys: string[] = []
  const recordingRefreshTokens = {
    ...refreshTokens,
    create: async (...args: Parameters<typeof refreshTokens.create>) => {
      storedKeys.push(args[0])
      return refreshTokens.create(...args)
    }
  }
  const auth = createAuthService({
    users: createMemoryUsersStore(),
    refreshTokens: recordingRefreshTokens,
    passwords,
    accessTokens,
    refreshTokenTtlSeconds: 3600
  })
  return { auth, storedKeys }
}

test('signup normalizes the email and trims the name, and returns no hash', async (t) => {
  const { auth } = setup()
  const user = await auth.signup({ email: '  Ada.Lovelace@Example.COM \n', password: PASSWORD, name: '  Ada Lovelace  ' })
  t.equal(user.email, 'ada.lovelace@example.com')
  t.equal(user.name, 'Ada Lovelace')
  t.strictSame(Object.keys(user).sort(), ['avatarUrl', 'createdAt', 'email', 'id', 'name'])
  t.ok(Number.isSafeInteger(user.id) && user.id >= 1)
  const tokens = await auth.login({ email: 'ADA.lovelace@example.com', password: PASSWORD })
  t.equal(auth.verifyAccessToken(tokens.access_token).userId, user.id, 'login finds the account under any case')
})

test('the same email in another case is EMAIL_TAKEN', async (t) => {
  const { auth } = setup()
  await auth.signup({ email: 'grace@example.com', password: PASSWORD, name: 'Grace' })
  const error = await rejection(t, auth.signup({ email: ' GRACE@example.com', password: 'another password', name: 'Impostor' }), ConflictError)
  t.equal(error.code, EMAIL_TAKEN)
})

test('an unacceptable password creates no account', async (t) => {
  const { auth } = setup()
  const error = await rejection(t, auth.signup({ email: 'short@example.com', password: 'short', name: 'Short' }), InvalidInputError)
  t.equal(error.code, 'PASSWORD_TOO_SHORT')
  const tooLong = await rejection(t, auth.signup({ email: 'short@example.com', password: '\u{1F511}'.repeat(19), name: 'Short' }), InvalidInputError)
  t.equal(tooLong.code, 'PASSWORD_TOO_LONG')
  t.ok(await auth.signup({ email: 'short@example.com', password: PASSWORD, name: 'Short' }), 'the email is still free')
})

test('login returns Tokens', async (t) => {
  const { auth, storedKeys } = setup()
  const user = await auth.signup({ email: 'linus@example.com', password: PASSWORD, name: 'Linus' })
  const tokens = await auth.login({ email: 'linus@example.com', password: PASSWORD })
  t.strictSame(Object.keys(tokens).sort(), ['access_token', 'expires_in', 'refresh_token', 'token_type'])
  t.equal(tokens.token_type, 'Bearer')
  t.equal(tokens.expires_in, ACCESS_TTL)
  t.equal(auth.verifyAccessToken(tokens.access_token).userId, user.id)
  t.match(tokens.refresh_token, /^[A-Za-z0-9_-]{43}$/, 'the refresh token is 256 opaque random bits, not a JWT')
  t.strictSame(storedKeys, [hashRefreshToken(tokens.refresh_token)], 'only its hash is stored')
  t.not(storedKeys[0], tokens.refresh_token)
  const again = await auth.login({ email: 'linus@example.com', password: PASSWORD })
  t.not(again.refresh_token, tokens.refresh_token, 'each login its own refresh token')
  t.not(auth.verifyAccessToken(again.access_token).sessionId, auth.verifyAccessToken(tokens.access_token).sessionId, 'and its own session')
})

test('an unknown email and a wrong password fail alike', async (t) => {
  const { auth } = setup()
  await auth.signup({ email: 'known@example.com', password: PASSWORD, name: 'Known' })
  const unknown = await rejection(t, auth.login({ email: 'unknown@example.com', password: PASSWORD }), UnauthorizedError)
  const wrong = await rejection(t, auth.login({ email: 'known@example.com', password: 'wrong password' }), UnauthorizedError)
  t.equal(unknown.code, INVALID_CREDENTIALS)
  t.equal(wrong.code, unknown.code)
  t.equal(wrong.message, unknown.message)
  const tooLong = await rejection(t, auth.login({ email: 'known@example.com', password: 'x'.repeat(100) }), UnauthorizedError)
  t.equal(tooLong.message, unknown.message, 'an over-long password is just wrong at login')
})

test('refresh rotates; reusing the old token kills the session', async (t) => {
  const { auth } = setup()
  const user = await auth.signup({ email: 'rota@example.com', password: PASSWORD, name: 'Rota' })
  const first = await auth.login({ email: 'rota@example.com', password: PASSWORD })
  const sessionId = auth.verifyAccessToken(first.access_token).sessionId

  const second = await auth.refresh(first.refresh_token)
  t.not(second.refresh_token, first.refresh_token, 'a new refresh token')
  t.equal(second.token_type, 'Bearer')
  const identity = auth.verifyAccessToken(second.access_token)
  t.equal(identity.userId, user.id, 'same user')
  t.equal(identity.sessionId, sessionId, 'same session')
  t.equal(await auth.isSessionLive(sessionId), true)

  const reuse = await rejection(t, auth.refresh(first.refresh_token), UnauthorizedError)
  t.equal(reuse.code, INVALID_REFRESH_TOKEN, 'the spent token is refused')
  const after = await rejection(t, auth.refresh(second.refresh_token), UnauthorizedError)
  t.equal(after.code, INVALID_REFRESH_TOKEN, 'and the token it was rotated into died with the session')
  t.equal(await auth.isSessionLive(sessionId), false)
})

test('refresh with a token that was never issued is 401', async (t) => {
  const { auth } = setup()
  const error = await rejection(t, auth.refresh('not-a-refresh-token'), UnauthorizedError)
  t.equal(error.code, INVALID_REFRESH_TOKEN)
})

test('logout revokes the session', async (t) => {
  const { auth } = setup()
  const user = await auth.signup({ email: 'bye@example.com', password: PASSWORD, name: 'Bye' })
  const tokens = await auth.login({ email: 'bye@example.com', password: PASSWORD })
  const other = await auth.login({ email: 'bye@example.com', password: PASSWORD })

  const ended = await auth.logout(tokens.refresh_token)
  t.strictSame(ended, { userId: user.id, sessionId: auth.verifyAccessToken(tokens.access_token).sessionId }, 'the access token\'s sid is the session logout ended')
  t.equal(await auth.isSessionLive(ended.sessionId), false)

  const refresh = await rejection(t, auth.refresh(tokens.refresh_token), UnauthorizedError)
  t.equal(refresh.code, INVALID_REFRESH_TOKEN, 'refresh after logout')
  const twice = await rejection(t, auth.logout(tokens.refresh_token), UnauthorizedError)
  t.equal(twice.code, INVALID_REFRESH_TOKEN, 'logout twice')

  t.ok(await auth.refresh(other.refresh_token), 'another session of the same user lives on')
})

test('logout with a spent token is 401 and ends the session', async (t) => {
  const { auth } = setup()
  await auth.signup({ email: 'spent@example.com', password: PASSWORD, name: 'Spent' })
  const first = await auth.login({ email: 'spent@example.com', password: PASSWORD })
  const second = await auth.refresh(first.refresh_token)
  await rejection(t, auth.logout(first.refresh_token), UnauthorizedError)
  await rejection(t, auth.refresh(second.refresh_token), UnauthorizedError)
})
