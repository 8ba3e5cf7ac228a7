/** How fast the buckets of one kind may be drawn on: shared by all of them. */
export interface TokenRate {
  readonly ratePerSecond: number
  readonly burst: number
  /** Milliseconds, from any origin. */
  readonly clock: () => number
}

/**
 * A token bucket: `burst` tokens, refilled at `ratePerSecond`. One per
 * connection limits how fast it may send frames.
 *
 * A class, not a factory of closures, because every socket has one: it
 * holds its two numbers and the rate that all of them share.
 */
export class TokenBucket {
  private readonly rate: TokenRate
  private tokens: number
  private updatedAt: number

  constructor (rate: TokenRate) {
    this.rate = rate
    this.tokens = rate.burst
    this.updatedAt = rate.clock()
  }

  take (): boolean {
    const { ratePerSecond, burst, clock } = this.rate
    const now = clock()
    this.tokens = Math.min(burst, this.tokens + ((now - this.updatedAt) / 1000) * ratePerSecond)
    this.updatedAt = now
    if (this.tokens < 1) return false
    this.tokens -= 1
    return true
  }
}

export function tokenRate ({ ratePerSecond, burst, clock = () => performance.now() }: {
  ratePerSecond: number
  burst: number
  clock?: () => number
}): TokenRate {
  return { ratePerSecond, burst, clock }
}

export function createTokenBucket (options: Parameters<typeof tokenRate>[0]): TokenBucket {
  return new TokenBucket(tokenRate(options))
}
