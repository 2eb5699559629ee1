use super::*;

#[tokio::test]
async fn token_exchange_gives_each_caller_its_own_token_and_caches_it() {
    let idp = Idp::start(Behaviour::default()).await;
    let h = harness(CredentialSpec::TokenExchange(basic_client(&idp)), None, Timing::default());
    let alice = Caller { iss: "https://idp.example", sub: "alice", client_id: Some("connector-1") };
    let bob = Caller { iss: "https://idp.example", sub: "bob", client_id: Some("connector-1") };
    let get = |token: &'static str, key| {
        let cred = h.cred.clone();
        async move {
            let (_, v) = cred.header(&Secret::new(token), key).await.unwrap().unwrap();
            v.to_str().unwrap().to_owned()
        }
    };
    let a1 = get("alice-jwt", alice).await;
    let b1 = get("bob-jwt", bob).await;
    assert_eq!(a1, "Bearer tok-1-for-alice-jwt");
    assert_eq!(b1, "Bearer tok-2-for-bob-jwt");
    assert_eq!(get("alice-jwt-2", alice).await, a1, "same caller: cached");
    assert_eq!(idp.hits(), 2);
    let form = &idp.seen()[0].form;
    assert_eq!(form["grant_type"], "urn:ietf:params:oauth:grant-type:token-exchange");
    assert_eq!(form["subject_token"], "alice-jwt");
    assert_eq!(form["subject_token_type"], "urn:ietf:params:oauth:token-type:access_token");
    assert_eq!(form["scope"], "api.read api.write");

    h.cred.invalidate(alice);
    assert_eq!(get("alice-jwt-3", alice).await, "Bearer tok-3-for-alice-jwt-3");
    assert_eq!(get("bob-jwt", bob).await, b1);
    let alice_via_other_client = Caller { client_id: Some("connector-2"), ..alice };
    assert_eq!(
        get("alice-jwt-4", alice_via_other_client).await,
        "Bearer tok-4-for-alice-jwt-4",
        "two clients acting for the same subject never share an exchanged token"
    );
    assert!(h.events.all().iter().all(|e| e.ok && e.kind == "token_exchange"));
    assert!(h.cred.is_oauth());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_exchange_is_single_flight_per_caller() {
    let idp = Idp::start(Behaviour { delay: Duration::from_millis(200), ..Behaviour::default() }).await;
    let h = harness(CredentialSpec::TokenExchange(basic_client(&idp)), None, Timing::default());
    let callers: Vec<_> = (0..100)
        .map(|i| {
            let cred = h.cred.clone();
            tokio::spawn(async move {
                let sub = if i % 2 == 0 { "alice" } else { "bob" };
                cred.header(&Secret::new(format!("{sub}-jwt")), Caller { iss: "iss", sub, client_id: None }).await.unwrap()
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    assert_eq!(idp.hits(), 2);
}

#[tokio::test]
async fn static_passthrough_and_none_need_no_token_endpoint() {
    let never = || Arc::new(MemoryHttp::default());
    let make = |spec| UpstreamCredential::new("u".to_owned(), spec, never(), None, Arc::new(Events::default()), Duration::from_secs(15));
    let caller = Secret::new("caller.jwt");

    let fixed = make(CredentialSpec::Static { header: HeaderName::from_static("x-api-key"), value: Secret::new("k-123") });
    let (name, value) = fixed.header(&caller, NOBODY).await.unwrap().unwrap();
    assert_eq!((name.as_str(), value.to_str().unwrap()), ("x-api-key", "k-123"));
    assert!(value.is_sensitive() && !fixed.is_oauth());

    let pass = make(CredentialSpec::Passthrough);
    let (name, value) = pass.header(&caller, NOBODY).await.unwrap().unwrap();
    assert_eq!((name.as_str(), value.to_str().unwrap()), ("authorization", "Bearer caller.jwt"));
    assert!(value.is_sensitive() && !pass.is_oauth());

    let none = make(CredentialSpec::None);
    assert_eq!(none.header(&caller, NOBODY).await.unwrap(), None);
    assert!(!none.is_oauth());
    none.start();
    none.invalidate(NOBODY);

    let broken = make(CredentialSpec::Static { header: HeaderName::from_static("x-api-key"), value: Secret::new("bad\nvalue") });
    let err = broken.header(&caller, NOBODY).await.unwrap_err().to_string();
    assert!(err.contains("not a valid header value") && !err.contains("bad"), "{err}");
}

#[tokio::test]
async fn start_is_idempotent_and_prefetches() {
    let idp = Idp::start(Behaviour::default()).await;
    let h = harness(CredentialSpec::ClientCredentials(basic_client(&idp)), None, Timing::default());
    h.cred.start();
    h.cred.start();
    let prefetched = async {
        while h.events.all().is_empty() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(3), prefetched).await.expect("start() fetches a first token");
    assert_eq!(value(&h.cred).await.unwrap(), "Bearer tok-1");
    assert_eq!(idp.hits(), 1);
}
