// "Secure" sandboxes: an access token set through POST /init (as the
// platform does), the SDK's X-Access-Token and signed upload/download URLs.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'

import { AuthenticationError } from 'e2b'

import { DEFAULT_USER, scratch, startEnvd } from '../lib/envd.js'

const TOKEN = randomBytes(24).toString('hex')

let envd
let secure
let insecure

before(async () => {
  envd = await startEnvd()
  const res = await envd.init({ accessToken: TOKEN })
  assert.equal(res.status, 204, await res.text())
  secure = envd.sandbox({ accessToken: TOKEN })
  insecure = envd.sandbox()
})
after(async () => {
  await envd?.stop()
})

async function uploadTo(url, content) {
  const form = new FormData()
  form.append('file', new Blob([content]), 'upload.txt')
  return fetch(url, { method: 'POST', body: form })
}

test('the secure sandbox works: RPCs and files carry the token', async () => {
  const dir = scratch('secure')
  assert.equal((await secure.commands.run('id -un')).stdout, `${DEFAULT_USER}\n`)
  await secure.files.write(`${dir}/s.txt`, 'secret content')
  assert.equal(await secure.files.read(`${dir}/s.txt`), 'secret content')
  assert.deepEqual((await secure.files.list(dir)).map((e) => e.name), ['s.txt'])
  assert.equal(await secure.isRunning(), true)
})

test('without the token: RPCs and file access are refused with AuthenticationError', async () => {
  const dir = scratch('secure')
  await secure.files.write(`${dir}/s.txt`, 'x')
  await assert.rejects(insecure.commands.run('true'), AuthenticationError)
  await assert.rejects(insecure.commands.list(), AuthenticationError)
  await assert.rejects(insecure.files.list(dir), AuthenticationError)
  await assert.rejects(insecure.files.read(`${dir}/s.txt`), (err) => {
    assert.ok(err instanceof AuthenticationError, `got ${err}`)
    assert.match(err.message, /missing signature query parameter/)
    return true
  })
  await assert.rejects(insecure.files.write(`${dir}/w.txt`, 'x'), AuthenticationError)
  // /health stays open, so the SDK can still probe the sandbox.
  assert.equal(await insecure.isRunning(), true)
  const wrong = envd.sandbox({ accessToken: 'not-the-token' })
  await assert.rejects(wrong.commands.run('true'), AuthenticationError)
  await assert.rejects(wrong.files.read(`${dir}/s.txt`), AuthenticationError)
})

test('signed upload and download URLs work without the token header', async () => {
  const dir = scratch('signed')
  const upUrl = await secure.uploadUrl(`${dir}/up.txt`)
  assert.match(upUrl, /[?&]signature=v1_/)
  const up = await uploadTo(upUrl, 'via signed url')
  assert.equal(up.status, 200, await up.clone().text())
  const written = await up.json()
  assert.equal(written[0].path, `${dir}/up.txt`)
  const info = await secure.files.getInfo(`${dir}/up.txt`)
  assert.equal(info.owner, DEFAULT_USER)

  const downUrl = await secure.downloadUrl(`${dir}/up.txt`)
  const down = await fetch(downUrl)
  assert.equal(down.status, 200)
  assert.equal(await down.text(), 'via signed url')
})

test('signed URLs for another user and with an expiration', async () => {
  const dir = scratch('signed')
  const upUrl = await secure.uploadUrl(`${dir}/root-owned.txt`, { user: 'root', useSignatureExpiration: 120 })
  assert.match(upUrl, /signature_expiration=\d+/)
  assert.match(upUrl, /username=root/)
  const up = await uploadTo(upUrl, 'owned by root')
  assert.equal(up.status, 200, await up.clone().text())
  assert.equal((await secure.files.getInfo(`${dir}/root-owned.txt`)).owner, 'root')
  const down = await fetch(await secure.downloadUrl(`${dir}/root-owned.txt`, { user: 'root', useSignatureExpiration: 120 }))
  assert.equal(down.status, 200)
  assert.equal(await down.text(), 'owned by root')
})

test('expired, tampered or misused signatures are refused with 401', async () => {
  const dir = scratch('signed')
  await secure.files.write(`${dir}/f.txt`, 'guarded')
  const expect401 = async (url, init, message) => {
    const res = await fetch(url, init)
    const body = await res.json()
    assert.equal(res.status, 401, JSON.stringify(body))
    assert.equal(body.code, 401)
    assert.equal(body.message, message)
  }
  await expect401(await secure.downloadUrl(`${dir}/f.txt`, { useSignatureExpiration: -30 }), {}, 'signature is already expired')

  const good = new URL(await secure.downloadUrl(`${dir}/f.txt`))
  const tampered = new URL(good)
  tampered.searchParams.set('signature', good.searchParams.get('signature').slice(0, -2) + 'AA')
  await expect401(tampered, {}, 'invalid signature')

  const otherPath = new URL(good)
  otherPath.searchParams.set('path', `${dir}/other.txt`)
  await expect401(otherPath, {}, 'invalid signature')

  // A read signature does not allow a write.
  const form = new FormData()
  form.append('file', new Blob(['overwrite']), 'f.txt')
  await expect401(good, { method: 'POST', body: form }, 'invalid signature')
  assert.equal(await secure.files.read(`${dir}/f.txt`), 'guarded')

  // A wrong token header is refused even with a valid signature.
  await expect401(good, { headers: { 'X-Access-Token': 'wrong' } }, 'access token present in header but does not match')
})

test('the platform re-sending the same token on /init keeps it in force', async () => {
  const res = await envd.init({ accessToken: TOKEN, defaultUser: DEFAULT_USER })
  assert.equal(res.status, 204)
  assert.equal((await secure.commands.run('echo still')).stdout, 'still\n')
  const other = await envd.init({ accessToken: 'a-different-token' })
  assert.equal(other.status, 401)
  assert.equal((await secure.commands.run('echo unchanged')).stdout, 'unchanged\n')
})
