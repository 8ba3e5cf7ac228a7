import { test, type Test } from 'tap'
import { InvalidInputError } from '../../src/errors.js'
import { MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS, createPasswordHasher } from '../../src/passwords.js'

const passwords = createPasswordHasher({ cost: 4 })

/** 4 UTF-8 bytes, 2 UTF-16 units, one character. */
const EMOJI = '\u{1F511}'

async function refusal (t: Test, password: string): Promise<string | undefined> {
  try {
    await passwords.hash(password)
  } catch (error) {
    t.type(error, InvalidInputError)
    return (error as InvalidInputError).code
  }
  t.fail(`${JSON.stringify(password)} was accepted`)
  return undefined
}

test('the limits are the DESIGN\'s', async (t) => {
  t.equal(MIN_PASSWORD_CHARS, 8)
  t.equal(MAX_PASSWORD_BYTES, 72)
})

test('hash then verify', async (t) => {
  const hash = await passwords.hash('correct horse battery')
  t.match(hash, /^\$2[aby]\$04\$/, 'bcrypt at the configured cost')
  t.not(hash, await passwords.hash('correct horse battery'), 'salted')
  t.equal(await passwords.verify('correct horse battery', hash), true)
})

test('a wrong password does not verify', async (t) => {
  const hash = await passwords.hash('correct horse battery')
  t.equal(await passwords.verify('correct horse battery!', hash), false)
  t.equal(await passwords.verify('Correct horse battery', hash), false)
  t.equal(await passwords.verify('', hash), false)
})

test('verify without a hash is false, whatever the password', async (t) => {
  t.equal(await passwords.verify('correct horse battery', null), false)
  // The decoy compared against in this case must not open a missing account either.
  t.equal(await passwords.verify('switchboard-decoy-password', null), false)
  t.equal(await passwords.verify('x'.repeat(100), null), false)
})

test('at least 8 characters, counted as characters', async (t) => {
  t.ok(await passwords.hash('12345678'), '8 characters')
  t.equal(await refusal(t, '1234567'), 'PASSWORD_TOO_SHORT', '7 characters')
  t.equal(await refusal(t, ''), 'PASSWORD_TOO_SHORT', 'empty')
  t.ok(await passwords.hash(EMOJI.repeat(8)), '8 emoji are 8 characters')
  t.equal(await refusal(t, EMOJI.repeat(7)), 'PASSWORD_TOO_SHORT', '7 emoji are 7 characters though 14 UTF-16 units')
  t.throws(() => passwords.assertAcceptable('short'), { code: 'PASSWORD_TOO_SHORT' }, 'assertAcceptable says the same')
})

test('at most 72 bytes of UTF-8', async (t) => {
  t.ok(await passwords.hash('a'.repeat(72)), '72 ASCII bytes')
  t.equal(await refusal(t, 'a'.repeat(73)), 'PASSWORD_TOO_LONG', '73 ASCII bytes')
  t.ok(await passwords.hash(EMOJI.repeat(18)), '18 emoji are 72 bytes')
  t.equal(await refusal(t, EMOJI.repeat(19)), 'PASSWORD_TOO_LONG', '19 emoji are 76 bytes though only 19 characters')
  t.equal(await refusal(t, `${'a'.repeat(71)}é`), 'PASSWORD_TOO_LONG', '72 characters that are 73 bytes')
  t.throws(() => passwords.assertAcceptable('a'.repeat(73)), { code: 'PASSWORD_TOO_LONG' }, 'assertAcceptable says the same')
})

test('a long password is never truncated to its first 72 bytes', async (t) => {
  const password = `${'p'.repeat(70)}${'é'}`
  t.equal(Buffer.byteLength(password), 72)
  const hash = await passwords.hash(password)
  t.equal(await passwords.verify(password, hash), true)
  // bcrypt alone would ignore everything past byte 72 and accept these.
  t.equal(await passwords.verify(`${password}x`, hash), false)
  t.equal(await passwords.verify(`${password}${EMOJI.repeat(5)}`, hash), false)
})

test('a password with a lone surrogate is refused: bcrypt would hash it as U+FFFD, like any other', async (t) => {
  const hasher = createPasswordHasher({ cost: 4 })
  for (const password of ['abcdefgh\ud800', 'abcdefgh\udfff', '\ude00abcdefgh']) {
    t.throws(() => hasher.assertAcceptable(password), { name: 'InvalidInputError', code: 'VALIDATION_FAILED' }, JSON.stringify(password))
  }
  t.doesNotThrow(() => hasher.assertAcceptable('abcdefgh\u{1F600}'), 'a surrogate pair (an emoji) is fine')
})
