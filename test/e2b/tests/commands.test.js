// sandbox.commands.* of the official E2B SDK against envd.
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'

import { CommandExitError, InvalidArgumentError, NotFoundError, Sandbox, TimeoutError } from 'e2b'

import { DEFAULT_USER, startEnvd, waitFor } from '../lib/envd.js'

let envd
let sbx

before(async () => {
  envd = await startEnvd()
  sbx = envd.sandbox()
})
after(async () => {
  await envd?.stop()
})

describe('commands.run', () => {
  test('collects stdout, stderr and exit code 0', async () => {
    const res = await sbx.commands.run('echo hello; echo oops >&2')
    assert.equal(res.exitCode, 0)
    assert.equal(res.stdout, 'hello\n')
    assert.equal(res.stderr, 'oops\n')
    assert.equal(res.error, undefined)
  })

  test('a non-zero exit raises CommandExitError with the result', async () => {
    await assert.rejects(sbx.commands.run('echo partial; echo bad >&2; exit 3'), (err) => {
      assert.ok(err instanceof CommandExitError, `got ${err}`)
      assert.equal(err.exitCode, 3)
      assert.equal(err.stdout, 'partial\n')
      assert.equal(err.stderr, 'bad\n')
      assert.equal(err.error, 'exit status 3')
      return true
    })
  })

  test('streams output through onStdout/onStderr as it is produced', async () => {
    const out = []
    const errs = []
    const res = await sbx.commands.run('for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.05; done', {
      onStdout: (d) => out.push(d),
      onStderr: (d) => errs.push(d),
    })
    assert.equal(out.join(''), 'out1\nout2\nout3\n')
    assert.equal(errs.join(''), 'err1\nerr2\nerr3\n')
    assert.ok(out.length >= 2, `expected several stdout chunks, got ${JSON.stringify(out)}`)
    assert.equal(res.stdout, 'out1\nout2\nout3\n')
  })

  test('a fast producer far bigger than the subscriber queue is delivered whole', async () => {
    // 64 MB written as fast as the kernel allows: envd paces the process to
    // the SDK's reading instead of cutting the stream (docs/processes.md).
    const res = await sbx.commands.run("head -c 64000000 /dev/zero | tr '\\0' a", { timeoutMs: 120_000 })
    assert.equal(res.exitCode, 0)
    assert.equal(res.stdout.length, 64_000_000)
    assert.ok(/^a+$/.test(res.stdout), 'every byte is an "a"')
  })

  test('large output arrives complete and in order', async () => {
    const res = await sbx.commands.run('seq 1 200000')
    const lines = res.stdout.trimEnd().split('\n')
    assert.equal(lines.length, 200000)
    assert.equal(lines[0], '1')
    assert.equal(lines[199999], '200000')
  })

  test('multi-byte UTF-8 is decoded across chunks', async () => {
    const res = await sbx.commands.run(`printf 'h\\xc3'; sleep 0.1; printf '\\xa9llo \\xe2\\x82'; sleep 0.1; printf '\\xac\\n'`)
    assert.equal(res.stdout, 'h\u00e9llo \u20ac\n')
  })

  test('envs reach the process, on top of the default environment', async () => {
    const res = await sbx.commands.run('echo "$FOO|$BAR|$WRENN_SANDBOX|$HOME|$USER"', { envs: { FOO: 'foo value', BAR: 'b=1' } })
    assert.equal(res.stdout, `foo value|b=1|false|/home/${DEFAULT_USER}|${DEFAULT_USER}\n`)
  })

  test('cwd defaults to the default user home and can be set', async () => {
    assert.equal((await sbx.commands.run('pwd')).stdout, `/home/${DEFAULT_USER}\n`)
    assert.equal((await sbx.commands.run('pwd', { cwd: '/tmp' })).stdout, '/tmp\n')
    assert.equal((await sbx.commands.run('pwd', { cwd: '~' })).stdout, `/home/${DEFAULT_USER}\n`)
  })

  test('runs as the default user from /init, or the user asked for', async () => {
    const asDefault = await sbx.commands.run('id -un; echo $HOME')
    assert.equal(asDefault.stdout, `${DEFAULT_USER}\n/home/${DEFAULT_USER}\n`)
    const asRoot = await sbx.commands.run('id -un; id -u; echo $HOME; pwd', { user: 'root' })
    assert.equal(asRoot.stdout, 'root\n0\n/root\n/root\n')
  })

  test('stdin is closed (/dev/null) unless asked for', async () => {
    // With stdin=false (the SDK default) cat sees end of file at once.
    const res = await sbx.commands.run('cat; echo done', { timeoutMs: 10_000 })
    assert.equal(res.stdout, 'done\n')
  })

  test('timeoutMs ends the process with TimeoutError', async () => {
    const started = Date.now()
    await assert.rejects(sbx.commands.run('sleep 30', { timeoutMs: 700 }), (err) => {
      assert.ok(err instanceof TimeoutError, `got ${err?.constructor?.name}: ${err}`)
      return true
    })
    assert.ok(Date.now() - started < 20_000)
  })

  test('many commands in parallel each get their own output', async () => {
    const runs = await Promise.all(Array.from({ length: 24 }, (_, i) => sbx.commands.run(`echo start-${i}; sleep 0.2; echo end-${i} >&2; exit ${i % 3}`).catch((e) => e)))
    runs.forEach((r, i) => {
      assert.equal(r.stdout, `start-${i}\n`)
      assert.equal(r.stderr, `end-${i}\n`)
      assert.equal(r.exitCode, i % 3)
      if (i % 3 !== 0) assert.ok(r instanceof CommandExitError)
    })
  })

  test('a cwd that does not exist is InvalidArgumentError', async () => {
    await assert.rejects(sbx.commands.run('pwd', { cwd: '/nonexistent/dir' }), InvalidArgumentError)
  })
})

describe('background commands, stdin, list, kill, connect', () => {
  test('background start returns a handle at once; wait() gives the result', async () => {
    const h = await sbx.commands.run('sleep 0.3; echo late', { background: true })
    assert.ok(Number.isInteger(h.pid) && h.pid > 0)
    assert.equal(h.exitCode, undefined)
    const res = await h.wait()
    assert.equal(res.exitCode, 0)
    assert.equal(res.stdout, 'late\n')
    assert.equal(h.exitCode, 0)
  })

  test('sendStdin and closeStdin feed a process started with stdin', async () => {
    const h = await sbx.commands.run('cat', { background: true, stdin: true })
    await sbx.commands.sendStdin(h.pid, 'first line\n')
    await h.sendStdin('second ')
    await h.sendStdin(new TextEncoder().encode('line\n'))
    await h.closeStdin()
    const res = await h.wait()
    assert.equal(res.stdout, 'first line\nsecond line\n')
  })

  test('commands.closeStdin by pid ends a reader', async () => {
    const h = await sbx.commands.run('wc -c', { background: true, stdin: true })
    await h.sendStdin('12345')
    await sbx.commands.closeStdin(h.pid)
    const res = await h.wait()
    assert.equal(res.stdout.trim(), '5')
  })

  test('list shows running processes with their config; kill removes them', async () => {
    const h = await sbx.commands.run('sleep 60', { background: true, envs: { MARK: 'x' }, cwd: '/tmp' })
    const procs = await sbx.commands.list()
    const p = procs.find((x) => x.pid === h.pid)
    assert.ok(p, `pid ${h.pid} not in ${JSON.stringify(procs)}`)
    assert.equal(p.cmd, '/bin/bash')
    assert.deepEqual(p.args, ['-l', '-c', 'sleep 60'])
    assert.deepEqual(p.envs, { MARK: 'x' })
    assert.equal(p.cwd, '/tmp')
    assert.equal(p.tag, undefined)

    assert.equal(await sbx.commands.kill(h.pid), true)
    await assert.rejects(h.wait(), (err) => {
      assert.ok(err instanceof CommandExitError, `got ${err}`)
      assert.equal(err.exitCode, -1)
      assert.equal(err.error, 'signal: killed')
      return true
    })
    await waitFor(async () => !(await sbx.commands.list()).some((x) => x.pid === h.pid), 'killed process to leave the list')
  })

  test('kill of a finished process returns false', async () => {
    const h = await sbx.commands.run('true', { background: true })
    await h.wait()
    assert.equal(await sbx.commands.kill(h.pid), false)
    assert.equal(await h.kill(), false)
  })

  test('kill reaches the whole process tree', async () => {
    const h = await sbx.commands.run('sleep 100 & sleep 100 & echo $!; wait', { background: true })
    const child = await waitFor(() => h.stdout.trim(), 'background child pid')
    assert.equal(await h.kill(), true)
    await assert.rejects(h.wait(), CommandExitError)
    await waitFor(async () => {
      const r = await sbx.commands.run(`kill -0 ${child} 2>/dev/null && echo alive || echo gone`, { user: 'root' })
      return r.stdout === 'gone\n'
    }, 'grandchild to be killed')
  })

  test('connect attaches to a running process and gets the rest of its output', async () => {
    const h = await sbx.commands.run('echo one; sleep 0.5; echo two; sleep 0.5; echo three', {
      background: true,
      timeoutMs: 0,
    })
    await waitFor(() => h.stdout.includes('one'), 'first output on the start stream')
    await h.disconnect()
    const seen = []
    const c = await sbx.commands.connect(h.pid, { onStdout: (d) => seen.push(d) })
    assert.equal(c.pid, h.pid)
    const res = await c.wait()
    assert.equal(res.exitCode, 0)
    assert.match(seen.join(''), /three\n$/)
    assert.ok(!seen.join('').includes('one'), 'output delivered to the first client must not be replayed')
  })

  test('connect to an unknown pid is NotFoundError', async () => {
    await assert.rejects(sbx.commands.connect(999_999_9), NotFoundError)
  })

  test('sendStdin to an unknown pid is NotFoundError', async () => {
    await assert.rejects(sbx.commands.sendStdin(999_999_9, 'x'), NotFoundError)
  })

  test('an unknown user is an AuthenticationError', async () => {
    const { AuthenticationError } = await import('e2b')
    await assert.rejects(sbx.commands.run('true', { user: 'no-such-user-e2b' }), AuthenticationError)
  })
})

describe('debug-mode configuration', () => {
  test('E2B_DEBUG and E2B_SANDBOX_URL select envd without options', async () => {
    const saved = { debug: process.env.E2B_DEBUG, url: process.env.E2B_SANDBOX_URL }
    process.env.E2B_DEBUG = 'true'
    process.env.E2B_SANDBOX_URL = envd.url
    try {
      const s = await Sandbox.create()
      assert.equal(s.sandboxId, 'debug_sandbox_id')
      assert.equal(await s.isRunning(), true)
      assert.equal((await s.commands.run('echo via-env')).stdout, 'via-env\n')
      const again = await Sandbox.connect('debug_sandbox_id')
      assert.equal((await again.commands.run('id -un')).stdout, `${DEFAULT_USER}\n`)
    } finally {
      for (const [k, v] of [['E2B_DEBUG', saved.debug], ['E2B_SANDBOX_URL', saved.url]]) {
        if (v === undefined) delete process.env[k]
        else process.env[k] = v
      }
    }
  })
})
