import { test, type Test } from 'tap'
import { createMetrics, type Metrics } from '../../src/metrics.js'

/** The value of one series (`name` or `name{label="value",...}`) in a scrape, or undefined when absent. */
function sample (text: string, series: string): number | undefined {
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

function metricsFor (t: Test): Metrics {
  const metrics = createMetrics()
  t.teardown(() => metrics.close())
  return metrics
}

/** Holds the event loop for `ms`, then lets the delay monitor's timer fire. */
async function blockEventLoop (ms: number): Promise<void> {
  const until = performance.now() + ms
  while (performance.now() < until) { /* busy on purpose */ }
  await new Promise((resolve) => setTimeout(resolve, 30))
}

test('a new registry shows every series, at zero, with the bus up', async (t) => {
  const metrics = metricsFor(t)
  t.equal(metrics.contentType, 'text/plain; version=0.0.4; charset=utf-8')
  const text = await metrics.render()
  for (const series of [
    'switchboard_connections',
    'switchboard_online_users',
    'switchboard_messages_accepted_total',
    'switchboard_messages_delivered_total{route="local"}',
    'switchboard_messages_delivered_total{route="remote"}',
    'switchboard_delivery_latency_seconds_count{route="local"}',
    'switchboard_delivery_latency_seconds_count{route="remote"}',
    'switchboard_bus_messages_total{direction="published"}',
    'switchboard_bus_messages_total{direction="received"}',
    'switchboard_bus_errors_total'
  ]) t.equal(sample(text, series), 0, `${series} is 0`)
  t.equal(sample(text, 'switchboard_bus_up'), 1, 'the bus counts as up until told otherwise')
  t.type(sample(text, 'switchboard_event_loop_delay_seconds{quantile="0.5"}'), 'number')
  t.type(sample(text, 'switchboard_event_loop_delay_seconds{quantile="0.99"}'), 'number')
  t.type(sample(text, 'switchboard_event_loop_delay_max_seconds'), 'number')
  t.match(text, /# TYPE switchboard_messages_accepted_total counter/)
  t.match(text, /# TYPE switchboard_delivery_latency_seconds histogram/)
  t.match(text, /# TYPE switchboard_connections gauge/)
})

test('the connection gauges read their sources at each scrape', async (t) => {
  const metrics = metricsFor(t)
  let connections = 3
  metrics.observe({ connections: () => connections, onlineUsers: () => 2 })
  let text = await metrics.render()
  t.equal(sample(text, 'switchboard_connections'), 3)
  t.equal(sample(text, 'switchboard_online_users'), 2)
  connections = 5
  text = await metrics.render()
  t.equal(sample(text, 'switchboard_connections'), 5, 'no stale value from the previous scrape')
})

test('counters count, by label', async (t) => {
  const metrics = metricsFor(t)
  metrics.messageAccepted()
  metrics.messageAccepted()
  metrics.busPublished(5)
  metrics.busPublished()
  metrics.busReceived(3)
  metrics.busError()
  const text = await metrics.render()
  t.equal(sample(text, 'switchboard_messages_accepted_total'), 2)
  t.equal(sample(text, 'switchboard_bus_messages_total{direction="published"}'), 6)
  t.equal(sample(text, 'switchboard_bus_messages_total{direction="received"}'), 3)
  t.equal(sample(text, 'switchboard_bus_errors_total'), 1)
})

test('deliveries count by route, and their latency lands in the right buckets', async (t) => {
  const metrics = metricsFor(t)
  metrics.messageDelivered('local', 0.3)
  metrics.messageDelivered('remote', 30)
  // Clocks of two nodes may disagree; a negative latency counts as none.
  metrics.messageDelivered('remote', -5)
  const text = await metrics.render()
  t.equal(sample(text, 'switchboard_messages_delivered_total{route="local"}'), 1)
  t.equal(sample(text, 'switchboard_messages_delivered_total{route="remote"}'), 2)

  t.equal(sample(text, 'switchboard_delivery_latency_seconds_bucket{le="0.0005",route="local"}'), 1)
  t.equal(sample(text, 'switchboard_delivery_latency_seconds_count{route="local"}'), 1)
  t.equal(sample(text, 'switchboard_delivery_latency_seconds_sum{route="local"}'), 0.0003)

  t.equal(sample(text, 'switchboard_delivery_latency_seconds_bucket{le="0.0005",route="remote"}'), 1, 'the clamped one')
  t.equal(sample(text, 'switchboard_delivery_latency_seconds_bucket{le="0.025",route="remote"}'), 1)
  t.equal(sample(text, 'switchboard_delivery_latency_seconds_bucket{le="0.05",route="remote"}'), 2)
  t.equal(sample(text, 'switchboard_delivery_latency_seconds_bucket{le="5",route="remote"}'), 2)
  t.equal(sample(text, 'switchboard_delivery_latency_seconds_bucket{le="+Inf",route="remote"}'), 2)
  t.equal(sample(text, 'switchboard_delivery_latency_seconds_sum{route="remote"}'), 0.03)
})

test('the bus gauge follows its state', async (t) => {
  const metrics = metricsFor(t)
  metrics.busState(false)
  t.equal(sample(await metrics.render(), 'switchboard_bus_up'), 0)
  metrics.busState(true)
  t.equal(sample(await metrics.render(), 'switchboard_bus_up'), 1)
})

test('two instances in one process keep their own numbers', async (t) => {
  const first = metricsFor(t)
  const second = metricsFor(t)
  t.not(first.registry, second.registry)
  first.messageAccepted()
  first.observe({ connections: () => 7, onlineUsers: () => 4 })
  const [firstText, secondText] = await Promise.all([first.render(), second.render()])
  t.equal(sample(firstText, 'switchboard_messages_accepted_total'), 1)
  t.equal(sample(secondText, 'switchboard_messages_accepted_total'), 0)
  t.equal(sample(firstText, 'switchboard_connections'), 7)
  t.equal(sample(secondText, 'switchboard_connections'), 0)
})

test('the event-loop delay is measured until close stops the monitor', async (t) => {
  const metrics = metricsFor(t)
  await blockEventLoop(60)
  const busy = await metrics.render()
  t.ok((sample(busy, 'switchboard_event_loop_delay_max_seconds') ?? 0) > 0, 'a blocked loop shows a delay')
  t.ok((sample(busy, 'switchboard_event_loop_delay_seconds{quantile="0.99"}') ?? 0) > 0)

  metrics.close()
  await metrics.render() // starts a fresh interval
  await blockEventLoop(60)
  const closed = await metrics.render()
  t.equal(sample(closed, 'switchboard_event_loop_delay_max_seconds'), 0, 'nothing is sampled after close')
  t.equal(sample(closed, 'switchboard_event_loop_delay_seconds{quantile="0.99"}'), 0)
  metrics.close() // twice is harmless
})
