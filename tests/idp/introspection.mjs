// panva's oidc-provider with RFC 7662 introspection, for the peer figure in scripts/bench-envoy:
// what "revocable tokens" cost when every request asks the provider. Prints "token <opaque
// access token>" once listening (client_credentials grant), then serves until killed.
//
// env: OIDC_PROVIDER_MODULE (file URL of oidc-provider's lib/index.js), PORT.
const { default: Provider } = await import(process.env.OIDC_PROVIDER_MODULE);
const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const secret = 'a-client-secret-for-the-bench-0123456789';
const provider = new Provider(issuer, {
  clients: [{
    client_id: 'bench', client_secret: secret, grant_types: ['client_credentials'],
    redirect_uris: [], response_types: [],
  }],
  features: { introspection: { enabled: true }, clientCredentials: { enabled: true } },
  cookies: { keys: ['a-cookie-key-for-the-bench-0123456789'] },
});
const server = provider.listen(port, '127.0.0.1');
await new Promise((resolve) => server.once('listening', resolve));
const basic = Buffer.from(`bench:${secret}`).toString('base64');
const answer = await (await fetch(`${issuer}/token`, {
  method: 'POST',
  headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Basic ${basic}` },
  body: 'grant_type=client_credentials',
})).json();
if (!answer.access_token) throw new Error(`no token: ${JSON.stringify(answer)}`);
console.log(`token ${answer.access_token}`);
console.log(`basic ${basic}`);
