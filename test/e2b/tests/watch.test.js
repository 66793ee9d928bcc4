// sandbox.files.watchDir of the official E2B SDK against envd.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'

import { FileNotFoundError, FilesystemEventType, InvalidArgumentError, TimeoutError } from 'e2b'

import { scratch, startEnvd, waitFor } from '../lib/envd.js'

let envd
let sbx

before(async () => {
  envd = await startEnvd()
  sbx = envd.sandbox()
})
after(async () => {
  await envd?.stop()
})

/** Starts a watch that records its events. */
async function watch(dir, opts = {}) {
  const events = []
  let exitErr = null
  let exited = false
  const handle = await sbx.files.watchDir(dir, (e) => events.push(e), {
    timeoutMs: 0,
    ...opts,
    onExit: (err) => {
      exited = true
      exitErr = err ?? null
    },
  })
  return {
    events,
    handle,
    get exited() {
      return exited
    },
    get exitErr() {
      return exitErr
    },
    has: (name, type) => events.some((e) => e.name === name && e.type === type),
  }
}

test('files.write produces a WRITE event for the written file', async () => {
  const dir = scratch('watch')
  await sbx.files.makeDir(dir)
  const w = await watch(dir)
  await sbx.files.write(`${dir}/written.txt`, 'hello watcher')
  await waitFor(() => w.has('written.txt', FilesystemEventType.WRITE), `WRITE event, got ${JSON.stringify(w.events)}`)
  assert.ok(w.has('written.txt', FilesystemEventType.CREATE), `CREATE before WRITE, got ${JSON.stringify(w.events)}`)
  // Upload staging files are never reported.
  assert.ok(!w.events.some((e) => e.name.startsWith('.envd-tmp-')), JSON.stringify(w.events))
  // An overwrite is reported as well.
  w.events.length = 0
  await sbx.files.write(`${dir}/written.txt`, 'again')
  await waitFor(() => w.has('written.txt', FilesystemEventType.WRITE), 'WRITE on overwrite')
  await w.handle.stop()
})

test('files.write into a watched directory gives E2B\'s exact events: create, chmod, write; an overwrite chmod, write', async () => {
  const dir = scratch('watch-exact')
  await sbx.files.makeDir(dir)
  const w = await watch(dir)
  const of = (name) => w.events.filter((e) => e.name === name).map((e) => e.type)
  // A later write to another file marks the end: a stream keeps the order.
  const settle = async (mark) => {
    await sbx.files.write(`${dir}/${mark}`, '')
    await waitFor(() => w.has(mark, FilesystemEventType.WRITE), `WRITE of ${mark}, got ${JSON.stringify(w.events)}`)
  }
  await sbx.files.write(`${dir}/counted.txt`, 'first')
  await settle('mark1')
  assert.deepEqual(of('counted.txt'), [FilesystemEventType.CREATE, FilesystemEventType.CHMOD, FilesystemEventType.WRITE])
  w.events.length = 0
  await sbx.files.write(`${dir}/counted.txt`, 'second, longer')
  await settle('mark2')
  assert.deepEqual(of('counted.txt'), [FilesystemEventType.CHMOD, FilesystemEventType.WRITE])
  assert.ok(!w.events.some((e) => e.name.startsWith('.envd-tmp-')), JSON.stringify(w.events))
  await w.handle.stop()
})

test('create, chmod, rename and remove events with names relative to the watched directory', async () => {
  const dir = scratch('watch')
  await sbx.files.makeDir(dir)
  const w = await watch(dir)
  await sbx.files.makeDir(`${dir}/newdir`)
  await sbx.commands.run(`touch ${dir}/f && chmod 600 ${dir}/f && mv ${dir}/f ${dir}/g && rm ${dir}/g`)
  await waitFor(() => w.has('g', FilesystemEventType.REMOVE), `REMOVE event, got ${JSON.stringify(w.events)}`)
  assert.ok(w.has('newdir', FilesystemEventType.CREATE))
  assert.ok(w.has('f', FilesystemEventType.CREATE))
  assert.ok(w.has('f', FilesystemEventType.CHMOD))
  assert.ok(w.has('f', FilesystemEventType.RENAME))
  assert.ok(w.has('g', FilesystemEventType.CREATE))
  await w.handle.stop()
})

test('non-recursive watch ignores nested changes; recursive sees them', async () => {
  const dir = scratch('watch')
  await sbx.files.makeDir(`${dir}/sub/deep`)
  const flat = await watch(dir)
  const rec = await watch(dir, { recursive: true })
  await sbx.files.write(`${dir}/sub/deep/nested.txt`, 'nested')
  await sbx.files.write(`${dir}/top.txt`, 'top')
  await waitFor(() => rec.has('sub/deep/nested.txt', FilesystemEventType.WRITE), `recursive WRITE, got ${JSON.stringify(rec.events)}`)
  await waitFor(() => flat.has('top.txt', FilesystemEventType.WRITE), 'flat WRITE of top.txt')
  assert.ok(rec.has('top.txt', FilesystemEventType.WRITE))
  assert.ok(!flat.events.some((e) => e.name.includes('nested')), `flat watch saw nested events: ${JSON.stringify(flat.events)}`)

  // A directory created after the watch started is watched too. Entries
  // made in it before its watch was in place are guaranteed a CREATE (envd
  // scans the new directory, rpc.md §9.2), not a WRITE; once that is seen,
  // the directory is watched and a rewrite gives the WRITE.
  await sbx.files.write(`${dir}/later/inside.txt`, 'later')
  await waitFor(() => rec.has('later', FilesystemEventType.CREATE), `CREATE of the new directory, got ${JSON.stringify(rec.events)}`)
  await waitFor(() => rec.has('later/inside.txt', FilesystemEventType.CREATE), `CREATE in a new directory, got ${JSON.stringify(rec.events)}`)
  rec.events.length = 0
  await sbx.files.write(`${dir}/later/inside.txt`, 'later, again')
  await waitFor(() => rec.has('later/inside.txt', FilesystemEventType.WRITE), `WRITE in the new directory, got ${JSON.stringify(rec.events)}`)
  await flat.handle.stop()
  await rec.handle.stop()
})

test('includeEntry attaches entry info to create and write events', async () => {
  const dir = scratch('watch')
  await sbx.files.makeDir(dir)
  const w = await watch(dir, { includeEntry: true })
  const plain = await watch(dir)
  await sbx.files.write(`${dir}/entry.txt`, '123456')
  await waitFor(() => w.has('entry.txt', FilesystemEventType.WRITE), 'WRITE with entry')
  const ev = w.events.find((e) => e.name === 'entry.txt' && e.type === FilesystemEventType.WRITE)
  assert.ok(ev.entry, `event without entry: ${JSON.stringify(ev)}`)
  assert.equal(ev.entry.name, 'entry.txt')
  assert.equal(ev.entry.path, `${dir}/entry.txt`)
  assert.equal(ev.entry.type, 'file')
  await waitFor(() => plain.has('entry.txt', FilesystemEventType.WRITE), 'WRITE without entry')
  assert.ok(plain.events.every((e) => e.entry === undefined), 'entry info sent without includeEntry')
  await sbx.files.remove(`${dir}/entry.txt`)
  await waitFor(() => w.has('entry.txt', FilesystemEventType.REMOVE), 'REMOVE')
  assert.equal(w.events.find((e) => e.type === FilesystemEventType.REMOVE).entry, undefined)
  await w.handle.stop()
  await plain.handle.stop()
})

test('allowNetworkMounts is accepted on a local directory', async () => {
  const dir = scratch('watch')
  await sbx.files.makeDir(dir)
  const w = await watch(dir, { allowNetworkMounts: true })
  await sbx.files.write(`${dir}/n.txt`, 'n')
  await waitFor(() => w.has('n.txt', FilesystemEventType.WRITE), 'WRITE with allowNetworkMounts')
  await w.handle.stop()
})

test('stop ends the watch; later changes are not delivered', async () => {
  const dir = scratch('watch')
  await sbx.files.makeDir(dir)
  const w = await watch(dir)
  await w.handle.stop()
  await waitFor(() => w.exited, 'onExit after stop')
  await sbx.files.write(`${dir}/after-stop.txt`, 'x')
  await new Promise((r) => setTimeout(r, 300))
  assert.deepEqual(w.events, [])
})

test('timeoutMs ends the watch stream', async () => {
  const dir = scratch('watch')
  await sbx.files.makeDir(dir)
  const w = await watch(dir, { timeoutMs: 500 })
  await waitFor(() => w.exited, 'watch to end at its deadline')
  assert.ok(w.exitErr instanceof TimeoutError, `deadline should surface as TimeoutError, got ${w.exitErr}`)
})

test('watching a missing directory is FileNotFoundError, a file InvalidArgumentError', async () => {
  const dir = scratch('watch')
  await assert.rejects(sbx.files.watchDir(dir, () => {}), FileNotFoundError)
  await sbx.files.write(`${dir}/file`, 'f')
  await assert.rejects(sbx.files.watchDir(`${dir}/file`, () => {}), InvalidArgumentError)
})
