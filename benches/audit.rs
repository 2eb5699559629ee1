//! Audit log throughput: records per second through the writer (encode,
//! hash-chain, batch, write to a temp file), and the encode+hash step alone.

#![expect(clippy::expect_used, reason = "a benchmark has nobody to report a setup failure to; it aborts")]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatehouse::audit::{AuditConfig, AuditDecision, AuditEvent, AuditPath, ChainHash, Identity, RequestRecord, encode_record, open};
use time::OffsetDateTime;

/// Records written per writer iteration.
const RECORDS: u64 = 100_000;

fn request(n: u64) -> AuditEvent {
    AuditEvent::Request(RequestRecord {
        request_id: format!("01JDX7Q3ZK{n:016}"),
        client_addr: "10.1.2.3:51234".to_owned(),
        method: "GET".to_owned(),
        host: Some("api.internal.example.com".to_owned()),
        path: "/crm/v1/accounts/8f14e45f/contacts".to_owned(),
        route: Some("crm".to_owned()),
        decision: AuditDecision::Allow,
        rule: Some("crm-read".to_owned()),
        reason: None,
        identity: Some(Identity {
            iss: "https://idp.example.com/realms/corp".to_owned(),
            sub: "svc-reporting".to_owned(),
            client_id: Some("reporting-batch".to_owned()),
            scopes: vec!["crm.read".to_owned(), "openid".to_owned()],
            jti: Some("b7f0c1de-3a52-4c1e-9d2a-6f1e0c9b8a71".to_owned()),
        }),
        upstream: Some("crm".to_owned()),
        status: 200,
        bytes_in: 0,
        bytes_out: 4312,
        duration_ms: 12,
    })
}

fn writer_throughput(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let mut group = c.benchmark_group("audit_writer");
    group.throughput(Throughput::Elements(RECORDS));
    group.sample_size(10);
    group.bench_function("100k_request_records_to_file", |b| {
        b.to_async(&runtime).iter_custom(|iterations| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let dir = tempfile::tempdir().expect("tempdir");
                let cfg = AuditConfig::new(AuditPath::File(dir.path().join("audit.jsonl")));
                let (sink, writer) = open(&cfg).expect("open the audit log");
                let events: Vec<AuditEvent> = (0..RECORDS).map(request).collect();
                let started = Instant::now();
                let task = tokio::spawn(writer.run());
                for event in events {
                    sink.admit().await.expect("log writable");
                    sink.send(event).expect("writer running");
                }
                drop(sink);
                task.await.expect("writer task");
                total += started.elapsed();
            }
            total
        });
    });
    group.finish();
}

fn encode_and_hash(c: &mut Criterion) {
    let event = request(7);
    let ts = OffsetDateTime::now_utc();
    let mut prev = ChainHash::GENESIS;
    let mut out = Vec::with_capacity(1024);
    let mut group = c.benchmark_group("audit_encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("serialize_and_hash_one_request_record", |b| {
        b.iter(|| {
            out.clear();
            prev = encode_record(ts, &event, &prev, &mut out).expect("encode");
        });
    });
    group.finish();
}

criterion_group!(benches, encode_and_hash, writer_throughput);
criterion_main!(benches);
