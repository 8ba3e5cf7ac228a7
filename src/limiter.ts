/**
 * Runs at most `concurrency` jobs at once; the others wait their turn, first
 * come first served. A finished job hands its slot straight to the next.
 */
export function createLimiter (concurrency: number) {
  let running = 0
  const waiting: Array<() => void> = []

  return {
    async run<T> (job: () => Promise<T>): Promise<T> {
      if (running < concurrency) running++
      else await new Promise<void>((resolve) => waiting.push(resolve))
      try {
        return await job()
      } finally {
        const next = waiting.shift()
        if (next === undefined) running--
        else next()
      }
    },

    get waiting (): number {
      return waiting.length
    }
  }
}

export type Limiter = ReturnType<typeof createLimiter>
