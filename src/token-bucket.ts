/**
 * A token bucket: `burst` tokens, refilled at `ratePerSecond`. One per
 * connection limits how fast it may send frames.
 */
export function createTokenBucket ({ ratePerSecond, burst, clock = () => performance.now() }: {
  ratePerSecond: number
  burst: number
  clock?: () => number
}) {
  let tokens = burst
  let updatedAt = clock()

  return {
    take (): boolean {
      const now = clock()
      tokens = Math.min(burst, tokens + ((now - updatedAt) / 1000) * ratePerSecond)
      updatedAt = now
      if (tokens < 1) return false
      tokens -= 1
      return true
    }
  }
}
