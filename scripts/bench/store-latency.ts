/**
 * Switchboard's storage path alone, without sockets: the MariaDB message
 * store behind the same group-commit batcher the server uses, fed
 * open-loop at fixed rates. Each message's latency runs from its add to its
 * save resolving. It tells how much of the latency on MariaDB is the
 * database's own (each batch is one INSERT, committed before the next one
 * starts).
 *
 *   MYSQL_URL=mysql://root@127.0.0.1:3306/test npm run bench:store -- [--rates 1000,2000,4000] [--seconds 6]
 *
 * It works in a scratch database of its own, dropped at the end.
 */
import { parseArgs } from 'node:util'
import { createPool } from 'mysql2/promise'
import { MESSAGE_BATCHING } from '../../plugins/pool.js'
import { createBatcher } from '../../src/batcher.js'
import { createIdGenerator } from '../../src/ids.js'
import { createMysqlMessageStore } from '../../src/stores/messages-mysql.js'
import type { SaveOutcome, StoredMessage } from '../../src/stores/messages-memory.js'
import { migrate } from '../../src/stores/migrate.js'
import { TEXT_BYTES } from './accounting.js'
import { latencyHistogram, recordMicros, summarize } from './histograms.js'
import { runCleanups, scratchDatabase } from './servers.js'

/** Messages are added every this often, as many as the rate has made due. */
const TICK_MS = 1

interface Options {
  rates: number[]
  seconds: number
}

function parseOptions (argv: string[]): Options {
  const { values } = parseArgs({ args: argv, options: { rates: { type: 'string', default: '1000,2000,4000' }, seconds: { type: 'string', default: '6' } } })
  const rates = values.rates.split(',').map(Number)
  const seconds = Number(values.seconds)
  if (rates.some((rate) => !(rate > 0)) || !(seconds > 0)) throw new Error('--rates takes positive numbers, --seconds a positive number')
  return { rates, seconds }
}

async function main (): Promise<void> {
  const { rates, seconds } = parseOptions(process.argv.slice(2))
  const serverUrl = process.env.MYSQL_URL
  if (serverUrl === undefined || serverUrl === '') throw new Error('MYSQL_URL is required')
  const pool = createPool({ uri: await scratchDatabase(serverUrl), timezone: 'Z', charset: 'utf8mb4_unicode_ci', connectionLimit: 10 })
  try {
    await migrate(pool)
    const store = createMysqlMessageStore(pool)
    const nextId = createIdGenerator({ nodeId: 1 }).next
    const text = 'x'.repeat(TEXT_BYTES)
    console.log('| rate (msgs/s) | stored/s | batches | mean batch | p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | probe lag p99 (ms) |')
    console.log('|---|---|---|---|---|---|---|---|---|')
    for (const rate of rates) {
      const histogram = latencyHistogram()
      /** How late each message was added against its due time: the probe's own lag. */
      const lag = latencyHistogram()
      let batches = 0
      const batcher = createBatcher<StoredMessage, SaveOutcome>({
        flush: async (messages) => {
          batches++
          return await store.save(messages)
        },
        ...MESSAGE_BATCHING
      })
      const saves: Array<Promise<void>> = []
      const started = performance.now()
      let added = 0
      await new Promise<void>((resolve) => {
        const tick = setInterval(() => {
          const elapsed = performance.now() - started
          // Open-loop: message n is due at n / rate, and every message due by now is added (the timer
          // fires about every millisecond). Its latency counts from its add, as a server's does from the
          // frame's arrival; how late the adds came is the lag column.
          for (const due = Math.min(Math.floor(elapsed / 1000 * rate) + 1, Math.floor(seconds * rate)); added < due; added++) {
            const addedAt = performance.now()
            recordMicros(lag, (addedAt - (started + added * 1000 / rate)) * 1000)
            const message: StoredMessage = { id: nextId(), from: 1 + (added % 2000), to: 1 + ((added + 1) % 2000), text, sentAt: new Date().toISOString(), ref: `probe-${added}` }
            saves.push(batcher.add(message).then(() => { recordMicros(histogram, (performance.now() - addedAt) * 1000) }))
          }
          if (elapsed >= seconds * 1000) {
            clearInterval(tick)
            resolve()
          }
        }, TICK_MS)
      })
      await Promise.all(saves)
      const took = (performance.now() - started) / 1000
      const { p50, p99, p999, max } = summarize(histogram)
      const row = [rate, Math.round(added / took), batches, batches === 0 ? '–' : (added / batches).toFixed(1), p50.toFixed(2), p99.toFixed(2), p999.toFixed(2), max.toFixed(1), summarize(lag).p99.toFixed(2)]
      console.log(`| ${row.map((cell) => typeof cell === 'number' ? cell.toLocaleString('en-US') : cell).join(' | ')} |`)
    }
  } finally {
    await pool.end()
    await runCleanups()
  }
}

await main()
