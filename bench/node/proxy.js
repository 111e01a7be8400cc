'use strict'
/*
 * bench/run.sh's Node peer: what a Node team would put in front of a
 * provider to keep its apps under a shared quota.
 *
 * Fastify with @fastify/http-proxy (the upstream reached through
 * @fastify/reply-from's undici pool, keep-alive) and @fastify/rate-limit
 * counting in Redis (ioredis), so that several instances share one count,
 * as sluice-redis does.  The limit is one rule that never triggers, like
 * sluice's target: 100,000,000 calls per second for everyone together
 * (one key), checked on every call.  @fastify/rate-limit counts a fixed
 * window (INCR and PEXPIRE in one script run), not an exact rolling one.
 *
 * One Node process per core (the cluster module shares the listening
 * socket), as NGINX and sluice run a worker per core.  Logging is off, as
 * it is for every target.  The Fastify 4 line, since Debian 12's Node.js
 * is 18 and Fastify 5 needs 20 (package.json holds toad-cache at 3.7.0,
 * its last release for Node 18).
 *
 * Usage: node bench/node/proxy.js HOST:PORT PREFIX UPSTREAM_URL REDIS_URL [WORKERS]
 *   A call to PREFIX/rest goes to UPSTREAM_URL/rest.
 */
const cluster = require('node:cluster')
const os = require('node:os')

const [listen, prefix, upstream, redisUrl, workersArg] = process.argv.slice(2)
if (!listen || !prefix || !upstream || !redisUrl) {
  console.error('usage: node proxy.js HOST:PORT PREFIX UPSTREAM_URL REDIS_URL [WORKERS]')
  process.exit(2)
}
const colon = listen.lastIndexOf(':')
const host = listen.slice(0, colon)
const port = Number(listen.slice(colon + 1))
const workers = Number(workersArg) || os.availableParallelism?.() || os.cpus().length

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork()
  cluster.on('exit', (w, code, signal) => {
    if (signal !== 'SIGTERM' && signal !== 'SIGINT') {
      console.error(`fastify worker ${w.process.pid} died (${signal || code})`)
      process.exit(1)
    }
  })
  for (const sig of ['SIGTERM', 'SIGINT']) {
    process.on(sig, () => {
      for (const id in cluster.workers) cluster.workers[id].process.kill('SIGTERM')
      process.exit(0)
    })
  }
} else {
  const Redis = require('ioredis')
  const fastify = require('fastify')({ logger: false })

  // The options @fastify/rate-limit's documentation gives for Redis: a
  // call is not held long when Redis is slow (it is let through instead).
  const redis = new Redis(redisUrl, { connectTimeout: 500, maxRetriesPerRequest: 1 })
  fastify.register(require('@fastify/rate-limit'), {
    global: true,
    max: 100000000,
    timeWindow: 1000,
    redis,
    nameSpace: 'bench-fastify:',
    keyGenerator: () => 'all'
  })
  fastify.register(require('@fastify/http-proxy'), {
    upstream,
    prefix,
    rewritePrefix: ''
  })
  fastify.listen({ host, port, backlog: 1024 }).catch((err) => {
    console.error(`fastify: ${err.message}`)
    process.exit(1)
  })
}
