// DPoP proofs for the tests (SPEC §15), made by panva's `dpop` package — an independent RFC 9449
// client — never by the sidecar's code. One JSON request a line on stdin, one JSON answer a line
// on stdout:
//   {"op":"key","alg":"ES256"}                       -> {"key":0,"jkt":"..."}
//   {"op":"proof","key":0,"htu":..,"htm":..,"token":..,"nonce":..}   -> {"proof":"..."}
//   {"op":"forge","key":0,"htu":..,"htm":..,"token":..,"header":{..},"claims":{..},"sign":"none"|"hs256"|"key"}
//                                                    -> {"proof":"..."}   (a hostile proof: the
//      valid proof's header and claims with these members replaced, signed as asked)
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import { webcrypto as crypto, createHmac } from 'node:crypto';

const require = createRequire(process.env.DPOP_MODULES + '/');
const DPoP = await import(require.resolve('dpop'));

const keys = [];
const b64u = (bytes) => Buffer.from(bytes).toString('base64url');
const part = (json) => b64u(Buffer.from(JSON.stringify(json)));

async function forge({ key, htu, htm, token, nonce, header = {}, claims = {}, sign = 'key' }) {
  const pair = keys[key];
  const valid = await DPoP.generateProof(pair, htu, htm, nonce ?? undefined, token ?? undefined);
  const [h, c] = valid.split('.').slice(0, 2).map((p) => JSON.parse(Buffer.from(p, 'base64url')));
  const newHeader = { ...h, ...header };
  for (const [name, value] of Object.entries(header)) if (value === null) delete newHeader[name];
  const newClaims = { ...c, ...claims };
  for (const [name, value] of Object.entries(claims)) if (value === null) delete newClaims[name];
  if (header.jwk === 'private') {
    newHeader.jwk = await crypto.subtle.exportKey('jwk', pair.privateKey);
    delete newHeader.jwk.key_ops;
    delete newHeader.jwk.ext;
  }
  const input = `${part(newHeader)}.${part(newClaims)}`;
  let signature = '';
  if (sign === 'hs256') {
    signature = createHmac('sha256', 'a secret that is at least 32 bytes long').update(input).digest('base64url');
  } else if (sign === 'key') {
    const algorithm = { name: 'ECDSA', hash: 'SHA-256' };
    signature = b64u(new Uint8Array(await crypto.subtle.sign(algorithm, pair.privateKey, Buffer.from(input))));
  }
  return `${input}.${signature}`;
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  let answer;
  try {
    const request = JSON.parse(line);
    switch (request.op) {
      case 'key': {
        const pair = await DPoP.generateKeyPair(request.alg ?? 'ES256', { extractable: true });
        keys.push(pair);
        answer = { key: keys.length - 1, jkt: await DPoP.calculateThumbprint(pair.publicKey) };
        break;
      }
      case 'proof':
        answer = {
          proof: await DPoP.generateProof(
            keys[request.key], request.htu, request.htm, request.nonce ?? undefined, request.token ?? undefined,
          ),
        };
        break;
      case 'forge':
        answer = { proof: await forge(request) };
        break;
      default:
        answer = { error: `unknown op ${request.op}` };
    }
  } catch (e) {
    answer = { error: String(e) };
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
}
