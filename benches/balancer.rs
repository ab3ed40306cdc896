//! Guards the cost of `Balancer::pick` (plus dropping its lease), which runs once per plain
//! request and once per WebSocket handshake, for each strategy at 4, 64 and 1024 backends.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use switchboard::balancer::hash::hash_bytes;
use switchboard::balancer::{Balancer, Tried};
use switchboard::config;
use switchboard::metrics::Metrics;

fn balancer(strategy: &str, n: usize) -> Balancer {
    let servers: Vec<String> = (0..n)
        .map(|i| format!("\"10.{}.{}.{}:8000\"", i / 65536, (i / 256) % 256, i % 256))
        .collect();
    let key = if strategy == "sticky-hash" {
        "hash_key = \"ip\"\n"
    } else {
        ""
    };
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[upstream.u]\nbalance = \"{strategy}\"\n{key}servers = [{}]\n",
        servers.join(", ")
    );
    let config = config::from_toml_str(&text, "bench").expect("bench config");
    Balancer::new(
        &config.upstreams[0],
        Duration::from_secs(10),
        &Metrics::new(),
    )
}

fn pick(c: &mut Criterion) {
    let keys: Vec<u64> = (0..1024u32).map(|i| hash_bytes(&i.to_le_bytes())).collect();
    let mut group = c.benchmark_group("pick");
    for strategy in ["least-conn", "sticky-hash", "round-robin"] {
        for n in [4usize, 64, 1024] {
            let b = balancer(strategy, n);
            // A realistic background: every backend already holds some live tunnels.
            let _held: Vec<_> = (0..n * 4)
                .map(|i| b.pick(Some(keys[i % keys.len()]), &mut Tried::default()))
                .collect();
            let mut i = 0usize;
            group.bench_with_input(BenchmarkId::new(strategy, n), &n, |bench, _| {
                bench.iter(|| {
                    i = i.wrapping_add(1);
                    let key = keys[i % keys.len()];
                    black_box(b.pick(Some(key), &mut Tried::default()).map(|p| p.index))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
