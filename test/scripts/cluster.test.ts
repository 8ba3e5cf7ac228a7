import { test, type Test } from 'tap'
import {
  loadBalancerHint, MAX_NODES, nodeUrl, parseClusterArgs, planCluster, runClusterCommand,
  SetupError, sharedEnvironment, startNodes, UsageError, USAGE, type NodePlan, type Output
} from '../../scripts/cluster.js'
import { thrown } from '../helper.js'

const BACKENDS = { MYSQL_URL: 'mysql://root@127.0.0.1:3306/test', REDIS_URL: 'redis://127.0.0.1:6379/0' }
const SECRET = 'a-cluster-test-secret-of-32-bytes-or-more'

/** Output kept in memory; `line(pattern)` resolves once a line matching it has been written. */
function recorder () {
  const lines: Array<{ stream: 'log' | 'error', text: string }> = []
  const waiting: Array<() => void> = []
  const write = (stream: 'log' | 'error') => (text: string): void => {
    for (const part of text.split('\n')) lines.push({ stream, text: part })
    for (const wake of waiting.splice(0)) wake()
  }
  const output: Output = { log: write('log'), error: write('error') }
  return {
    output,
    lines,
    text: (stream: 'log' | 'error') => lines.filter((line) => line.stream === stream).map((line) => line.text),
    async line (pattern: RegExp): Promise<string> {
      for (;;) {
        const found = lines.find((line) => pattern.test(line.text))
        if (found !== undefined) return found.text
        await new Promise<void>((resolve) => waiting.push(resolve))
      }
    }
  }
}

/**
 * A stand-in for the server, so the supervision is tested without backends:
 * it says where it would listen, writes to stderr, and leaves on SIGTERM.
 * DIE_ON_PORT makes the node on that port exit with code 3 at once.
 */
const FAKE_NODE = `
if (process.env.PORT === process.env.DIE_ON_PORT) process.exit(3)
process.on('SIGTERM', () => { console.log('closing'); process.exit(0) })
console.log('listening on ' + process.env.HOST + ':' + process.env.PORT + ' secret ' + process.env.JWT_SECRET.length)
console.error('a warning')
setInterval(() => {}, 1000)
`
const FAKE_COMMAND = [process.execPath, '-e', FAKE_NODE]

function plan (env: NodeJS.ProcessEnv, args: string[] = []): NodePlan[] {
  return planCluster(parseClusterArgs(args, env), env).nodes
}

/** Stops whatever a failed test left running. */
function startFakeNodes (t: Test, nodes: NodePlan[], output: Output) {
  const cluster = startNodes(nodes, { command: FAKE_COMMAND, output })
  t.teardown(() => { cluster.kill() })
  return cluster
}

test('arguments default to 3 nodes from port 3000 on loopback', async (t) => {
  t.strictSame(parseClusterArgs([], {}), { help: false, nodes: 3, port: 3000, host: '127.0.0.1' })
  t.strictSame(parseClusterArgs([], { PORT: '8080', HOST: '0.0.0.0' }), { help: false, nodes: 3, port: 8080, host: '0.0.0.0' }, 'PORT and HOST give the defaults')
  t.strictSame(parseClusterArgs([], { PORT: '', HOST: '' }), { help: false, nodes: 3, port: 3000, host: '127.0.0.1' }, 'empty ones count as unset')
  t.strictSame(
    parseClusterArgs(['--nodes', '5', '--port', '4000', '--host', '::'], { PORT: '8080' }),
    { help: false, nodes: 5, port: 4000, host: '::' },
    'the command line wins'
  )
  t.strictSame(parseClusterArgs(['--nodes=1', '--port=65535'], {}), { help: false, nodes: 1, port: 65535, host: '127.0.0.1' })
  t.equal(parseClusterArgs(['-h'], {}).help, true)
})

test('bad arguments are refused with a reason', async (t) => {
  const cases: Array<[string[], NodeJS.ProcessEnv, RegExp]> = [
    [['--nodes', '0'], {}, /--nodes must be between 1 and 64/],
    [['--nodes', String(MAX_NODES + 1)], {}, /--nodes must be between/],
    [['--nodes', 'two'], {}, /--nodes must be a whole number/],
    [['--nodes=-1'], {}, /--nodes must be a whole number/],
    [['--port', '0'], {}, /first port must be 1 or more/],
    [['--port', '65534'], {}, /ports 65534 to 65536 are not all valid/],
    [[], { PORT: 'http' }, /PORT must be a whole number, not "http"/],
    [['--host', ''], {}, /--host must not be empty/],
    [['--nodes'], {}, /--nodes/],
    [['--replicas', '2'], {}, /replicas/],
    [['extra'], {}, /extra/]
  ]
  for (const [args, env, message] of cases) {
    const error = thrown(t, () => parseClusterArgs(args, env), UsageError)
    t.match(error.message, message, `${args.join(' ')} ${JSON.stringify(env)}`)
  }
})

test('MYSQL_URL and REDIS_URL are required, and named when missing', async (t) => {
  t.match(thrown(t, () => sharedEnvironment({ REDIS_URL: BACKENDS.REDIS_URL }), SetupError).message, /MYSQL_URL is not set/)
  t.match(thrown(t, () => sharedEnvironment({ MYSQL_URL: BACKENDS.MYSQL_URL, REDIS_URL: '' }), SetupError).message, /REDIS_URL is not set: Redis is what lets the nodes share/)
})

test('a configured JWT_SECRET is shared as it is; otherwise one is made', async (t) => {
  const configured = sharedEnvironment({ ...BACKENDS, JWT_SECRET: SECRET })
  t.strictSame(configured, { shared: { ...BACKENDS, JWT_SECRET: SECRET }, jwtSecretGenerated: false })

  const generated = sharedEnvironment(BACKENDS)
  t.equal(generated.jwtSecretGenerated, true)
  t.ok(Buffer.byteLength(generated.shared.JWT_SECRET ?? '') >= 32, 'long enough for the server')
  t.not(sharedEnvironment(BACKENDS).shared.JWT_SECRET, generated.shared.JWT_SECRET, 'random each run')
})

test('each node gets the shared settings, its own port and host, and everything else inherited', async (t) => {
  const nodes = plan({ ...BACKENDS, LOG_LEVEL: 'warn', PORT: '9999' }, ['--nodes', '3', '--port', '4000'])
  t.same(nodes.map((node) => node.port), [4000, 4001, 4002])
  t.same(nodes.map((node) => node.label), ['[node 1 :4000]', '[node 2 :4001]', '[node 3 :4002]'])
  t.same(nodes.map((node) => node.url), ['http://127.0.0.1:4000', 'http://127.0.0.1:4001', 'http://127.0.0.1:4002'])
  t.same(nodes.map((node) => node.env.PORT), ['4000', '4001', '4002'])
  const secrets = new Set(nodes.map((node) => node.env.JWT_SECRET))
  t.equal(secrets.size, 1, 'one generated secret for all nodes')
  for (const node of nodes) {
    t.match(node.env, { ...BACKENDS, HOST: '127.0.0.1', LOG_LEVEL: 'warn' }, `${node.label} env`)
  }
})

test('node URLs are ones a browser can open', async (t) => {
  t.equal(nodeUrl('127.0.0.1', 3000), 'http://127.0.0.1:3000')
  t.equal(nodeUrl('0.0.0.0', 3000), 'http://127.0.0.1:3000', 'any IPv4 address: loopback')
  t.equal(nodeUrl('::', 3000), 'http://[::1]:3000', 'any IPv6 address: loopback')
  t.equal(nodeUrl('::1', 3001), 'http://[::1]:3001')
  t.equal(nodeUrl('localhost', 3002), 'http://localhost:3002')
})

test('the load-balancer hint names every node', async (t) => {
  const hint = loadBalancerHint(plan(BACKENDS, ['--nodes', '2', '--host', '::1']))
  t.match(hint, '[::1]:3000, [::1]:3001')
  t.notMatch(hint, /\n/, 'one line')
})

test('the command prints the usage, or what is missing, and starts nothing', async (t) => {
  const help = recorder()
  t.equal(await runClusterCommand(['--help'], { env: BACKENDS, output: help.output, command: FAKE_COMMAND }), 0)
  t.match(help.text('log').join('\n'), USAGE)

  const usage = recorder()
  t.equal(await runClusterCommand(['--nodes', 'x'], { env: BACKENDS, output: usage.output, command: FAKE_COMMAND }), 2)
  t.match(usage.text('error')[0], /^cluster: --nodes must be a whole number/)
  t.match(usage.text('error').join('\n'), USAGE)

  const missing = recorder()
  t.equal(await runClusterCommand([], { env: { MYSQL_URL: BACKENDS.MYSQL_URL }, output: missing.output, command: FAKE_COMMAND }), 1)
  t.match(missing.text('error'), [/^cluster: REDIS_URL is not set/])
  t.same(missing.text('log'), [], 'no node is started')
})

test('node output is prefixed, and stop sends SIGTERM to every node and waits for them', async (t) => {
  const { output, line, text } = recorder()
  const nodes = plan({ ...BACKENDS, JWT_SECRET: SECRET }, ['--nodes', '2', '--port', '4100'])
  const cluster = startFakeNodes(t, nodes, output)
  await line(/^\[node 1 :4100\] listening/)
  await line(/^\[node 2 :4101\] listening/)
  await line(/^\[node 2 :4101\] a warning/)
  t.ok(text('log').includes(`[node 1 :4100] listening on 127.0.0.1:4100 secret ${SECRET.length}`), 'stdout, prefixed, with the node\'s settings')
  t.ok(text('error').includes('[node 2 :4101] a warning'), 'stderr goes to the error output, prefixed')

  t.equal(await cluster.stop(), 0, 'every node exited cleanly')
  t.ok(text('log').includes('[node 1 :4100] closing'), 'node 1 got SIGTERM and closed')
  t.ok(text('log').includes('[node 2 :4101] closing'), 'node 2 too')
  t.same(text('error').filter((entry) => !entry.endsWith('a warning')), [], 'nothing else went wrong')
})

test('a node that dies is reported, and the others keep running', async (t) => {
  const { output, line, text } = recorder()
  const nodes = plan({ ...BACKENDS, JWT_SECRET: SECRET, DIE_ON_PORT: '4201' }, ['--nodes', '3', '--port', '4200'])
  const cluster = startFakeNodes(t, nodes, output)
  t.equal(await line(/^\[node 2 :4201\] exited/), '[node 2 :4201] exited with code 3; the other 2 nodes keep running')
  await line(/^\[node 1 :4200\] listening/)
  await line(/^\[node 3 :4202\] listening/)

  t.equal(await cluster.stop(), 1, 'a node failed, so the cluster did')
  t.ok(text('log').includes('[node 1 :4200] closing'), 'node 1 was still running until the stop')
  t.ok(text('log').includes('[node 3 :4202] closing'), 'and so was node 3')
})

test('the command reports when the last node is gone, and fails', async (t) => {
  const { output, line, text } = recorder()
  const env = { ...BACKENDS, DIE_ON_PORT: '4300' }
  const code = await runClusterCommand(['--nodes', '1', '--port', '4300'], { env, output, command: FAKE_COMMAND })
  t.equal(code, 1)
  t.match(text('log'), [
    /JWT_SECRET is not set: generated a random one/,
    /^Starting 1 Switchboard node sharing MySQL and Redis:$/,
    /^ {2}node 1: http:\/\/127\.0\.0\.1:4300 /,
    /^Load balancer: .*127\.0\.0\.1:4300/
  ])
  await line(/no node is left running/)
  t.same(text('error'), ['[node 1 :4300] exited with code 3; no node is left running'])
})

test('a command that cannot start is reported', async (t) => {
  const { output, text } = recorder()
  const cluster = startNodes(plan({ ...BACKENDS, JWT_SECRET: SECRET }, ['--nodes', '1']), { command: ['/nonexistent/switchboard-server'], output })
  t.equal(await cluster.exited, 1)
  t.match(text('error'), [/^\[node 1 :3000\] could not start: .*ENOENT/])
})
