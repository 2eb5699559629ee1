use super::*;

#[tokio::test]
async fn client_secret_basic_sends_form_urlencoded_id_and_secret_in_basic() {
    let idp = Idp::start(Behaviour::default()).await;
    let mut oauth = client(&idp, ClientAuth::SecretBasic(Secret::new("p@ss:w/rd é+")));
    oauth.client_id = "gate house".to_owned();
    oauth.audience = Some("https://api.example".to_owned());
    oauth.resource = Some("https://api.example/v1".to_owned());
    let h = harness(CredentialSpec::ClientCredentials(oauth), None, Timing::default());
    value(&h.cred).await.unwrap();
    let seen = &idp.seen()[0];
    use base64::Engine as _;
    let expected = base64::engine::general_purpose::STANDARD.encode("gate+house:p%40ss%3Aw%2Frd+%C3%A9%2B");
    assert_eq!(seen.authorization.as_deref(), Some(format!("Basic {expected}").as_str()));
    assert_eq!(seen.content_type.as_deref(), Some("application/x-www-form-urlencoded"));
    let form = &seen.form;
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], "api.read api.write");
    assert_eq!(form["audience"], "https://api.example");
    assert_eq!(form["resource"], "https://api.example/v1");
    assert!(!form.contains_key("client_secret") && !form.contains_key("client_id"));
}

#[tokio::test]
async fn client_secret_post_sends_id_and_secret_in_the_body() {
    let idp = Idp::start(Behaviour::default()).await;
    let mut oauth = client(&idp, ClientAuth::SecretPost(Secret::new("s3cret&x=1")));
    oauth.scopes.clear();
    let h = harness(CredentialSpec::ClientCredentials(oauth), None, Timing::default());
    value(&h.cred).await.unwrap();
    let seen = &idp.seen()[0];
    assert_eq!(seen.authorization, None);
    assert_eq!(seen.form["client_id"], "gatehouse");
    assert_eq!(seen.form["client_secret"], "s3cret&x=1");
    assert!(!seen.form.contains_key("scope") && !seen.form.contains_key("audience"));
}

#[tokio::test]
async fn oauth_errors_are_reported_by_code_and_other_bodies_are_not_echoed() {
    let idp = Idp::start(Behaviour {
        fail: Some((401, "{\"error\":\"invalid_client\",\"error_description\":\"bad secret s3cret\"}")),
        ..Behaviour::default()
    })
    .await;
    let h = harness(CredentialSpec::ClientCredentials(basic_client(&idp)), None, Timing::default());
    let err = value(&h.cred).await.unwrap_err().to_string();
    assert!(err.contains("answered 401: invalid_client") && err.contains("crm"), "{err}");
    assert!(!err.contains("s3cret") && !err.contains("bad secret"), "error_description is never repeated: {err}");

    let idp = Idp::start(Behaviour { fail: Some((500, "<html>internal leak-me</html>")), ..Behaviour::default() }).await;
    let h = harness(CredentialSpec::ClientCredentials(basic_client(&idp)), None, Timing::default());
    let err = value(&h.cred).await.unwrap_err().to_string();
    assert!(err.contains("answered 500") && !err.contains("leak-me"), "{err}");
    let event = &h.events.all()[0];
    assert_eq!((event.kind, event.ok), ("client_credentials", false));
    assert!(!event.error.as_deref().unwrap().contains("leak-me"));
}

#[tokio::test]
async fn header_values_are_sensitive_and_debug_output_holds_no_secret() {
    let idp = Idp::start(Behaviour::default()).await;
    let spec = CredentialSpec::ClientCredentials(basic_client(&idp));
    assert!(!format!("{spec:?}").contains("s3cret"));
    let h = harness(spec, None, Timing::default());
    let (name, value) = h.cred.header(&Secret::new("c"), NOBODY).await.unwrap().unwrap();
    assert_eq!(name, http::header::AUTHORIZATION);
    assert!(value.is_sensitive());
    assert!(!format!("{:?}", h.cred).contains("tok-"));
}

#[test]
fn form_encoding_follows_the_urlencoded_rules() {
    let body = grant::form_encode(&[("a b", "x+y&z=é~*".to_owned()), ("k", String::new())]);
    assert_eq!(body, "a+b=x%2By%26z%3D%C3%A9%7E*&k=");
}
