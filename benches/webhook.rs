//! HMAC verification + body decoding + event parsing: the CPU work of every delivery, for
//! payloads of 5 KB, 100 KB and 5 MB (GitHub's example merged-PR payload, padded).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use deploy_webhook::github::events::parse_event;
use deploy_webhook::http::body::event_json;
use deploy_webhook::http::signature::WebhookSecrets;
use serde_json::{Value, json};

fn payload_of_size(size: usize) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/webhooks/pull_request.closed.json");
    let mut payload: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    payload["pull_request"]["merged"] = json!(true);
    payload["pull_request"]["body"] = json!("");
    let base = serde_json::to_vec(&payload).unwrap().len();
    // Pad the PR body (real large deliveries are large through bodies and lists).
    payload["pull_request"]["body"] = json!("lorem ipsum ".repeat(size.saturating_sub(base) / 12 + 1));
    serde_json::to_vec(&payload).unwrap()
}

fn verify_and_parse(c: &mut Criterion) {
    let secrets = WebhookSecrets::from_list("bench-secret").unwrap();
    let mut group = c.benchmark_group("verify_decode_parse");
    for (name, size) in [("5KB", 5 * 1024), ("100KB", 100 * 1024), ("5MB", 5 * 1024 * 1024)] {
        let body = payload_of_size(size);
        let signature = secrets.sign(&body);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                secrets.verify(Some(signature.as_bytes()), &body).unwrap();
                let json = event_json(Some("application/json"), &body).unwrap();
                parse_event("pull_request", &json).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = verify_and_parse
}
criterion_main!(benches);
