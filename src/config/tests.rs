use super::*;
use crate::credential::ClientAuth;
use std::io::Write;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    p
}

fn base(dir: &Path) -> String {
    write(dir, "cert.pem", "x");
    write(dir, "key.pem", "x");
    write(dir, "secret", "s3cret\n");
    r#"
[listen]
addr = "127.0.0.1:8443"
tls_cert = "cert.pem"
tls_key = "key.pem"

[[issuer]]
issuer = "https://idp.example.com"
audiences = ["gatehouse"]

[[upstream]]
name = "crm"
url = "http://127.0.0.1:9000"
[upstream.credential]
kind = "client_credentials"
token_url = "https://login.example/token"
client_id = "gh"
client_secret_file = "secret"

[[route]]
name = "crm"
path_prefix = "/crm/"
upstream = "crm"
strip_prefix = true
"#
    .to_owned()
}

#[test]
fn valid_config_loads_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "g.toml", &base(dir.path()));
    let c = Config::load(&path).unwrap();
    assert_eq!(c.routes[0].name, "crm");
    assert_eq!(c.limits.max_header_bytes, 32768);
    assert_eq!(c.issuers[0].algorithms.len(), 9);
    let CredentialSpec::ClientCredentials(oauth) = &c.upstreams[0].credential else { panic!("kind") };
    let ClientAuth::SecretBasic(secret) = &oauth.auth else { panic!("auth") };
    assert_eq!(secret.expose(), "s3cret");
    assert_eq!(c.policies_dir, dir.path().join("policies"));
}

#[test]
fn two_mistakes_are_both_reported_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let text = base(dir.path()).replace("upstream = \"crm\"", "upstream = \"nope\"").replace("[listen]\n", "[listen]\nbogus = 1\n");
    let path = write(dir.path(), "g.toml", &text);
    let errs = Config::load(&path).unwrap_err();
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 2, "{shown:#?}");
    let file = path.display().to_string();
    assert!(shown[0].starts_with(&format!("{file}:3:1: unknown field `bogus`")), "{shown:#?}");
    assert!(shown[1].contains("unknown upstream `nope`"), "{shown:#?}");
    // The position of the unknown route's `upstream =` value.
    let line = text.lines().position(|l| l.contains("\"nope\"")).unwrap() + 1;
    assert!(shown[1].starts_with(&format!("{file}:{line}:12:")), "{shown:#?}");
}

#[test]
fn literal_secrets_and_plain_http_idp_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = base(dir.path())
        .replace("client_secret_file = \"secret\"", "client_secret = \"hunter2\"")
        .replace("https://idp.example.com", "http://idp.example.com");
    let path = write(dir.path(), "g.toml", &text);
    let shown: Vec<String> = Config::load(&path).unwrap_err().iter().map(ToString::to_string).collect();
    assert!(shown.iter().any(|s| s.contains("http:// is accepted only for loopback")), "{shown:#?}");
    assert!(shown.iter().any(|s| s.contains("literal secret (`client_secret`)")), "{shown:#?}");
    assert!(shown.iter().all(|s| !s.contains("hunter2")), "a secret leaked into a message: {shown:#?}");
}

#[test]
fn hmac_and_none_algorithms_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = base(dir.path())
        .replace("audiences = [\"gatehouse\"]", "audiences = [\"gatehouse\"]\nalgorithms = [\"RS256\", \"HS256\", \"none\"]");
    let path = write(dir.path(), "g.toml", &text);
    let shown: Vec<String> = Config::load(&path).unwrap_err().iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 2, "{shown:#?}");
    assert!(shown.iter().all(|s| s.contains("is never accepted")));
}

#[test]
fn missing_files_are_reported_at_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = base(dir.path()).replace("client_secret_file = \"secret\"", "client_secret_file = \"missing.pem\"");
    let path = write(dir.path(), "g.toml", &text);
    let shown: Vec<String> = Config::load(&path).unwrap_err().iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 1, "{shown:#?}");
    let line = text.lines().position(|l| l.contains("missing.pem")).unwrap() + 1;
    assert!(shown[0].contains(&format!(":{line}:")) && shown[0].contains("missing.pem"), "{shown:#?}");
}

#[test]
fn an_unusable_private_key_jwt_key_is_reported_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "client.pem", "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n");
    let text = base(dir.path()).replace(
        "client_secret_file = \"secret\"",
        "auth_method = \"private_key_jwt\"\nprivate_key_file = \"client.pem\"\nkey_id = \"k1\"",
    );
    let path = write(dir.path(), "g.toml", &text);
    let shown: Vec<String> = Config::load(&path).unwrap_err().iter().map(ToString::to_string).collect();
    let line = text.lines().position(|l| l.contains("client.pem")).unwrap() + 1;
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert!(shown[0].contains(&format!(":{line}:")) && shown[0].contains("cannot sign client assertions"), "{shown:#?}");
}

#[test]
fn workers_default_to_one_per_cpu_and_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let c = Config::load(&write(dir.path(), "g.toml", &base(dir.path()))).unwrap();
    assert_eq!(c.limits.workers, 0);
    assert!(c.limits.worker_threads() >= 1);
    let two = format!("{}\n[limits]\nworkers = 2\n", base(dir.path()));
    assert_eq!(Config::load(&write(dir.path(), "two.toml", &two)).unwrap().limits.worker_threads(), 2);
    let huge = format!("{}\n[limits]\nworkers = 5000\n", base(dir.path()));
    let errs = Config::load(&write(dir.path(), "huge.toml", &huge)).unwrap_err();
    assert!(errs.iter().any(|e| e.to_string().contains("workers must be at most 1024")), "{errs:?}");
}
