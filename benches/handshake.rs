//! Guards the plain WebSocket upgrade path in process: one whole upgrade cycle per iteration
//! (connect, the HTTP/1.1 upgrade of RFC 6455 §4 through switchboard to an echo backend, one
//! 64 B message and its echo, the Close handshake of §5.5.1, and the teardown of both sockets),
//! next to the same cycle straight to the backend as the baseline.
//!
//! switchboard runs from the library (`switchboard::run` on a listener bound here) on a
//! multi-threaded tokio runtime, as the binary does; the echo backend runs on the same runtime,
//! and the client drives each cycle from the bench thread with `block_on`. Loopback, one cycle
//! at a time: the time per iteration is latency (both processes' work plus the wake-ups between
//! them), so compare `switchboard` with `direct` from the same run. `upgrade_cost` counts the
//! instructions and syscalls of the same cycle.
//!
//! Run: `cargo bench --bench handshake`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use switchboard::metrics::Metrics;
use switchboard::{Listeners, Shutdown};
use tokio::net::TcpListener;

#[path = "support/mod.rs"]
mod support;
use support::{echo_backend, upgrade_cycle};

fn upgrade(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let shutdown = Shutdown::new();
    let (backend, proxy) = runtime.block_on(async {
        let backend = echo_backend().await;
        let config = switchboard::config::from_toml_str(
            &format!(
                "listen = \"127.0.0.1:0\"\n[drain]\nspread = \"0s\"\n[[route]]\nupstream = \"echo\"\n\
                 [upstream.echo]\nbalance = \"least-conn\"\nservers = [\"{backend}\"]\n"
            ),
            "handshake.toml",
        )
        .expect("bench config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = listener.local_addr().expect("addr");
        tokio::spawn(switchboard::run(
            config,
            Listeners {
                plain: Some(listener),
                tls: None,
                admin: None,
            },
            shutdown.clone(),
            Metrics::new(),
        ));
        (backend, proxy)
    });
    // The listener was bound before `run` started: the first cycle is the readiness check.
    runtime
        .block_on(upgrade_cycle(proxy))
        .expect("an upgrade through switchboard");

    let mut group = c.benchmark_group("upgrade_cycle");
    for (name, addr) in [("direct", backend), ("switchboard", proxy)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime
                    .block_on(upgrade_cycle(addr))
                    .expect("an upgrade cycle")
            })
        });
    }
    group.finish();
    shutdown.trigger();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(10));
    targets = upgrade
}
criterion_main!(benches);
