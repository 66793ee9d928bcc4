// sandbox.pty.* of the official E2B SDK against envd.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'

import { CommandExitError } from 'e2b'

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

/** Collects a PTY's output as text. */
function collector() {
  const dec = new TextDecoder()
  const c = { text: '', onData: (bytes) => (c.text += dec.decode(bytes, { stream: true })) }
  return c
}

test('create: an interactive login shell of the requested size', async () => {
  const out = collector()
  const term = await sbx.pty.create({ cols: 80, rows: 24, onData: out.onData, timeoutMs: 0 })
  assert.ok(term.pid > 0)
  await sbx.pty.sendInput(term.pid, new TextEncoder().encode('echo "size=$(stty size) term=$TERM user=$(id -un) pwd=$PWD sum=$((6*7))"\n'))
  await waitFor(() => out.text.includes('sum=42'), `shell output, got ${JSON.stringify(out.text)}`)
  assert.match(out.text, /size=24 80 term=xterm-256color/)
  assert.ok(out.text.includes(`user=${DEFAULT_USER} pwd=/home/${DEFAULT_USER} sum=42`), out.text)

  // The shell is attached to a terminal (isatty) and in its own session.
  await sbx.pty.sendInput(term.pid, new TextEncoder().encode('[ -t 0 ] && echo "tty=yes"\n'))
  await waitFor(() => out.text.includes('tty=yes'), 'isatty check')

  await sbx.pty.sendInput(term.pid, new TextEncoder().encode('exit 0\n'))
  const res = await term.wait()
  assert.equal(res.exitCode, 0)
})

test('resize changes the terminal size seen by the shell', async () => {
  const out = collector()
  const term = await sbx.pty.create({ cols: 80, rows: 24, onData: out.onData, timeoutMs: 0 })
  await sbx.pty.resize(term.pid, { cols: 132, rows: 43 })
  await sbx.pty.sendInput(term.pid, new TextEncoder().encode('echo "now=$(stty size)"\n'))
  await waitFor(() => out.text.includes('now=43 132'), `resized size, got ${JSON.stringify(out.text)}`)
  assert.equal(await sbx.pty.kill(term.pid), true)
  await assert.rejects(term.wait(), CommandExitError)
})

test('kill ends the terminal; a second kill returns false', async () => {
  const term = await sbx.pty.create({ cols: 40, rows: 10, onData: () => {}, timeoutMs: 0 })
  assert.equal(await sbx.pty.kill(term.pid), true)
  await assert.rejects(term.wait(), (err) => {
    assert.ok(err instanceof CommandExitError, `got ${err}`)
    assert.equal(err.exitCode, -1)
    assert.equal(err.error, 'signal: killed')
    return true
  })
  await waitFor(async () => (await sbx.pty.kill(term.pid)) === false, 'kill of a gone terminal to return false')
})

test('create honours cwd, envs and user', async () => {
  const out = collector()
  const term = await sbx.pty.create({ cols: 80, rows: 24, cwd: '/tmp', envs: { GREETING: 'hi-pty' }, user: 'root', onData: out.onData, timeoutMs: 0 })
  await sbx.pty.sendInput(term.pid, new TextEncoder().encode('echo "<$GREETING $(id -un) $PWD>"\n'))
  await waitFor(() => out.text.includes('<hi-pty root /tmp>'), `pty env, got ${JSON.stringify(out.text)}`)
  await sbx.pty.kill(term.pid)
  await assert.rejects(term.wait(), CommandExitError)
})

test('connect re-attaches to a terminal after disconnect', async () => {
  const first = collector()
  const term = await sbx.pty.create({ cols: 80, rows: 24, onData: first.onData, timeoutMs: 0 })
  await sbx.pty.sendInput(term.pid, new TextEncoder().encode('echo before-$((1+1))\n'))
  await waitFor(() => first.text.includes('before-2'), 'output before disconnect')
  await term.disconnect()

  const second = collector()
  const again = await sbx.pty.connect(term.pid, { onData: second.onData, timeoutMs: 0 })
  assert.equal(again.pid, term.pid)
  await sbx.pty.sendInput(term.pid, new TextEncoder().encode('echo after-$((2+2))\n'))
  await waitFor(() => second.text.includes('after-4'), `output after reconnect, got ${JSON.stringify(second.text)}`)
  await sbx.pty.sendInput(term.pid, new TextEncoder().encode('exit 7\n'))
  await assert.rejects(again.wait(), (err) => {
    assert.ok(err instanceof CommandExitError)
    assert.equal(err.exitCode, 7)
    return true
  })
})

test('a burst of terminal output arrives complete and in order', async () => {
  const out = collector()
  const term = await sbx.pty.create({ cols: 120, rows: 30, onData: out.onData, timeoutMs: 0 })
  await sbx.pty.sendInput(term.pid, new TextEncoder().encode('stty -echo; seq 1 30000; echo "caf\u00e9 done"; exit 0\n'))
  const res = await term.wait()
  assert.equal(res.exitCode, 0)
  // The terminal turns \n into \r\n; the 30,000 lines must be there,
  // contiguous and in order.
  const expected = Array.from({ length: 30000 }, (_, i) => `${i + 1}\r\n`).join('')
  assert.ok(out.text.includes(`\r${expected}`) || out.text.includes(`\n${expected}`), `seq output incomplete (${out.text.length} chars)`)
  assert.ok(out.text.includes('caf\u00e9 done'), 'UTF-8 through the terminal')
})
