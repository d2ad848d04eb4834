//! The `strata-proxy` binary: parses arguments, installs logging, runs the proxy until a signal.

use anyhow::Context as _;
use clap::Parser as _;
use strata_proxy::Args;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (builder, log) = args.resolve()?;
    let cache = args.cache_settings()?;
    let invalidation = args.invalidation()?;
    let wal = args.wal()?;
    let filter =
        tracing_subscriber::EnvFilter::try_new(&log).with_context(|| format!("bad log filter {log:?}"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    // Sessions run on their own threads (`--worker-threads`); this runtime accepts clients and
    // runs what outlives a session (metrics, pool upkeep, the WAL stream, Redis connections).
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start tokio")?;
    runtime.block_on(async move {
        // Follows the WAL for the proxy's whole life; dropping it stops the stream.
        let mut wal_invalidator = None;
        let builder = if cache.enabled {
            match &cache.semantic {
                Some(s) => tracing::info!(
                    embedder = %s.embedder.describe(),
                    threshold = s.threshold(),
                    "semantic tier on: reads with the semantic hint or of semantic tables that miss may be answered by a similar question's result"
                ),
                None => tracing::info!("semantic tier off (--semantic-model DIR or [semantic] turn it on)"),
            }
            let query_cache = strata_proxy::build_query_cache(&cache).await?;
            let registry = query_cache.registry().clone();
            let mut strata = strata_proxy::StrataCache::builder(query_cache).with_invalidation(invalidation);
            for name in &cache.custom_settings {
                strata = strata.with_custom_setting(name.clone());
            }
            let strata = strata.build()?;
            if let Some(config) = wal {
                // Through the session cache: its invalidation mode decides what a commit bumps.
                wal_invalidator =
                    Some(strata::WalInvalidator::start_for_sessions(config, strata.sessions())?);
            }
            builder.with_cache(std::sync::Arc::new(strata)).with_registry(registry)
        } else {
            builder
        };
        let proxy = builder.build()?;
        let bound = proxy.bind().await?;
        bound.run_until_signal().await?;
        drop(wal_invalidator);
        Ok(())
    })
}
