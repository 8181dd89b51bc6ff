// A real OpenID Provider for the back-channel logout test: panva's oidc-provider (OpenID
// Certified), with one client whose backchannel_logout_uri is the sidecar. The script also plays
// the user's browser: it logs a user in with the authorization-code flow (the provider's
// development login and consent pages), prints "login {sub, sid}" (the ID token's, as JSON),
// and on "logout" from stdin logs out at /session/end with id_token_hint and prints "logout done"
// once the provider has delivered its back-channel logout tokens.
//
// With RESOURCE set, the provider also mints JWT access tokens for that resource server
// (resource indicators, RFC 8707), carrying the session's `sid`; the login line then has the
// access token too. "login" on stdin signs in again (another browser: a new session, printed as
// another login line), "logout N" logs out the Nth login (0 is the first; "logout" alone too).
//
// env: OIDC_PROVIDER_MODULE (file URL of oidc-provider's lib/index.js), PORT, BACKCHANNEL_URI,
// RESOURCE (optional).
import readline from 'node:readline';

const { default: Provider } = await import(process.env.OIDC_PROVIDER_MODULE);
const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const redirectUri = 'https://app.test/callback';
const clientSecret = 'a-client-secret-for-the-test-0123456789';
const resource = process.env.RESOURCE;
const resourceIndicators = resource ? {
  resourceIndicators: {
    enabled: true,
    defaultResource: () => resource,
    useGrantedResource: () => true,
    getResourceServerInfo: () => ({
      scope: 'orders:read',
      audience: resource,
      accessTokenFormat: 'jwt',
      jwt: { sign: { alg: 'RS256' } },
    }),
  },
} : {};

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'token-app',
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    response_types: ['code'],
    grant_types: ['authorization_code'],
    backchannel_logout_uri: process.env.BACKCHANNEL_URI,
    backchannel_logout_session_required: true,
  }],
  features: {
    backchannelLogout: { enabled: true },
    devInteractions: { enabled: true },
    ...resourceIndicators,
  },
  // The IdP session an access token was minted in, as its back-channel logout names it.
  extraTokenClaims: async (_ctx, token) => (token.kind === 'AccessToken' ? { sid: token.sid } : undefined),
  pkce: { required: () => false },
  cookies: { keys: ['a-cookie-key-for-the-test-0123456789'] },
  findAccount: async (_ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
  // The provider's outbound guard refuses loopback addresses; the sidecar listens on one here.
  fetch: (url, options) => {
    delete options.dispatcher;
    return globalThis.fetch(url, options);
  },
});
provider.on('backchannel.error', (_ctx, err) => console.error(`backchannel.error: ${err}`));
provider.on('server_error', (_ctx, err) => console.error(`server_error: ${err}`));
const server = provider.listen(port, '127.0.0.1');
await new Promise((resolve) => server.once('listening', resolve));

function browser() {
  const jar = new Map();
  return async function request(url, init = {}) {
    const headers = new Headers(init.headers);
    headers.set('cookie', [...jar].map(([k, v]) => `${k}=${v}`).join('; '));
    const response = await fetch(new URL(url, issuer), { ...init, headers, redirect: 'manual' });
    for (const cookie of response.headers.getSetCookie()) {
      const [pair] = cookie.split(';');
      const at = pair.indexOf('=');
      jar.set(pair.slice(0, at), pair.slice(at + 1));
    }
    return response;
  };
}
const form = (fields) => ({
  method: 'POST',
  headers: { 'content-type': 'application/x-www-form-urlencoded' },
  body: new URLSearchParams(fields).toString(),
});

// The authorization-code flow in a fresh browser, following redirects by hand until the
// client's callback; then the token endpoint.
async function login() {
  const request = browser();
  let next = `/auth?${new URLSearchParams({
    client_id: 'token-app', response_type: 'code', scope: `openid${resource ? ' orders:read' : ''}`,
    redirect_uri: redirectUri, nonce: 'n-0123456789', state: 's-0123456789',
    ...(resource ? { resource } : {}),
  })}`;
  let code;
  for (let step = 0; step < 20 && !code; step += 1) {
    const response = await request(next);
    const location = response.headers.get('location');
    if (location) {
      if (location.startsWith(redirectUri)) {
        code = new URL(location).searchParams.get('code');
      } else {
        next = location;
      }
      continue;
    }
    const page = await response.text();
    const action = page.match(/action="([^"]+)"/)?.[1];
    const prompt = page.match(/name="prompt" value="([^"]+)"/)?.[1];
    if (!action || !prompt) throw new Error(`unexpected page at ${next}: ${page.slice(0, 300)}`);
    const answer = await request(action, form(prompt === 'login'
      ? { prompt, login: 'oidc-user-1', password: 'any' }
      : { prompt }));
    next = answer.headers.get('location');
  }
  if (!code) throw new Error('no authorization code');
  const basic = Buffer.from(`token-app:${clientSecret}`).toString('base64');
  const tokens = await (await fetch(`${issuer}/token`, {
    ...form({
      grant_type: 'authorization_code', code, redirect_uri: redirectUri,
      ...(resource ? { resource } : {}),
    }),
    headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Basic ${basic}` },
  })).json();
  const idToken = tokens.id_token;
  const claims = JSON.parse(Buffer.from(idToken.split('.')[1], 'base64url').toString());
  console.log(`login ${JSON.stringify({ sub: claims.sub, sid: claims.sid, access_token: resource ? tokens.access_token : undefined })}`);
  return { request, idToken };
}

const sessions = [await login()];
const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  const [command, which] = line.trim().split(/\s+/);
  if (command === 'login') {
    sessions.push(await login());
    continue;
  }
  if (command !== 'logout') continue;
  const { request, idToken } = sessions[Number(which ?? 0)];
  const page = await (await request(`/session/end?${new URLSearchParams({ id_token_hint: idToken })}`)).text();
  const xsrf = page.match(/name="xsrf" value="([^"]+)"/)?.[1];
  if (!xsrf) throw new Error(`no logout form: ${page.slice(0, 300)}`);
  const done = await request('/session/end/confirm', form({ xsrf, logout: 'yes' }));
  console.log(done.status < 400 ? 'logout done' : `logout failed: ${done.status}`);
}
server.close();
