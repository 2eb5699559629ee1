use super::*;

async fn setup(
    behaviour: Behaviour,
    fail_rotate: bool,
    initial: Option<&str>,
) -> (Idp, Harness, Arc<SqliteStore>, Arc<Mutex<Vec<String>>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = store_at(&dir);
    if let Some(rt) = initial {
        sqlite.put("crm", &Secret::new(rt)).await.unwrap();
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::new(RecordingStore { inner: Arc::clone(&sqlite), log: Arc::clone(&log), fail_rotate });
    let idp = Idp::start(behaviour).await;
    let h = harness(CredentialSpec::RefreshToken(basic_client(&idp)), Some(store), Timing::default());
    (idp, h, sqlite, log, dir)
}

#[tokio::test]
async fn rotated_refresh_token_is_committed_before_the_access_token_is_used() {
    let rotating = Behaviour { rotate: true, ..Behaviour::default() };
    let (idp, h, sqlite, log, _dir) = setup(rotating, false, Some("rt-0")).await;
    assert_eq!(value(&h.cred).await.unwrap(), "Bearer tok-1");
    // By the time the token was handed out, the store already had rt-1.
    assert_eq!(sqlite.get("crm").await.unwrap().unwrap().expose(), "rt-1");
    assert_eq!(*log.lock().unwrap(), ["get", "rotate rt-0 -> rt-1"]);

    h.cred.invalidate(NOBODY);
    assert_eq!(value(&h.cred).await.unwrap(), "Bearer tok-2");
    let seen = idp.seen();
    assert_eq!(seen[0].form["grant_type"], "refresh_token");
    assert_eq!(seen[0].form["refresh_token"], "rt-0");
    assert_eq!(seen[1].form["refresh_token"], "rt-1");
    assert_eq!(sqlite.get("crm").await.unwrap().unwrap().expose(), "rt-2");
    let events = h.events.all();
    assert!(events.iter().all(|e| e.ok && e.kind == "refresh_token"));
}

#[tokio::test]
async fn a_failed_store_write_means_the_access_token_is_not_used() {
    let rotating = Behaviour { rotate: true, ..Behaviour::default() };
    let (idp, h, sqlite, _log, _dir) = setup(rotating, true, Some("rt-0")).await;
    let err = value(&h.cred).await.unwrap_err().to_string();
    assert!(err.contains("could not be stored") && err.contains("disk full"), "{err}");
    assert!(!err.contains("tok-1") && !err.contains("rt-1"));
    assert_eq!(idp.hits(), 1);
    assert_eq!(sqlite.get("crm").await.unwrap().unwrap().expose(), "rt-0");
    assert!(!h.events.all()[0].ok);
}

#[tokio::test]
async fn a_refresh_token_changed_meanwhile_is_not_overwritten() {
    let rotating = Behaviour { rotate: true, delay: Duration::from_millis(300), ..Behaviour::default() };
    let (_idp, h, sqlite, _log, _dir) = setup(rotating, false, Some("rt-0")).await;
    let cred = h.cred.clone();
    let pending = tokio::spawn(async move { value(&cred).await });
    // The operator stores a new token while the refresh is in flight.
    while _idp.hits() == 0 {
        tokio::task::yield_now().await;
    }
    sqlite.put("crm", &Secret::new("rt-operator")).await.unwrap();
    let err = pending.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("changed during the refresh"), "{err}");
    assert_eq!(sqlite.get("crm").await.unwrap().unwrap().expose(), "rt-operator");
}

#[tokio::test]
async fn an_unrotated_answer_keeps_the_stored_refresh_token() {
    let (_idp, h, sqlite, log, _dir) = setup(Behaviour::default(), false, Some("rt-0")).await;
    assert_eq!(value(&h.cred).await.unwrap(), "Bearer tok-1");
    assert_eq!(sqlite.get("crm").await.unwrap().unwrap().expose(), "rt-0");
    assert_eq!(*log.lock().unwrap(), ["get"]);
}

#[tokio::test]
async fn invalid_grant_says_how_to_store_a_new_refresh_token() {
    let rejected = Behaviour {
        fail: Some((400, "{\"error\":\"invalid_grant\",\"error_description\":\"Token is not active\"}")),
        ..Behaviour::default()
    };
    let (_idp, h, _sqlite, _log, _dir) = setup(rejected, false, Some("rt-0")).await;
    let err = value(&h.cred).await.unwrap_err();
    let CredentialError::Unavailable(why) = &err else { panic!("{err}") };
    assert_eq!(*why, FetchError::StoredTokenRejected { upstream: "crm".into() });
    let text = why.to_string();
    assert_eq!(
        text,
        "stored refresh token for upstream crm was rejected (invalid_grant); run `gatehouse credentials set crm --refresh-token-stdin`"
    );
    assert_eq!(h.events.all()[0].error.as_deref(), Some(text.as_str()));
}

#[tokio::test]
async fn no_stored_refresh_token_is_unavailable_with_instructions() {
    let (idp, h, _sqlite, _log, _dir) = setup(Behaviour::default(), false, None).await;
    let CredentialError::Unavailable(why) = value(&h.cred).await.unwrap_err() else { panic!("unavailable") };
    assert_eq!(why, FetchError::NotStored { upstream: "crm".into() });
    assert_eq!(why.to_string(), "no refresh token stored for upstream crm; run `gatehouse credentials set crm --refresh-token-stdin`");
    assert_eq!(idp.hits(), 0);
    assert_eq!(h.events.all()[0].kind, "refresh_token");
}
