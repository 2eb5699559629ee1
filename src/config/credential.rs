//! Validation of `[upstream.credential]`: the kinds, their keys, client
//! authentication and where each secret comes from.

use toml::Spanned;

use super::raw::*;
use super::validate::Validator;
use crate::credential::{ClientAuth, CredentialSpec, OAuthClient};
use crate::secret::Secret;

impl Validator<'_> {
    pub(super) fn credential(&mut self, c: &Spanned<RawCredential>, upstream: &str, have_store: bool) -> Option<CredentialSpec> {
        let r = c.get_ref();
        let literal = [
            (&r.client_secret, "client_secret", "client_secret_file or client_secret_env"),
            (&r.value, "value", "value_file or value_env"),
            (&r.private_key, "private_key", "private_key_file"),
            (&r.refresh_token, "refresh_token", "`gatehouse credentials set` (the encrypted store)"),
        ];
        let mut refused = false;
        for (field, key, instead) in literal {
            if let Some(f) = field {
                self.err(f, format!("a literal secret (`{key}`) is not allowed in the config; use {instead}"));
                refused = true;
            }
        }
        let spec = match r.kind.get_ref().as_str() {
            "client_credentials" => CredentialSpec::ClientCredentials(self.oauth(c)?),
            "refresh_token" => {
                if !have_store {
                    self.err(&r.kind, format!("upstream `{upstream}` uses refresh_token but there is no [store]"));
                }
                CredentialSpec::RefreshToken(self.oauth(c)?)
            }
            "token_exchange" => CredentialSpec::TokenExchange(self.oauth(c)?),
            "static" => {
                let header = r.header.as_ref().map_or("authorization", |h| h.get_ref().as_str());
                let header = match http::HeaderName::from_bytes(header.as_bytes()) {
                    Ok(h) => h,
                    Err(_) => {
                        if let Some(h) = &r.header {
                            self.err(h, format!("`{}` is not a valid header name", h.get_ref()));
                        }
                        return None;
                    }
                };
                let value = self.secret_source(c, &r.value_file, &r.value_env, "value_file or value_env")?;
                if http::HeaderValue::from_str(value.expose()).is_err() {
                    self.err(&r.kind, "the static credential value is not a valid header value");
                }
                CredentialSpec::Static { header, value }
            }
            "passthrough" => CredentialSpec::Passthrough,
            "none" => CredentialSpec::None,
            other => {
                self.err(
                    &r.kind,
                    format!(
                        "unknown credential kind `{other}` (client_credentials, refresh_token, token_exchange, static, passthrough, none)"
                    ),
                );
                return None;
            }
        };
        if refused { None } else { Some(spec) }
    }

    fn secret_source(
        &mut self,
        at: &Spanned<RawCredential>,
        file: &Option<Spanned<String>>,
        env: &Option<Spanned<String>>,
        what: &str,
    ) -> Option<Secret> {
        match (file, env) {
            (Some(f), None) => self.file_secret(f),
            (None, Some(e)) => self.env_secret(e),
            _ => {
                self.err(at, format!("needs exactly one of {what}"));
                None
            }
        }
    }

    fn oauth(&mut self, c: &Spanned<RawCredential>) -> Option<OAuthClient> {
        let r = c.get_ref();
        let token_url = match &r.token_url {
            Some(t) => self.url(t, true).map(|_| t.get_ref().clone()),
            None => {
                self.err(c, "token_url is required for this credential kind");
                None
            }
        };
        let client_id = match &r.client_id {
            Some(id) if !id.get_ref().is_empty() => Some(id.get_ref().clone()),
            _ => {
                self.err(c, "client_id is required for this credential kind");
                None
            }
        };
        let method = r.auth_method.as_ref().map_or("client_secret_basic", |m| m.get_ref().as_str());
        let auth = match method {
            "client_secret_basic" | "client_secret_post" => {
                let secret =
                    self.secret_source(c, &r.client_secret_file, &r.client_secret_env, "client_secret_file or client_secret_env")?;
                if method == "client_secret_basic" { ClientAuth::SecretBasic(secret) } else { ClientAuth::SecretPost(secret) }
            }
            "private_key_jwt" => {
                let (Some(key_file), Some(key_id)) = (&r.private_key_file, &r.key_id) else {
                    self.err(c, "private_key_jwt needs private_key_file and key_id");
                    return None;
                };
                let auth = ClientAuth::PrivateKeyJwt { key_pem: self.file_secret(key_file)?, key_id: key_id.get_ref().clone() };
                if let Err(why) = auth.check() {
                    self.err(key_file, format!("private_key_file cannot sign client assertions: {why}"));
                    return None;
                }
                auth
            }
            other => {
                if let Some(m) = &r.auth_method {
                    self.err(m, format!("unknown auth_method `{other}` (client_secret_basic, client_secret_post, private_key_jwt)"));
                }
                return None;
            }
        };
        Some(OAuthClient {
            token_url: token_url?,
            client_id: client_id?,
            auth,
            scopes: r.scopes.as_ref().map(|s| s.get_ref().clone()).unwrap_or_default(),
            audience: r.audience.as_ref().map(|a| a.get_ref().clone()),
            resource: r.resource.as_ref().map(|a| a.get_ref().clone()),
        })
    }
}
