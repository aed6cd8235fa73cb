//! Micro-benchmarks of the per-message path without sockets: classifying a
//! client frame, rewriting `src`, and routing through the router to bounded
//! queues (private, room fan-out), with the router's lock and through a
//! session's route cache (no lock), on one thread and on two at once.
//! `cargo bench --bench routing --features bench-internals` (the feature
//! re-exports the otherwise private routing core for this file).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wssgate::bench_support::{
    ClientInfo, DuplicatePolicy, Events, Metrics, Outbox, Request, RouteCache, Router,
    RouterConfig, SessionHandle, classify,
};
use wssgate::claim;

const PRIVATE: &str =
    r#"{"src":"C1","dst":"C2","msg":"hello, this is an eighty byte chat message.."}"#;

fn router() -> Router {
    Router::new(
        RouterConfig {
            on_duplicate: DuplicatePolicy::Reject,
            presence: false,
            max_rooms_per_session: 64,
        },
        Arc::new(Metrics::new()),
        Events::new(),
    )
}

fn session(r: &Router, name: &str, queue: usize) -> (Arc<SessionHandle>, Arc<Outbox>) {
    let rx = Arc::new(Outbox::new(queue));
    let tx = rx.clone();
    let info = ClientInfo {
        remote: "127.0.0.1:1".parse().unwrap(),
        listener: "ws".into(),
        tls: false,
        connected_at: SystemTime::now(),
    };
    let handle = r
        .admit(
            claim(None, Some(name.as_bytes())).unwrap(),
            info,
            tx,
            CancellationToken::new(),
        )
        .unwrap();
    (handle, rx)
}

fn classification(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("plain text", |b| {
        b.iter(|| classify(black_box("hello server, plain text")))
    });
    g.bench_function("private json", |b| b.iter(|| classify(black_box(PRIVATE))));
    g.bench_function("private json + forward", |b| {
        b.iter(|| match classify(black_box(PRIVATE)) {
            Request::Private(e) => e.forward("C9"),
            _ => unreachable!(),
        })
    });
    g.finish();
}

fn routing(c: &mut Criterion) {
    let r = router();
    let mut receivers = Vec::new();
    for i in 0..100 {
        receivers.push(session(&r, &format!("c{i}"), 1 << 20));
    }
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    g.bench_function("private to one of 100", |b| {
        b.iter_batched(
            || (),
            |()| r.send_to_name(black_box("c42"), || Message::text(PRIVATE)),
            BatchSize::SmallInput,
        );
        // Keep the queue from filling: drain what was routed.
        while receivers[42].1.try_pop().is_some() {}
    });
    let mut cache = RouteCache::default();
    g.bench_function("private to one of 100 (route cache)", |b| {
        b.iter_batched(
            || (),
            |()| r.send_to_name_cached(&mut cache, black_box("c42"), || Message::text(PRIVATE)),
            BatchSize::SmallInput,
        );
        while receivers[42].1.try_pop().is_some() {}
    });
    // Two threads routing at once, each to its own receiver: with the lock
    // they share its reader count; with caches they share nothing global.
    for cached in [false, true] {
        let name = if cached {
            "private, 2 threads at once (route cache)"
        } else {
            "private, 2 threads at once (lock)"
        };
        g.throughput(Throughput::Elements(2));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| two_threads(&r, &receivers, iters, cached))
        });
    }
    g.finish();

    let r = router();
    let members: Vec<_> = (0..1000)
        .map(|i| session(&r, &format!("m{i}"), 1 << 16))
        .collect();
    for (h, _) in &members {
        r.join(h, "#room").unwrap();
    }
    let mut g = c.benchmark_group("room");
    g.throughput(Throughput::Elements(999));
    let sender = members[0].0.clone();
    let mut members = members;
    g.bench_function("fan-out to 999", |b| {
        b.iter(|| {
            let d = r
                .send_to_room(&sender, black_box("#room"), || Message::text(PRIVATE))
                .unwrap();
            for (_, rx) in members.iter_mut().skip(1) {
                let _ = rx.try_pop();
            }
            d
        })
    });
    g.finish();
}

/// Time for two threads to route `iters` private messages each (to c1 and
/// c2), draining their receivers every 1,000 messages.
fn two_threads(
    r: &Router,
    receivers: &[(Arc<SessionHandle>, Arc<Outbox>)],
    iters: u64,
    cached: bool,
) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for dst in ["c1", "c2"] {
            let rx = &receivers[if dst == "c1" { 1 } else { 2 }].1;
            s.spawn(move || {
                let mut cache = RouteCache::default();
                for i in 0..iters {
                    if cached {
                        r.send_to_name_cached(&mut cache, black_box(dst), || {
                            Message::text(PRIVATE)
                        });
                    } else {
                        r.send_to_name(black_box(dst), || Message::text(PRIVATE));
                    }
                    if i % 1000 == 999 {
                        while rx.try_pop().is_some() {}
                    }
                }
                while rx.try_pop().is_some() {}
            });
        }
    });
    start.elapsed()
}

criterion_group!(benches, classification, routing);
criterion_main!(benches);
