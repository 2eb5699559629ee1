use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::*;

fn pem(label: &str, der: &[u8]) -> Secret {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    Secret::new(format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n")))
}

async fn assertion_for(key_pem: Secret) -> (Idp, Seen) {
    let idp = Idp::start(Behaviour::default()).await;
    let auth = ClientAuth::PrivateKeyJwt { key_pem, key_id: "key-1".to_owned() };
    auth.check().unwrap();
    let h = harness(CredentialSpec::ClientCredentials(client(&idp, auth)), None, Timing::default());
    value(&h.cred).await.unwrap();
    let seen = idp.seen().remove(0);
    (idp, seen)
}

fn verify(idp: &Idp, seen: &Seen, alg: Algorithm, key: &DecodingKey) {
    assert_eq!(seen.authorization, None);
    assert_eq!(seen.form["client_id"], "gatehouse");
    assert_eq!(seen.form["client_assertion_type"], "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
    let jwt = &seen.form["client_assertion"];
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, alg);
    assert_eq!(header.kid.as_deref(), Some("key-1"));
    let mut validation = Validation::new(alg);
    validation.set_audience(&[&idp.url]);
    validation.set_issuer(&["gatehouse"]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(jwt, key, &validation).unwrap().claims;
    assert_eq!(claims["sub"], "gatehouse");
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 60);
    assert!(claims["jti"].as_str().unwrap().len() >= 16);
}

#[tokio::test]
async fn rsa_pkcs8_key_signs_rs256_assertions_that_verify() {
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = key.as_der().unwrap();
    let (idp, seen) = assertion_for(pem("PRIVATE KEY", der.as_ref())).await;
    let public = key.public_key();
    let decoding = DecodingKey::from_rsa_raw_components(
        public.modulus().big_endian_without_leading_zero(),
        public.exponent().big_endian_without_leading_zero(),
    );
    verify(&idp, &seen, Algorithm::RS256, &decoding);
}

#[tokio::test]
async fn p256_keys_pkcs8_and_sec1_sign_es256_assertions_that_verify() {
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let point = key.public_key().as_ref();
    let decoding =
        DecodingKey::from_ec_components(&URL_SAFE_NO_PAD.encode(&point[1..33]), &URL_SAFE_NO_PAD.encode(&point[33..65])).unwrap();
    let pkcs8 = key.to_pkcs8v1().unwrap();
    let (idp, seen) = assertion_for(pem("PRIVATE KEY", pkcs8.as_ref())).await;
    verify(&idp, &seen, Algorithm::ES256, &decoding);
    let sec1 = key.private_key().as_der().unwrap();
    let (idp, seen) = assertion_for(pem("EC PRIVATE KEY", sec1.as_ref())).await;
    verify(&idp, &seen, Algorithm::ES256, &decoding);
}

#[tokio::test]
async fn ed25519_key_signs_eddsa_assertions_that_verify() {
    let key = Ed25519KeyPair::generate().unwrap();
    let decoding = DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(key.public_key().as_ref())).unwrap();
    let (idp, seen) = assertion_for(pem("PRIVATE KEY", key.to_pkcs8v1().unwrap().as_ref())).await;
    verify(&idp, &seen, Algorithm::EdDSA, &decoding);
}

#[tokio::test]
async fn unusable_key_is_reported_by_check_and_makes_fetches_unavailable() {
    let p384 = EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
    for key_pem in [Secret::new("not a pem"), pem("PRIVATE KEY", p384.to_pkcs8v1().unwrap().as_ref()), pem("CERTIFICATE", b"xyz")] {
        let auth = ClientAuth::PrivateKeyJwt { key_pem, key_id: "k".to_owned() };
        assert!(auth.check().is_err());
        let idp = Idp::start(Behaviour::default()).await;
        let h = harness(CredentialSpec::ClientCredentials(client(&idp, auth)), None, Timing::default());
        let err = value(&h.cred).await.unwrap_err().to_string();
        assert!(err.contains("private_key_jwt key for upstream crm"), "{err}");
        assert_eq!(idp.hits(), 0);
    }
}
