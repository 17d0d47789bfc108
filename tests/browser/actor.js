// The zbase actor formats (docs/ACTOR-FORMATS.md) with WebCrypto alone: no library. Given the
// Rust crate's test vectors, it opens what Rust produced and produces the same bytes again.
// It decides nothing: each check records what the browser computed, and the Rust test asserts.
'use strict';

const u32 = (n) => { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, n); return b; };
const subtle = crypto.subtle;

// HKDF-SHA-256 to an AES-256-GCM key, as the formats derive every AES key.
async function aesKey(ikm, salt, info) {
  const base = await subtle.importKey('raw', ikm, 'HKDF', false, ['deriveKey']);
  return subtle.deriveKey(
    { name: 'HKDF', hash: 'SHA-256', salt, info: ascii(info) },
    base, { name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
}

// An OKP private key (Ed25519 or X25519) from its raw secret and public halves.
function okpPrivate(crv, secret, pub, usages) {
  const alg = crv === 'Ed25519' ? { name: 'Ed25519' } : { name: 'X25519' };
  return subtle.importKey('jwk', { kty: 'OKP', crv, d: secret, x: pub }, alg, false, usages);
}

const actor = {
  async check(v) {
    const record = {};
    const note = async (name, fn) => {
      try { record[name] = await fn(); } catch (e) { record[name] = 'error: ' + e; }
    };
    const resource = ascii(v.resource);

    // Envelope: open it, and seal the same snapshot with the same nonce to the same bytes.
    const envelope = b64uDecode(v.envelope.envelope);
    const envKey = await aesKey(b64uDecode(v.contentKey.key), new Uint8Array(0), 'zbase/v1/envelope');
    const envAad = concat(envelope.slice(0, 8), resource);
    await note('envelopeOpens', async () => b64uEncode(new Uint8Array(await subtle.decrypt(
      { name: 'AES-GCM', iv: envelope.slice(8, 20), additionalData: envAad }, envKey, envelope.slice(20)))));
    await note('envelopeMade', async () => {
      const header = concat(ascii('zbe1'), u32(v.contentKey.epoch), b64uDecode(v.envelope.nonce));
      const body = await subtle.encrypt(
        { name: 'AES-GCM', iv: b64uDecode(v.envelope.nonce), additionalData: concat(header.slice(0, 8), resource) },
        envKey, b64uDecode(v.envelope.snapshot));
      return b64uEncode(concat(header, new Uint8Array(body)));
    });
    await note('envelopeOtherResourceRefused', async () => {
      try {
        await subtle.decrypt({ name: 'AES-GCM', iv: envelope.slice(8, 20),
          additionalData: concat(envelope.slice(0, 8), ascii('A'.repeat(43))) }, envKey, envelope.slice(20));
        return false;
      } catch (e) { return e.name === 'OperationError'; }
    });

    // Sealed key: the member opens it; the same ephemeral secret and nonce seal it again.
    const sealed = b64uDecode(v.sealedKey.sealed);
    const member = v.member;
    const ephemeralPublic = sealed.slice(4, 36);
    const memberPublic = b64uDecode(member.sealingPublic);
    const sealAad = concat(ascii('zbs1'), resource, u32(v.contentKey.epoch));
    const salt = concat(ephemeralPublic, memberPublic);
    await note('sealedKeyOpens', async () => {
      const mine = await okpPrivate('X25519', member.sealingSecret, member.sealingPublic, ['deriveBits']);
      const theirs = await subtle.importKey('raw', ephemeralPublic, { name: 'X25519' }, false, []);
      const shared = await subtle.deriveBits({ name: 'X25519', public: theirs }, mine, 256);
      const key = await aesKey(new Uint8Array(shared), salt, 'zbase/v1/seal');
      return b64uEncode(new Uint8Array(await subtle.decrypt(
        { name: 'AES-GCM', iv: sealed.slice(36, 48), additionalData: sealAad }, key, sealed.slice(48))));
    });
    await note('sealedKeyMade', async () => {
      const eph = await okpPrivate('X25519', v.sealedKey.ephemeralSecret, b64uEncode(ephemeralPublic), ['deriveBits']);
      const recipient = await subtle.importKey('raw', memberPublic, { name: 'X25519' }, false, []);
      const shared = await subtle.deriveBits({ name: 'X25519', public: recipient }, eph, 256);
      const key = await aesKey(new Uint8Array(shared), salt, 'zbase/v1/seal');
      const nonce = b64uDecode(v.sealedKey.nonce);
      const body = await subtle.encrypt({ name: 'AES-GCM', iv: nonce, additionalData: sealAad },
        key, b64uDecode(v.contentKey.key));
      return b64uEncode(concat(ascii('zbs1'), ephemeralPublic, nonce, new Uint8Array(body)));
    });

    // Operation: the owner's signature verifies, its id is SHA-256 of the token, and signing
    // the same bytes with the owner's key gives the same token (Ed25519 is deterministic).
    const token = b64uDecode(v.operation.token);
    const signed = token.slice(0, token.length - 64);
    const signature = token.slice(token.length - 64);
    const owner = v.owner;
    await note('operationVerifies', async () => {
      const key = await subtle.importKey('raw', b64uDecode(owner.actorId), { name: 'Ed25519' }, false, ['verify']);
      return subtle.verify({ name: 'Ed25519' }, key, signature, signed);
    });
    await note('operationAlteredRefused', async () => {
      const key = await subtle.importKey('raw', b64uDecode(owner.actorId), { name: 'Ed25519' }, false, ['verify']);
      const altered = signed.slice();
      altered[altered.length - 1] ^= 1;
      return !(await subtle.verify({ name: 'Ed25519' }, key, signature, altered));
    });
    await note('operationId', async () => b64uEncode(new Uint8Array(await subtle.digest('SHA-256', token))));
    await note('operationMade', async () => {
      const header = concat(ascii('zbo1'), resource, b64uDecode(owner.actorId));
      const clock = new Uint8Array(8);
      new DataView(clock.buffer).setBigUint64(0, BigInt(v.operation.clock));
      const deps = v.operation.deps.map(b64uDecode);
      const count = new Uint8Array(2);
      new DataView(count.buffer).setUint16(0, deps.length);
      const payload = b64uDecode(v.operation.payload);
      const body = concat(header, clock, count, ...deps, u32(payload.length), payload);
      const key = await okpPrivate('Ed25519', owner.signingSecret, owner.actorId, ['sign']);
      const sig = new Uint8Array(await subtle.sign({ name: 'Ed25519' }, key, body));
      return b64uEncode(concat(body, sig));
    });

    // Public identity: the member's signature of its own sealing key verifies, and signing it
    // again gives the same bytes; the owner's signature does not stand for the member's key.
    const proofMessage = (who) => concat(ascii('zbase sealing key v1'), b64uDecode(who.actorId),
      b64uDecode(who.sealingPublic));
    await note('sealingProofVerifies', async () => {
      const key = await subtle.importKey('raw', b64uDecode(member.actorId), { name: 'Ed25519' }, false, ['verify']);
      return subtle.verify({ name: 'Ed25519' }, key, b64uDecode(member.sealingProof), proofMessage(member));
    });
    await note('sealingProofOfAnotherRefused', async () => {
      const key = await subtle.importKey('raw', b64uDecode(member.actorId), { name: 'Ed25519' }, false, ['verify']);
      return !(await subtle.verify({ name: 'Ed25519' }, key, b64uDecode(owner.sealingProof), proofMessage(member)));
    });
    await note('sealingProofMade', async () => {
      const key = await okpPrivate('Ed25519', member.signingSecret, member.actorId, ['sign']);
      return b64uEncode(new Uint8Array(await subtle.sign({ name: 'Ed25519' }, key, proofMessage(member))));
    });

    // Bundle: the same tokens make the same bytes.
    await note('bundleMade', async () => {
      const tokens = v.bundle.tokens.map(b64uDecode);
      return b64uEncode(concat(ascii('zbb1'), u32(tokens.length), ...tokens.flatMap((t) => [u32(t.length), t])));
    });
    // Grant: the owner's operation names the member with the member's own proof of its key.
    const grantToken = b64uDecode(v.grant.token);
    await note('grantVerifies', async () => {
      const key = await subtle.importKey('raw', b64uDecode(owner.actorId), { name: 'Ed25519' }, false, ['verify']);
      return subtle.verify({ name: 'Ed25519' }, key, grantToken.slice(grantToken.length - 64),
        grantToken.slice(0, grantToken.length - 64));
    });
    await note('grantProofVerifies', async () => {
      const grant = JSON.parse(new TextDecoder().decode(b64uDecode(v.grant.payload)));
      const key = await subtle.importKey('raw', b64uDecode(grant.actor), { name: 'Ed25519' }, false, ['verify']);
      return grant.op === 'grant' && grant.actor === member.actorId && subtle.verify({ name: 'Ed25519' }, key,
        b64uDecode(grant.proof), proofMessage({ actorId: grant.actor, sealingPublic: grant.sealing }));
    });

    // Mailbox: the member derives it from its X25519 secret and the owner's public key alone,
    // and opens the keyring the owner left there.
    const mb = v.mailbox;
    await note('mailboxDerived', async () => {
      const mine = await okpPrivate('X25519', member.sealingSecret, member.sealingPublic, ['deriveBits']);
      const theirs = await subtle.importKey('raw', b64uDecode(owner.sealingPublic), { name: 'X25519' }, false, []);
      const shared = await subtle.deriveBits({ name: 'X25519', public: theirs }, mine, 256);
      const base = await subtle.importKey('raw', shared, 'HKDF', false, ['deriveBits']);
      const salt = concat(resource, b64uDecode(member.actorId));
      const derive = async (info) => b64uEncode(new Uint8Array(await subtle.deriveBits(
        { name: 'HKDF', hash: 'SHA-256', salt, info: ascii(info) }, base, 256)));
      return {
        id: await derive('zbase/v1/mailbox/id'),
        access: await derive('zbase/v1/mailbox/access'),
        key: await derive('zbase/v1/mailbox/key'),
      };
    });
    await note('mailboxOpens', async () => {
      const snapshot = b64uDecode(mb.snapshot);
      const key = await aesKey(b64uDecode(mb.key), new Uint8Array(0), 'zbase/v1/envelope');
      const plain = new Uint8Array(await subtle.decrypt({ name: 'AES-GCM', iv: snapshot.slice(8, 20),
        additionalData: concat(snapshot.slice(0, 8), ascii(mb.id)) }, key, snapshot.slice(20)));
      const keyring = JSON.parse(new TextDecoder().decode(plain));
      const ownerKey = await subtle.importKey('raw', b64uDecode(keyring.owner), { name: 'Ed25519' }, false, ['verify']);
      const ownerProved = await subtle.verify({ name: 'Ed25519' }, ownerKey, b64uDecode(keyring.ownerProof),
        proofMessage({ actorId: keyring.owner, sealingPublic: keyring.ownerSealing }));
      return { keyring: b64uEncode(plain), ownerProved };
    });

    // Rotation (docs/KEY-ROTATION.md): the rotate-key payload, made again from the two keys.
    const r = v.rotation;
    await note('rotationThumbprint', async () => b64uEncode(new Uint8Array(await subtle.digest('SHA-256',
      ascii(`{"crv":"Ed25519","kty":"OKP","x":"${r.nextPublic}"}`)))));
    await note('rotationMade', async () => {
      const challenge = b64uDecode(r.challenge);
      const thumbprint = new Uint8Array(await subtle.digest('SHA-256',
        ascii(`{"crv":"Ed25519","kty":"OKP","x":"${r.nextPublic}"}`)));
      const next = await okpPrivate('Ed25519', r.next, r.nextPublic, ['sign']);
      const current = await okpPrivate('Ed25519', r.current, r.currentPublic, ['sign']);
      const sign = async (key, message) => b64uEncode(new Uint8Array(await subtle.sign({ name: 'Ed25519' }, key, message)));
      return JSON.stringify({
        authorization: await sign(current, concat(ascii('zbase/v1/rotate'), challenge, resource, thumbprint)),
        jwk: { crv: 'Ed25519', kty: 'OKP', x: r.nextPublic },
        proof: await sign(next, concat(ascii('zbase/v1/rotate-proof'), challenge, resource)),
      });
    });
    return record;
  },
};
