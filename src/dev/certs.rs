//! Development PKI: a CA and a certificate for localhost and 127.0.0.1,
//! generated at run time (never committed).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// Where the dev certificates are.
#[derive(Debug, Clone)]
pub struct DevCerts {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Reuses `dir/dev-ca.pem`, `dir/server.pem` and `dir/server-key.pem` when
/// all exist, else creates them.
pub fn ensure_dev_certs(dir: &Path) -> Result<DevCerts, String> {
    let certs = DevCerts { ca: dir.join("dev-ca.pem"), cert: dir.join("server.pem"), key: dir.join("server-key.pem") };
    if certs.ca.exists() && certs.cert.exists() && certs.key.exists() {
        return Ok(certs);
    }
    write_certs(dir, "gatehouse dev CA", &["localhost", "127.0.0.1"])
}

/// Creates a fresh CA and a server certificate for `names` under `dir`.
pub fn write_certs(dir: &Path, ca_name: &str, names: &[&str]) -> Result<DevCerts, String> {
    let e = |e: rcgen::Error| e.to_string();
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, ca_name);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(e)?;
    let leaf_key = KeyPair::generate().map_err(e)?;
    let mut leaf_params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).map_err(e)?;
    leaf_params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("localhost"));
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).map_err(e)?;
    let certs = DevCerts { ca: dir.join("dev-ca.pem"), cert: dir.join("server.pem"), key: dir.join("server-key.pem") };
    let write = |p: &Path, s: String| std::fs::write(p, s).map_err(|e| format!("{}: {e}", p.display()));
    write(&certs.ca, ca_cert.pem())?;
    write(&certs.cert, leaf.pem())?;
    write(&certs.key, leaf_key.serialize_pem())?;
    Ok(certs)
}
