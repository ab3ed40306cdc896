//! DNS discovery's write: what the `dns:` servers resolved to is applied the way a reload
//! applies a file, by the same single writer (the reload lock), minus reading the file.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use super::Reloader;

impl Reloader {
    /// Applies what the `dns:` servers of `upstream` resolved to (`found`: server as written,
    /// sorted addresses): the running config is applied again with the new sets, the way a
    /// reload applies a file, so joined backends ramp in and vanished ones drain politely.
    /// `stop` is the token of the config whose resolver looked them up: if a reload replaced
    /// that config meanwhile, nothing is written (the new config's resolver looks up at once).
    pub async fn rediscover(
        &self,
        stop: &CancellationToken,
        upstream: &str,
        found: Vec<(String, Vec<SocketAddr>)>,
    ) {
        let tasks = self.running.lock().await;
        if stop.is_cancelled() || tasks.is_cancelled() {
            return;
        }
        let (mut changed, mut first) = (false, true);
        for (spec, addrs) in found {
            if let Some(new) = self.proxy.discovered.set(upstream, &spec, addrs) {
                changed = true;
                first &= new;
            }
        }
        if !changed {
            return;
        }
        let config = self.proxy.snapshot().config.clone();
        let applied = self.proxy.apply(config);
        tracing::info!(
            upstream,
            joined = applied.joined.len(),
            left = applied.left.len(),
            "DNS answer changed the backends"
        );
        // The first answer is the upstream's start, where nothing ramps (as for static servers).
        self.settle(applied, !first);
        self.restart_checks(&tasks);
    }
}
