import { test } from 'tap'
import { build, call, realBackendOptions, realBackends } from '../helper.js'

interface Tokens {
  access_token: string
  refresh_token: string
}

const PASSWORD = 'correct horse battery'

test('a restart on MariaDB and Redis keeps accounts, sessions and their state', async (t) => {
  const backends = realBackends()
  if ('skip' in backends) return t.plan(0, backends.skip)
  // One database and key prefix for both runs; build() gives both the same jwtSecret.
  const options = await realBackendOptions(t, backends)
  const email = `restart-${process.pid}-${Date.now()}@example.com`
  const login = { method: 'POST' as const, url: '/auth/login', payload: { email, password: PASSWORD } }
  const refresh = (token: string) => ({ method: 'POST' as const, url: '/auth/refresh', payload: { refresh_token: token } })

  const before = await build(t, options)
  const signup = await call<{ id: number, createdAt: string }>(before, { method: 'POST', url: '/auth/signup', payload: { email, password: PASSWORD, name: 'Persistent' } })
  t.equal(signup.statusCode, 201)
  const live = (await call<Tokens>(before, login)).body
  // A session rotated once before the restart: its first token is spent.
  const rotatedSession = (await call<Tokens>(before, login)).body
  const rotated = await call<Tokens>(before, refresh(rotatedSession.refresh_token))
  t.equal(rotated.statusCode, 200)
  // A session ended before the restart.
  const endedSession = (await call<Tokens>(before, login)).body
  t.equal((await before.inject({ method: 'POST', url: '/auth/logout', payload: { refresh_token: endedSession.refresh_token } })).statusCode, 204)
  await before.close()

  const after = await build(t, options)
  t.equal((await call<Tokens>(after, login)).statusCode, 200, 'the account survived: login works')
  const wrong = await call(after, { ...login, payload: { email, password: 'wrong password' } })
  t.equal(wrong.statusCode, 401, 'and its password is still checked')
  const again = await call<{ code: string }>(after, { method: 'POST', url: '/auth/signup', payload: { email, password: PASSWORD, name: 'Copy' } })
  t.equal(again.statusCode, 409, 'the email is still taken')

  const me = await call<{ id: number, email: string, createdAt: string }>(after, {
    method: 'GET', url: '/users/me', headers: { authorization: `Bearer ${live.access_token}` }
  })
  t.equal(me.statusCode, 200, 'an access token issued before the restart is accepted')
  t.match(me.body, { id: signup.body.id, email, createdAt: signup.body.createdAt }, 'for the same account')

  const next = await call<Tokens>(after, refresh(live.refresh_token))
  t.equal(next.statusCode, 200, 'a refresh token issued before the restart rotates')
  t.not(next.body.refresh_token, live.refresh_token)
  t.equal((await call(after, refresh(next.body.refresh_token))).statusCode, 200, 'and its successor rotates in turn')

  t.equal((await call(after, refresh(rotatedSession.refresh_token))).statusCode, 401, 'a token spent before the restart stays spent')
  t.equal((await call(after, refresh(rotated.body.refresh_token))).statusCode, 401, 'and its reuse revoked the family after the restart')

  t.equal((await call(after, refresh(endedSession.refresh_token))).statusCode, 401, 'a session logged out before the restart stays ended')
})
