// Launcher for the E2B SDK conformance suite: starts a freshly built envd
// (bin/envd, or $ENVD_BIN) with --isnotfc on a free port, prepares it the way
// a platform would (an unprivileged default user set through POST /init) and
// hands out SDK sandboxes in debug mode pointed at it.
//
// Every test file starts its own envd (node --test runs files in separate
// processes), so files never share process tables, tokens or default users.

import { spawn, execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import { Sandbox } from 'e2b'

const here = path.dirname(fileURLToPath(import.meta.url))

/** Repository root (test/e2b/lib → ../../..). */
export const repoRoot = path.resolve(here, '..', '..', '..')

/** The unprivileged default user the platform sets through /init. E2B
 * templates call it "user"; the SDK's own tests assume that name. */
export const DEFAULT_USER = 'user'

/** Version the SDK assumes in debug mode (every feature gate open). */
export const DEBUG_ENVD_VERSION = '99.99.99'

function envdBinary() {
  const bin = process.env.ENVD_BIN || path.join(repoRoot, 'bin', 'envd')
  if (!existsSync(bin)) {
    throw new Error(`envd binary not found at ${bin}: run "make build" first or set ENVD_BIN`)
  }
  return bin
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/**
 * Creates the Unix user `name` (with a home directory and bash) unless it
 * exists. The suite runs as root, like CI; anything else is a setup failure.
 */
export function ensureUser(name) {
  if (process.getuid && process.getuid() !== 0) {
    throw new Error(`creating the test user "${name}" needs root (the suite runs as root, like CI)`)
  }
  const exists = () => {
    try {
      execFileSync('id', ['-u', name], { stdio: 'ignore' })
      return true
    } catch {
      return false
    }
  }
  let lastErr
  // Test files start in parallel: another one may be creating the user
  // (useradd exit 9) or hold the passwd/group locks (useradd fails
  // transiently); retry a few times before calling it a setup failure.
  for (let attempt = 0; attempt < 10; attempt++) {
    if (exists()) return
    try {
      execFileSync('useradd', ['-m', '-s', '/bin/bash', name], { stdio: 'pipe' })
      return
    } catch (err) {
      lastErr = err
      execFileSync('sleep', ['0.1'])
    }
  }
  if (exists()) return
  throw new Error(`useradd ${name} failed (${lastErr?.status}): ${lastErr?.stderr}`)
}

/** A running envd. */
export class Envd {
  constructor(child, port) {
    this.child = child
    this.port = port
    this.url = `http://127.0.0.1:${port}`
    this.output = ''
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
    const keep = (chunk) => {
      // Bounded: enough to diagnose a failure, never the whole run.
      if (this.output.length < 4 << 20) this.output += chunk.toString()
    }
    child.stdout.on('data', keep)
    child.stderr.on('data', keep)
  }

  /** POST /init with a JSON body, as the platform does; returns the Response. */
  async init(body) {
    return fetch(`${this.url}/init`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    })
  }

  /**
   * An SDK sandbox in debug mode talking to this envd. `accessToken` makes
   * it a "secure" sandbox: the SDK then sends X-Access-Token and signs file
   * URLs, exactly as when the platform API hands it the token.
   */
  sandbox({ accessToken } = {}) {
    const opts = { debug: true, sandboxUrl: this.url, sandboxId: 'debug_sandbox_id', envdVersion: DEBUG_ENVD_VERSION }
    if (accessToken) opts.envdAccessToken = accessToken
    // Sandbox.create in debug mode builds the instance the same way but has
    // no way to pass the access token; the constructor is what it calls.
    return new Sandbox(opts)
  }

  /** Stops envd with SIGTERM (SIGKILL after 10 s). */
  async stop() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.exited
    this.child.kill('SIGTERM')
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000)
    const res = await this.exited
    clearTimeout(timer)
    return res
  }
}

/**
 * Starts envd on a free port and waits for GET /health. With
 * `defaultUser` (default: DEFAULT_USER) the user is created and set as the
 * default user through POST /init, as a platform does after creating a
 * sandbox; pass null to keep envd's own default (root).
 */
export async function startEnvd({ defaultUser = DEFAULT_USER, args = [] } = {}) {
  const bin = envdBinary()
  let lastErr
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort()
    const child = spawn(bin, ['--isnotfc', '--port', String(port), ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    const envd = new Envd(child, port)
    // Never leave an envd behind, whatever happens to this test process.
    const reap = () => child.kill('SIGKILL')
    process.once('exit', reap)
    child.once('exit', () => process.removeListener('exit', reap))
    try {
      await waitHealthy(envd)
    } catch (err) {
      lastErr = err
      await envd.stop()
      continue
    }
    if (defaultUser) {
      ensureUser(defaultUser)
      const res = await envd.init({ defaultUser })
      if (res.status !== 204) {
        await envd.stop()
        throw new Error(`POST /init {defaultUser} answered ${res.status}: ${await res.text()}\n${envd.output}`)
      }
    }
    return envd
  }
  throw lastErr
}

async function waitHealthy(envd) {
  const deadline = Date.now() + 15_000
  let exited = false
  envd.exited.then(() => {
    exited = true
  })
  while (Date.now() < deadline) {
    if (exited) throw new Error(`envd exited before becoming healthy:\n${envd.output}`)
    try {
      const res = await fetch(`${envd.url}/health`, { signal: AbortSignal.timeout(1000) })
      await res.arrayBuffer()
      if (res.status === 200) return
    } catch {
      // not listening yet
    }
    await sleep(20)
  }
  throw new Error(`envd not healthy within 15 s:\n${envd.output}`)
}

/** Resolves when cond() is truthy; rejects with `what` after timeoutMs. */
export async function waitFor(cond, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await cond()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(25)
  }
}

/** A fresh directory path under the default user's home for one test. */
let counter = 0
export function scratch(prefix = 'e2b') {
  counter += 1
  return `/home/${DEFAULT_USER}/${prefix}-${process.pid}-${Date.now().toString(36)}-${counter}`
}
