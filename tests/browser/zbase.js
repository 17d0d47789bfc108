// A zbase client written from WIRE.md with WebCrypto and WebSocket only: no libraries, so the
// test proves that what a plain browser produces (JWK export, P1363 ECDSA signatures, Ed25519
// signatures, binary WebSocket messages) is what the station accepts.
//
// The page decides nothing about success: it records every event exactly as the browser saw
// it and the Rust test asserts on the record, so a failure names what the station really did.
'use strict';

const VERSION = 0x01;
const CODE = {
  requireVerification: 0x00,
  requireConfig: 0x01,
  submitVerification: 0x50,
  submitConfig: 0x51,
};
const CHALLENGE_LEN = 32;
// How long one step waits for the station; below the WebDriver script timeout so a stuck step
// comes back as a record the test can print instead of a bare script timeout.
const STEP_TIMEOUT_MS = 20000;

const STATION = new URLSearchParams(location.search).get('station');

const ALGORITHMS = {
  'P-256': {
    generate: { name: 'ECDSA', namedCurve: 'P-256' },
    // WebCrypto ECDSA signatures are already r || s (IEEE P1363), the wire format.
    sign: { name: 'ECDSA', hash: 'SHA-256' },
  },
  Ed25519: { generate: { name: 'Ed25519' }, sign: { name: 'Ed25519' } },
};

// One WebSocket to one identifier. `events` is the full record: frames as
// {kind:'frame', version, code, payload (base64url)}, then at most one
// {kind:'close', code, reason, wasClean}; anything unexpected is recorded too.
class Connection {
  constructor(id) {
    this.events = [];
    this.waiters = [];
    this.ws = new WebSocket(`ws://${STATION}/v1/resources/${id}`);
    this.ws.binaryType = 'arraybuffer';
    this.ws.onmessage = (message) => {
      if (!(message.data instanceof ArrayBuffer)) {
        this.push({ kind: 'text', data: String(message.data) });
        return;
      }
      const bytes = new Uint8Array(message.data);
      this.push({
        kind: 'frame',
        version: bytes[0],
        code: bytes[1],
        payload: b64uEncode(bytes.subarray(2)),
      });
    };
    this.ws.onclose = (close) =>
      this.push({ kind: 'close', code: close.code, reason: close.reason, wasClean: close.wasClean });
  }

  push(event) {
    this.events.push(event);
    for (const wake of this.waiters.splice(0)) wake();
  }

  // Resolves once `events` has more than `count` entries, or after the step timeout (the
  // caller then returns the record as it is).
  whenMoreThan(count) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, STEP_TIMEOUT_MS);
      const check = () => {
        if (this.events.length > count) {
          clearTimeout(timer);
          resolve();
        } else {
          this.waiters.push(check);
        }
      };
      check();
    });
  }

  closed() {
    return this.events.some((event) => event.kind === 'close');
  }

  send(code, payload) {
    this.ws.send(concat(Uint8Array.of(VERSION, code), payload));
  }
}

// The first event must be `code` carrying a 32-byte challenge; returns the challenge or null.
function challengeOf(event, code) {
  if (!event || event.kind !== 'frame' || event.version !== VERSION || event.code !== code) return null;
  const challenge = b64uDecode(event.payload);
  return challenge.length === CHALLENGE_LEN ? challenge : null;
}

window.zb = {
  key: null,
  algorithm: null,
  publicJwk: null,
  // The verified connection, whose `events` the test polls.
  peer: null,

  async ed25519Supported() {
    try {
      await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
      return true;
    } catch (error) {
      if (error.name === 'NotSupportedError') return false;
      throw error;
    }
  },

  // Generates the resource key pair. The private key is exported as a JWK only so the test's
  // Rust peers can hold the same key, as a user's second device would.
  async generate(name) {
    this.algorithm = ALGORITHMS[name];
    const pair = await crypto.subtle.generateKey(this.algorithm.generate, true, ['sign', 'verify']);
    this.key = pair.privateKey;
    this.publicJwk = await crypto.subtle.exportKey('jwk', pair.publicKey);
    const privateJwk = await crypto.subtle.exportKey('jwk', pair.privateKey);
    return { publicJwk: this.publicJwk, privateJwk };
  },

  randomId() {
    return b64uEncode(crypto.getRandomValues(new Uint8Array(32)));
  },

  async sign(context, challenge, id) {
    const message = concat(ascii(context), challenge, ascii(id));
    return new Uint8Array(await crypto.subtle.sign(this.algorithm.sign, this.key, message));
  },

  // Configuration: require-config -> submit-config -> (offer-config, close). Returns the
  // connection's record once it closed (or the step timed out), plus what was sent.
  async configure(proposed) {
    const conn = new Connection(proposed);
    await conn.whenMoreThan(0);
    const challenge = challengeOf(conn.events[0], CODE.requireConfig);
    if (!challenge) return { events: conn.events, sent: null };
    const proof = await this.sign('zbase/v1/config', challenge, proposed);
    const sent = JSON.stringify({ jwk: this.publicJwk, proof: b64uEncode(proof) });
    conn.send(CODE.submitConfig, ascii(sent));
    while (!conn.closed()) {
      const seen = conn.events.length;
      await conn.whenMoreThan(seen);
      if (conn.events.length === seen) break;
    }
    return { events: conn.events, sent };
  },

  // Verification: require-verification -> submit-verification. There is no success frame, so
  // this returns right after sending; later frames accumulate in `zb.peer.events`.
  async join(id) {
    const conn = new Connection(id);
    this.peer = conn;
    await conn.whenMoreThan(0);
    const challenge = challengeOf(conn.events[0], CODE.requireVerification);
    if (challenge) conn.send(CODE.submitVerification, await this.sign('zbase/v1/verify', challenge, id));
    return conn.events;
  },

  // Sends a client frame on the verified connection; the payload comes as base64url.
  send(code, payload) {
    this.peer.send(code, b64uDecode(payload));
  },
};
