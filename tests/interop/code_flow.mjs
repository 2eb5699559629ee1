// Drives a real authorization-code flow against provider.mjs, as a browser
// would, and prints the token endpoint's JSON answer (with its refresh token)
// on stdout:
//
//   node code_flow.mjs ISSUER ACCOUNT
//
// The client is `webapp`; the scope `openid offline_access test` with
// `prompt=consent` (oidc-provider only grants offline_access with consent),
// PKCE S256, resource https://gatehouse.test. Login and consent go through
// oidc-provider's own devInteractions forms. Any unexpected answer exits 1
// with the reason on stderr.

import { createHash, randomBytes } from 'node:crypto';

const [issuer, account] = process.argv.slice(2);
if (!issuer || !account) {
  console.error('usage: node code_flow.mjs ISSUER ACCOUNT');
  process.exit(2);
}
const CLIENT = { id: 'webapp', secret: 'webapp-secret', redirect: 'http://127.0.0.1/callback' };
const RESOURCE = 'https://gatehouse.test';

const cookies = new Map();
function remember(response) {
  for (const line of response.headers.getSetCookie()) {
    const [pair] = line.split(';');
    const eq = pair.indexOf('=');
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    if (value === '' || /expires=Thu, 01 Jan 1970/i.test(line)) cookies.delete(name);
    else cookies.set(name, value);
  }
}
function cookieHeader() {
  return [...cookies].map(([k, v]) => `${k}=${v}`).join('; ');
}

function fail(why) {
  console.error(`code_flow: ${why}`);
  process.exit(1);
}

async function request(url, init = {}) {
  const response = await fetch(url, {
    ...init,
    redirect: 'manual',
    headers: { ...(init.headers ?? {}), cookie: cookieHeader() },
  });
  remember(response);
  return response;
}

// Follows redirects until one leaves the provider (the client's callback) or
// a page is rendered (an interaction form).
async function follow(url, init) {
  let response = await request(url, init);
  for (let hops = 0; hops < 10; hops += 1) {
    if (response.status < 300 || response.status >= 400) return { response, url };
    const next = new URL(response.headers.get('location'), url).href;
    if (next.startsWith(CLIENT.redirect)) return { redirect: next };
    url = next;
    response = await request(url);
  }
  return fail('too many redirects');
}

const verifier = randomBytes(32).toString('base64url');
const challenge = createHash('sha256').update(verifier).digest('base64url');
const auth = new URL('/auth', issuer);
auth.search = new URLSearchParams({
  client_id: CLIENT.id,
  response_type: 'code',
  redirect_uri: CLIENT.redirect,
  scope: 'openid offline_access test',
  prompt: 'consent',
  state: randomBytes(8).toString('hex'),
  code_challenge: challenge,
  code_challenge_method: 'S256',
  resource: RESOURCE,
}).toString();

let step = await follow(auth.href);
// At most two interactions: login, then consent.
for (let i = 0; i < 3 && !step.redirect; i += 1) {
  const { response, url } = step;
  const html = await response.text();
  if (response.status !== 200) fail(`${url} answered ${response.status}: ${html.slice(0, 500)}`);
  const prompt = /name="prompt" value="([a-z]+)"/.exec(html)?.[1];
  const action = /<form[^>]*action="([^"]+)"/.exec(html)?.[1];
  if (!prompt || !action) fail(`no interaction form at ${url}: ${html.slice(0, 500)}`);
  const form = new URLSearchParams({ prompt });
  if (prompt === 'login') form.set('login', account);
  step = await follow(new URL(action, url).href, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: form.toString(),
  });
}
if (!step.redirect) fail('the flow did not come back to the client');

const callback = new URL(step.redirect);
const code = callback.searchParams.get('code');
if (!code) fail(`no code in the callback: ${callback.search}`);

const token = await fetch(new URL('/token', issuer), {
  method: 'POST',
  headers: {
    'content-type': 'application/x-www-form-urlencoded',
    authorization: `Basic ${Buffer.from(`${CLIENT.id}:${CLIENT.secret}`).toString('base64')}`,
  },
  body: new URLSearchParams({
    grant_type: 'authorization_code',
    code,
    redirect_uri: CLIENT.redirect,
    code_verifier: verifier,
    resource: RESOURCE,
  }).toString(),
});
const body = await token.text();
if (token.status !== 200) fail(`token endpoint answered ${token.status}: ${body}`);
if (!JSON.parse(body).refresh_token) fail(`no refresh token in ${body}`);
process.stdout.write(`${body}\n`);
