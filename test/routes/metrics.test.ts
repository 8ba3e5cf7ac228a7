import { test } from 'tap'
import { build } from '../helper.js'

/** The value of one series (`name` or `name{label="value",...}`) in a scrape, or undefined when absent. */
function sample (text: string, series: string): number | undefined {
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

test('GET /metrics serves the node\'s metrics as Prometheus text', async (t) => {
  const app = await build(t)
  const response = await app.inject({ method: 'GET', url: '/metrics' })
  t.equal(response.statusCode, 200)
  t.equal(response.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8')
  for (const name of [
    'switchboard_connections',
    'switchboard_online_users',
    'switchboard_messages_accepted_total',
    'switchboard_messages_delivered_total',
    'switchboard_delivery_latency_seconds',
    'switchboard_bus_messages_total',
    'switchboard_bus_errors_total',
    'switchboard_bus_up',
    'switchboard_event_loop_delay_seconds',
    'switchboard_event_loop_delay_max_seconds'
  ]) t.match(response.body, new RegExp(`^# TYPE ${name} `, 'm'), `${name} is there`)
  t.notMatch(response.body, /^"/, 'the text is not JSON-encoded')
  t.equal(sample(response.body, 'switchboard_messages_accepted_total'), 0)
})

test('what the app reports shows at the next scrape', async (t) => {
  const app = await build(t)
  app.switchboardMetrics.messageAccepted()
  const response = await app.inject({ method: 'GET', url: '/metrics' })
  t.equal(sample(response.body, 'switchboard_messages_accepted_total'), 1)
})

test('each app has its own metrics', async (t) => {
  const first = await build(t)
  const second = await build(t)
  first.switchboardMetrics.messageAccepted()
  const response = await second.inject({ method: 'GET', url: '/metrics' })
  t.equal(sample(response.body, 'switchboard_messages_accepted_total'), 0)
})

test('GET /metrics is not rate limited', async (t) => {
  const app = await build(t, { rateLimitMax: 1 })
  for (let attempt = 0; attempt < 3; attempt++) {
    const response = await app.inject({ method: 'GET', url: '/metrics' })
    t.equal(response.statusCode, 200, `scrape ${attempt + 1}`)
  }
})
