import type { Redis } from 'ioredis'
import type { RefreshTokenRecord, RefreshTokenStore, RevokeResult, RotateResult } from './refresh-tokens-memory.js'

/*
 * Layout, under the configured prefix:
 *   rt:<hash>     hash {u: userId, f: familyId, s: spent 0|1}, expiring with the token
 *   rf:<family>   present while the family is live, expiring with its newest token
 * Revoking a family deletes rf:<family>; its tokens then die with it. The
 * family key is derived inside the scripts (ARGV carries its full prefix),
 * because the family is only known after reading the token.
 */

const ROTATE = `
local token = redis.call('HMGET', KEYS[1], 'u', 'f', 's')
if not token[1] then return {'invalid'} end
local family = ARGV[1] .. token[2]
if redis.call('EXISTS', family) == 0 then return {'invalid'} end
if token[3] == '1' then
  redis.call('DEL', family)
  return {'reused', token[1], token[2]}
end
redis.call('HSET', KEYS[1], 's', '1')
redis.call('HSET', KEYS[2], 'u', token[1], 'f', token[2], 's', '0')
redis.call('PEXPIREAT', KEYS[2], ARGV[2])
if redis.call('PEXPIRETIME', family) < tonumber(ARGV[2]) then redis.call('PEXPIREAT', family, ARGV[2]) end
return {'rotated', token[1], token[2]}
`

const REVOKE = `
local token = redis.call('HMGET', KEYS[1], 'u', 'f', 's')
if not token[1] then return {'invalid'} end
local family = ARGV[1] .. token[2]
if redis.call('DEL', family) == 0 then return {'invalid'} end
redis.call('DEL', KEYS[1])
if token[3] == '1' then return {'reused', token[1], token[2]} end
return {'revoked', token[1], token[2]}
`

type ScriptReply = [string, string?, string?]

interface RefreshTokenScripts {
  switchboardRotateRefreshToken (token: string, next: string, familyPrefix: string, nextExpiresAt: number): Promise<ScriptReply>
  switchboardRevokeRefreshToken (token: string, familyPrefix: string): Promise<ScriptReply>
}

function toResult<T extends RotateResult | RevokeResult> ([status, userId, familyId]: ScriptReply): T {
  if (status === 'invalid' || userId === undefined || familyId === undefined) return { status: 'invalid' } as T
  return { status, userId: Number(userId), familyId } as T
}

export function createRedisRefreshTokenStore (redis: Redis, { prefix }: { prefix: string }): RefreshTokenStore {
  redis.defineCommand('switchboardRotateRefreshToken', { numberOfKeys: 2, lua: ROTATE })
  redis.defineCommand('switchboardRevokeRefreshToken', { numberOfKeys: 1, lua: REVOKE })
  const scripts = redis as Redis & RefreshTokenScripts
  const tokenKey = (hash: string) => `${prefix}rt:${hash}`
  const familyKey = (familyId: string) => `${prefix}rf:${familyId}`
  // Keys built inside a script do not get the client's own keyPrefix, if it has one.
  const familyPrefix = `${redis.options.keyPrefix ?? ''}${prefix}rf:`

  return {
    async create (hash: string, { userId, familyId, expiresAt }: RefreshTokenRecord): Promise<void> {
      const results = await redis.multi()
        .hset(tokenKey(hash), { u: userId, f: familyId, s: 0 })
        .pexpireat(tokenKey(hash), expiresAt)
        .set(familyKey(familyId), '1', 'PXAT', expiresAt)
        .exec()
      const failure = results?.find(([error]) => error !== null)?.[0]
      if (failure) throw failure
    },

    async rotate (hash: string, nextHash: string, nextExpiresAt: number): Promise<RotateResult> {
      return toResult(await scripts.switchboardRotateRefreshToken(tokenKey(hash), tokenKey(nextHash), familyPrefix, nextExpiresAt))
    },

    async revoke (hash: string): Promise<RevokeResult> {
      return toResult(await scripts.switchboardRevokeRefreshToken(tokenKey(hash), familyPrefix))
    },

    async isFamilyLive (familyId: string): Promise<boolean> {
      return (await redis.exists(familyKey(familyId))) === 1
    }
  }
}
