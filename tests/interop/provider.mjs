// A real OpenID provider (npm `oidc-provider`) for gatehouse's interop tests.
//
//   node provider.mjs [OPTIONS_JSON]
//
// OPTIONS_JSON (optional): {"port": 0, "signerKeys": [{"kid": "k1", "pem": "-----BEGIN PUBLIC KEY-----..."}], "accessTokenTtl": 600}
//   port            port to listen on at 127.0.0.1 (0 = chosen by the OS)
//   signerKeys      public keys (SPKI PEM) of the private_key_jwt client `signer`
//   accessTokenTtl  lifetime in seconds of the resource server's access tokens (600)
//
// Prints `READY <port>` on stdout once it is listening; the issuer is
// `http://127.0.0.1:<port>`. Exits when stdin closes, so it never outlives
// the test that started it. Everything else (provider warnings, errors) goes
// to stderr.
//
// Clients (secrets are test-only constants):
//   connector  client_secret_basic   client_credentials
//   poster     client_secret_post    client_credentials
//   webapp     client_secret_basic   authorization_code + refresh_token (code_flow.mjs)
//   signer     private_key_jwt       client_credentials (only with signerKeys)
//
// Resource server: `https://gatehouse.test`, scopes `test api`, audience
// `gatehouse`, access tokens as RS256 JWTs. Refresh tokens rotate on every use.

import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';

import Provider, { errors } from 'oidc-provider';

// stdout carries only the READY line: oidc-provider's notices go to stderr.
console.info = console.error;

const RESOURCE = 'https://gatehouse.test';
const options = process.argv[2] ? JSON.parse(process.argv[2]) : {};

// A fresh signing key per run; the `alg` member pins it to RS256.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'interop-rs256', alg: 'RS256', use: 'sig' };

const clients = [
  {
    client_id: 'connector',
    client_secret: 'connector-secret',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
  },
  {
    client_id: 'poster',
    client_secret: 'poster-secret',
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
  },
  {
    client_id: 'webapp',
    client_secret: 'webapp-secret',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1/callback'],
  },
];
if (options.signerKeys?.length) {
  const keys = options.signerKeys.map(({ kid, pem }) => ({ ...createPublicKey(pem).export({ format: 'jwk' }), kid, use: 'sig' }));
  clients.push({
    client_id: 'signer',
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: { keys },
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
  });
}

const configuration = {
  clients,
  jwks: { keys: [signingKey] },
  cookies: { keys: ['interop-cookie-key'] },
  // Accounts exist for any id; the only claim is `sub`.
  async findAccount(_ctx, sub) {
    return { accountId: sub, async claims() { return { sub }; } };
  },
  scopes: ['openid', 'offline_access', 'test', 'api'],
  ttl: {
    AccessToken: options.accessTokenTtl ?? 600,
    AuthorizationCode: 60,
    ClientCredentials: 600,
    Grant: 3600,
    IdToken: 600,
    Interaction: 600,
    RefreshToken: 86400,
    Session: 3600,
  },
  rotateRefreshToken: true,
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // No default resource: a token request without `resource=` gets an
      // opaque token, so the tests see whether gatehouse sent it.
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        if (resourceIndicator !== RESOURCE) throw new errors.InvalidTarget();
        return {
          scope: 'test api',
          audience: 'gatehouse',
          accessTokenFormat: 'jwt',
          accessTokenTTL: options.accessTokenTtl ?? 600,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
};

const server = createServer();
server.listen(options.port ?? 0, '127.0.0.1', () => {
  const { port } = server.address();
  const provider = new Provider(`http://127.0.0.1:${port}`, configuration);
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  // Why a token request failed (the answer itself only says e.g. invalid_client).
  const why = (err) => [err.message, err.error_description, err.error_detail, err.cause?.message].filter(Boolean).join(' | ');
  provider.on('grant.error', (_ctx, err) => console.error('grant.error:', why(err)));
  provider.on('grant.success', (ctx) => console.error('grant.success:', ctx.oidc.params.grant_type, ctx.oidc.client?.clientId));
  server.on('request', provider.callback());
  process.stdout.write(`READY ${port}\n`);
});

process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
