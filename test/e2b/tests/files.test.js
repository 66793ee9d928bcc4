// sandbox.files.* of the official E2B SDK against envd: every write mode,
// every read format, listing, stat, directories, rename, remove, metadata.
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'

import { FileNotFoundError, InvalidArgumentError, NotFoundError } from 'e2b'

import { DEFAULT_USER, scratch, startEnvd } from '../lib/envd.js'

let envd
let sbx

before(async () => {
  envd = await startEnvd()
  sbx = envd.sandbox()
})
after(async () => {
  await envd?.stop()
})

const sha = (b) => createHash('sha256').update(b).digest('hex')

async function streamToBuffer(stream) {
  const chunks = []
  for await (const c of stream) chunks.push(Buffer.from(c))
  return Buffer.concat(chunks)
}

function readableOf(buf, chunk = 64 * 1024) {
  let off = 0
  return new ReadableStream({
    pull(ctrl) {
      if (off >= buf.length) return ctrl.close()
      ctrl.enqueue(new Uint8Array(buf.subarray(off, off + chunk)))
      off += chunk
    },
  })
}

describe('files.write', () => {
  test('single file, multipart (the default), string data', async () => {
    const dir = scratch()
    const info = await sbx.files.write(`${dir}/hello.txt`, 'Hello, envd!\n')
    assert.equal(info.name, 'hello.txt')
    assert.equal(info.path, `${dir}/hello.txt`)
    assert.equal(info.type, 'file')
    assert.equal(await sbx.files.read(`${dir}/hello.txt`), 'Hello, envd!\n')
    // Parent directories are created and everything belongs to the user.
    const st = await sbx.files.getInfo(dir)
    assert.equal(st.type, 'dir')
    assert.equal(st.owner, DEFAULT_USER)
    const f = await sbx.files.getInfo(`${dir}/hello.txt`)
    assert.equal(f.owner, DEFAULT_USER)
    assert.equal(f.group, DEFAULT_USER)
    assert.equal(f.mode, 0o644)
    assert.equal(f.permissions, '-rw-r--r--')
  })

  test('multiple files in one multipart request', async () => {
    const dir = scratch()
    const res = await sbx.files.write([
      { path: `${dir}/a.txt`, data: 'alpha' },
      { path: `${dir}/sub/b.bin`, data: new Uint8Array([0, 1, 2, 255]) },
      { path: `${dir}/c.txt`, data: new Blob(['gamma']) },
    ])
    assert.ok(Array.isArray(res))
    assert.deepEqual(res.map((e) => e.path), [`${dir}/a.txt`, `${dir}/sub/b.bin`, `${dir}/c.txt`])
    assert.deepEqual(res.map((e) => e.name), ['a.txt', 'b.bin', 'c.txt'])
    assert.equal(await sbx.files.read(`${dir}/a.txt`), 'alpha')
    assert.deepEqual([...(await sbx.files.read(`${dir}/sub/b.bin`, { format: 'bytes' }))], [0, 1, 2, 255])
    assert.equal(await sbx.files.read(`${dir}/c.txt`), 'gamma')
  })

  test('application/octet-stream (useOctetStream)', async () => {
    const dir = scratch()
    const data = randomBytes(300_000)
    const info = await sbx.files.write(`${dir}/raw.bin`, data.buffer.slice(data.byteOffset, data.byteOffset + data.length), { useOctetStream: true })
    assert.equal(info.path, `${dir}/raw.bin`)
    const back = Buffer.from(await sbx.files.read(`${dir}/raw.bin`, { format: 'bytes' }))
    assert.equal(sha(back), sha(data))
  })

  test('a ReadableStream is streamed as octet-stream', async () => {
    const dir = scratch()
    const data = randomBytes(3 * 1024 * 1024 + 17)
    const info = await sbx.files.write(`${dir}/streamed.bin`, readableOf(data))
    assert.equal(info.name, 'streamed.bin')
    const st = await sbx.files.getInfo(`${dir}/streamed.bin`)
    assert.equal(st.size, data.length)
    assert.equal(sha(Buffer.from(await sbx.files.read(`${dir}/streamed.bin`, { format: 'bytes' }))), sha(data))
  })

  test('gzip: the request body is gzip-compressed', async () => {
    const dir = scratch()
    const text = 'compress me '.repeat(50_000)
    const info = await sbx.files.write(`${dir}/gz.txt`, text, { gzip: true })
    assert.equal(info.path, `${dir}/gz.txt`)
    assert.equal(await sbx.files.read(`${dir}/gz.txt`), text)
    assert.equal((await sbx.files.getInfo(`${dir}/gz.txt`)).size, text.length)
  })

  test('gzip with several files (one octet-stream request each)', async () => {
    const dir = scratch()
    const res = await sbx.files.write([
      { path: `${dir}/one.txt`, data: 'one '.repeat(1000) },
      { path: `${dir}/two.txt`, data: 'two '.repeat(1000) },
    ], { gzip: true })
    assert.deepEqual(res.map((e) => e.name).sort(), ['one.txt', 'two.txt'])
    assert.equal(await sbx.files.read(`${dir}/two.txt`), 'two '.repeat(1000))
  })

  test('metadata is stored and returned by write and getInfo', async () => {
    const dir = scratch()
    const meta = { owner: 'team-a', 'Content-Kind': 'report v1' }
    const info = await sbx.files.write(`${dir}/meta.txt`, 'with metadata', { metadata: meta })
    // Keys are case-insensitive header names: envd lower-cases them.
    assert.deepEqual(info.metadata, { owner: 'team-a', 'content-kind': 'report v1' })
    const st = await sbx.files.getInfo(`${dir}/meta.txt`)
    assert.deepEqual(st.metadata, { owner: 'team-a', 'content-kind': 'report v1' })
    // Octet-stream uploads carry metadata too, and a rewrite replaces the set.
    const again = await sbx.files.write(`${dir}/meta.txt`, 'v2', { metadata: { rev: '2' }, useOctetStream: true })
    assert.deepEqual(again.metadata, { rev: '2' })
    assert.deepEqual((await sbx.files.getInfo(`${dir}/meta.txt`)).metadata, { rev: '2' })
    const plain = await sbx.files.write(`${dir}/meta.txt`, 'v3')
    assert.equal(plain.metadata, undefined)
    assert.equal((await sbx.files.getInfo(`${dir}/meta.txt`)).metadata, undefined)
    // Listing shows metadata as well.
    await sbx.files.write(`${dir}/listed.txt`, 'x', { metadata: { k: 'v' } })
    const listed = (await sbx.files.list(dir)).find((e) => e.name === 'listed.txt')
    assert.deepEqual(listed.metadata, { k: 'v' })
  })

  test('overwrite replaces content and keeps the mode', async () => {
    const dir = scratch()
    await sbx.files.write(`${dir}/over.sh`, '#!/bin/sh\necho v1\n')
    await sbx.commands.run(`chmod 750 ${dir}/over.sh`)
    await sbx.files.write(`${dir}/over.sh`, '#!/bin/sh\necho v2\n')
    assert.equal((await sbx.commands.run(`${dir}/over.sh`)).stdout, 'v2\n')
    assert.equal((await sbx.files.getInfo(`${dir}/over.sh`)).mode, 0o750)
  })

  test('relative and ~ paths resolve against the user home; user picks the owner', async () => {
    const name = `rel-${process.pid}-${Date.now()}.txt`
    const info = await sbx.files.write(name, 'relative')
    assert.equal(info.path, `/home/${DEFAULT_USER}/${name}`)
    assert.equal(await sbx.files.read(`~/${name}`), 'relative')
    const asRoot = await sbx.files.write(`~/${name}`, 'root home', { user: 'root' })
    assert.equal(asRoot.path, `/root/${name}`)
    assert.equal((await sbx.files.getInfo(`/root/${name}`)).owner, 'root')
    await sbx.files.remove(`/root/${name}`, { user: 'root' })
    await sbx.files.remove(name)
  })
})

describe('files.read', () => {
  let dir
  let data
  before(async () => {
    dir = scratch()
    data = randomBytes(2 * 1024 * 1024 + 3)
    await sbx.files.write(`${dir}/data.bin`, new Blob([data]))
    await sbx.files.write(`${dir}/text.txt`, 'line 1\nline 2\n\u00e9\u20ac\n')
    await sbx.files.write(`${dir}/empty.txt`, '')
  })

  test('text', async () => {
    assert.equal(await sbx.files.read(`${dir}/text.txt`), 'line 1\nline 2\n\u00e9\u20ac\n')
    assert.equal(await sbx.files.read(`${dir}/text.txt`, { format: 'text' }), 'line 1\nline 2\n\u00e9\u20ac\n')
  })

  test('bytes', async () => {
    const b = await sbx.files.read(`${dir}/data.bin`, { format: 'bytes' })
    assert.ok(b instanceof Uint8Array)
    assert.equal(b.length, data.length)
    assert.equal(sha(Buffer.from(b)), sha(data))
  })

  test('blob', async () => {
    const b = await sbx.files.read(`${dir}/data.bin`, { format: 'blob' })
    assert.ok(b instanceof Blob)
    assert.equal(sha(Buffer.from(await b.arrayBuffer())), sha(data))
  })

  test('stream', async () => {
    const s = await sbx.files.read(`${dir}/data.bin`, { format: 'stream' })
    assert.equal(sha(await streamToBuffer(s)), sha(data))
  })

  test('gzip in every format', async () => {
    assert.equal(sha(Buffer.from(await sbx.files.read(`${dir}/data.bin`, { format: 'bytes', gzip: true }))), sha(data))
    assert.equal(await sbx.files.read(`${dir}/text.txt`, { gzip: true }), 'line 1\nline 2\n\u00e9\u20ac\n')
    const s = await sbx.files.read(`${dir}/data.bin`, { format: 'stream', gzip: true })
    assert.equal(sha(await streamToBuffer(s)), sha(data))
  })

  test('the raw HTTP response is gzip-encoded when asked for', async () => {
    const res = await fetch(`${envd.url}/files?path=${encodeURIComponent(`${dir}/text.txt`)}`, { headers: { 'Accept-Encoding': 'gzip' } })
    assert.equal(res.status, 200)
    assert.equal(res.headers.get('content-encoding'), 'gzip')
    assert.equal(await res.text(), 'line 1\nline 2\n\u00e9\u20ac\n')
  })

  test('an empty file reads as empty in every format', async () => {
    assert.equal(await sbx.files.read(`${dir}/empty.txt`), '')
    assert.equal((await sbx.files.read(`${dir}/empty.txt`, { format: 'bytes' })).length, 0)
    assert.equal((await sbx.files.read(`${dir}/empty.txt`, { format: 'blob' })).size, 0)
  })

  test('a missing file is FileNotFoundError', async () => {
    await assert.rejects(sbx.files.read(`${dir}/missing.txt`), (err) => {
      assert.ok(err instanceof FileNotFoundError, `got ${err?.constructor?.name}: ${err}`)
      assert.ok(err instanceof NotFoundError)
      assert.match(err.message, /does not exist/)
      return true
    })
  })

  test('a directory is InvalidArgumentError', async () => {
    await assert.rejects(sbx.files.read(dir), InvalidArgumentError)
  })
})

describe('directories and entries', () => {
  test('list with depth, in lexical order, with entry fields', async () => {
    const dir = scratch()
    await sbx.files.write([
      { path: `${dir}/b.txt`, data: 'bb' },
      { path: `${dir}/a/x.txt`, data: 'xxx' },
      { path: `${dir}/a/deeper/y.txt`, data: 'y' },
      { path: `${dir}/c/z.txt`, data: 'z' },
    ])
    const d1 = await sbx.files.list(dir)
    assert.deepEqual(d1.map((e) => [e.name, e.type, e.path]), [
      ['a', 'dir', `${dir}/a`],
      ['b.txt', 'file', `${dir}/b.txt`],
      ['c', 'dir', `${dir}/c`],
    ])
    const b = d1[1]
    assert.equal(b.size, 2)
    assert.equal(b.owner, DEFAULT_USER)
    assert.equal(b.permissions, '-rw-r--r--')
    assert.ok(b.modifiedTime instanceof Date && Math.abs(Date.now() - b.modifiedTime.getTime()) < 120_000)
    assert.equal(d1[0].permissions, 'drwxr-xr-x')

    const d2 = await sbx.files.list(dir, { depth: 2 })
    assert.deepEqual(d2.map((e) => e.path.slice(dir.length + 1)), ['a', 'a/deeper', 'a/x.txt', 'b.txt', 'c', 'c/z.txt'])
    const d3 = await sbx.files.list(dir, { depth: 3 })
    assert.ok(d3.some((e) => e.path === `${dir}/a/deeper/y.txt`))
  })

  test('list of a missing directory is FileNotFoundError, of a file InvalidArgumentError', async () => {
    const dir = scratch()
    await assert.rejects(sbx.files.list(dir), FileNotFoundError)
    await sbx.files.write(`${dir}/f`, 'f')
    await assert.rejects(sbx.files.list(`${dir}/f`), InvalidArgumentError)
  })

  test('exists', async () => {
    const dir = scratch()
    assert.equal(await sbx.files.exists(dir), false)
    await sbx.files.write(`${dir}/e.txt`, 'e')
    assert.equal(await sbx.files.exists(dir), true)
    assert.equal(await sbx.files.exists(`${dir}/e.txt`), true)
    assert.equal(await sbx.files.exists(`${dir}/nope.txt`), false)
  })

  test('getInfo of files, directories and symlinks', async () => {
    const dir = scratch()
    await sbx.files.write(`${dir}/target.txt`, '12345')
    await sbx.commands.run(`ln -s target.txt ${dir}/link && mkdir ${dir}/d`)
    const f = await sbx.files.getInfo(`${dir}/target.txt`)
    assert.equal(f.name, 'target.txt')
    assert.equal(f.type, 'file')
    assert.equal(f.size, 5)
    assert.equal(f.symlinkTarget, undefined)
    const l = await sbx.files.getInfo(`${dir}/link`)
    assert.equal(l.type, 'file')
    assert.equal(l.symlinkTarget, `${dir}/target.txt`)
    assert.equal(l.permissions, 'Lrwxrwxrwx')
    const d = await sbx.files.getInfo(`${dir}/d`)
    assert.equal(d.type, 'dir')
    assert.equal(d.mode, 0o755)
    await assert.rejects(sbx.files.getInfo(`${dir}/missing`), FileNotFoundError)
  })

  test('makeDir creates parents, returns false when the directory exists', async () => {
    const dir = scratch()
    assert.equal(await sbx.files.makeDir(`${dir}/x/y/z`), true)
    assert.equal(await sbx.files.makeDir(`${dir}/x/y/z`), false)
    const z = await sbx.files.getInfo(`${dir}/x/y/z`)
    assert.equal(z.type, 'dir')
    assert.equal(z.owner, DEFAULT_USER)
    await sbx.files.write(`${dir}/file`, 'f')
    await assert.rejects(sbx.files.makeDir(`${dir}/file`), InvalidArgumentError)
  })

  test('rename moves files and directories', async () => {
    const dir = scratch()
    await sbx.files.write(`${dir}/old.txt`, 'moving')
    const moved = await sbx.files.rename(`${dir}/old.txt`, `${dir}/new/place.txt`)
    assert.equal(moved.path, `${dir}/new/place.txt`)
    assert.equal(moved.name, 'place.txt')
    assert.equal(moved.type, 'file')
    assert.equal(await sbx.files.exists(`${dir}/old.txt`), false)
    assert.equal(await sbx.files.read(`${dir}/new/place.txt`), 'moving')
    const dmoved = await sbx.files.rename(`${dir}/new`, `${dir}/renamed`)
    assert.equal(dmoved.type, 'dir')
    assert.equal(await sbx.files.read(`${dir}/renamed/place.txt`), 'moving')
    await assert.rejects(sbx.files.rename(`${dir}/missing`, `${dir}/x`), FileNotFoundError)
  })

  test('remove deletes files and trees; a missing path is not an error', async () => {
    const dir = scratch()
    await sbx.files.write([{ path: `${dir}/t/1.txt`, data: '1' }, { path: `${dir}/t/sub/2.txt`, data: '2' }, { path: `${dir}/single.txt`, data: 's' }])
    await sbx.files.remove(`${dir}/single.txt`)
    assert.equal(await sbx.files.exists(`${dir}/single.txt`), false)
    await sbx.files.remove(`${dir}/t`)
    assert.equal(await sbx.files.exists(`${dir}/t`), false)
    await sbx.files.remove(`${dir}/t`)
  })

  test('writing over a directory is InvalidArgumentError and leaves it intact', async () => {
    const dir = scratch()
    await sbx.files.makeDir(`${dir}/d`)
    await assert.rejects(sbx.files.write(`${dir}/d`, 'x'), InvalidArgumentError)
    await assert.rejects(sbx.files.write(`${dir}/d`, 'x', { useOctetStream: true }), InvalidArgumentError)
    assert.equal((await sbx.files.getInfo(`${dir}/d`)).type, 'dir')
  })

  test('list of / shows the system directories', async () => {
    const root = await sbx.files.list('/')
    const byName = Object.fromEntries(root.map((e) => [e.name, e]))
    for (const d of ['etc', 'home', 'tmp', 'usr']) {
      assert.equal(byName[d]?.type, 'dir', `${d} in ${root.map((e) => e.name)}`)
      assert.equal(byName[d].path, `/${d}`)
    }
  })

  test('a ~user path is InvalidArgumentError', async () => {
    await assert.rejects(sbx.files.getInfo('~root/x'), InvalidArgumentError)
    await assert.rejects(sbx.files.read('~root/x'), InvalidArgumentError)
  })
})
