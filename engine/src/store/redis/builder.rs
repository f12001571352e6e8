//! Configuring and connecting a [`RedisStore`]: URL checks, TLS roots, and putting the store
//! together (backend, scripts, sentinel watchers, near cache). The fred settings every
//! connection shares are in `connect`. It sends no session commands.

use std::{sync::Arc, time::Duration};

use fred::{
    interfaces::LuaInterface,
    prelude::{Config, ServerConfig},
};

use super::{
    cluster::ClusterRouter,
    connect::{connected, FredSettings},
    epoch::TopologyEpoch,
    near::{Near, NearCache},
    scripts, sentinel, Backend, RedisStore,
};
use crate::error::{Error, ErrorKind, Result};

/// URL schemes the store accepts.
const SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
];

/// The longest command or connect timeout: longer ones only risk overflowing time arithmetic
/// (in this crate and in the client's) and never end a stalled call anyway.
const LONGEST_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Configures and connects a [`RedisStore`].
///
/// Accepted URLs: `redis://host:port[/db]`, `rediss://…` (TLS through rustls),
/// `redis-cluster://host:port?node=host:port&node=…`, and
/// `redis-sentinel://host:port?node=host:port&sentinelServiceName=NAME`.
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    url: String,
    settings: FredSettings,
    watch_sentinel: bool,
    wait_replicas: Option<(u32, Duration)>,
    tls_roots: Option<Vec<u8>>,
    near: Option<NearCache>,
}

impl RedisStoreBuilder {
    pub(super) fn new(url: String) -> Self {
        RedisStoreBuilder {
            url,
            settings: FredSettings {
                pool_size: 2,
                command_timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(2),
                reconnect_max_delay: Duration::from_secs(1),
                broadcast_capacity: 32,
            },
            watch_sentinel: true,
            wait_replicas: None,
            tls_roots: None,
            near: None,
        }
    }

    /// Turns on the near cache: sessions kept in this process, served with no Redis command, and
    /// kept coherent by Redis itself (client tracking over RESP3, which this switches every
    /// connection to). See [`NearCache`] for its bounds and the staleness bound, and the README
    /// for what it cannot cover. Needs Redis 6 or later.
    pub fn with_near_cache(mut self, cache: NearCache) -> Self {
        self.near = Some(cache);
        self
    }

    /// Number of multiplexed connections (per node) to spread commands over (default 2).
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.settings.pool_size = size.max(1);
        self
    }

    /// The upper bound on each store call, everything included (default 1 s): one deadline is
    /// set when a call (load, create, update, delete, regenerate, ping) starts, and holds during
    /// a sentinel failover, waits for a reconnecting cluster primary, redirections, re-applied
    /// writes and `WAIT` all count against it. A call that reaches it fails with
    /// [`ErrorKind::Timeout`], so a stalled Redis makes requests fail after this long instead of
    /// hanging. A write that timed out may still have been applied. Values over a day (such as
    /// `Duration::MAX` for "no timeout") are taken as a day, and zero as one millisecond.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.settings.command_timeout = timeout.clamp(Duration::from_millis(1), LONGEST_TIMEOUT);
        self
    }

    /// Upper bound on establishing a connection (default 2 s; at most a day, like the command
    /// timeout).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout.clamp(Duration::from_millis(1), LONGEST_TIMEOUT);
        self
    }

    /// Longest pause between reconnection attempts; attempts never stop (default 1 s).
    pub fn with_reconnect_max_delay(mut self, delay: Duration) -> Self {
        self.settings.reconnect_max_delay = delay;
        self
    }

    /// With a sentinel URL, subscribe to `+switch-master` on every sentinel and reconnect at once
    /// on a failover (default on). Without it the client only notices when the old master fails.
    pub fn with_sentinel_watch(mut self, on: bool) -> Self {
        self.watch_sentinel = on;
        self
    }

    /// Durability: after each session write (create, update, destroy, regenerate) wait until
    /// `replicas` replicas have acknowledged it, at most `timeout` (Redis `WAIT`, also cut short
    /// by the command timeout). A write that fewer replicas confirm fails with
    /// [`ErrorKind::NotDurable`] instead of being acknowledged. Off by default: it adds a
    /// replication round trip to every write.
    pub fn with_wait_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// For `rediss://` URLs: trust only the CA certificates in `pem` (PEM text, one or more
    /// certificates) instead of the system's roots, e.g. for a private CA.
    pub fn with_tls_root_certs_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_roots = Some(pem.into());
        self
    }

    /// Connects, failing with a clear error if the URL is invalid or no connection can be made
    /// within the connect timeout.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for an invalid URL or option;
    /// [`ErrorKind::Redis`](crate::ErrorKind::Redis) or [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) when no
    /// connection is made within the connect timeout.
    pub async fn connect(self) -> Result<RedisStore> {
        let mut config = self.config()?;
        let epoch = Arc::new(TopologyEpoch::default());
        let near = match &self.near {
            Some(cache) => {
                cache.validate()?;
                config.version = fred::types::RespVersion::RESP3;
                Some(Near::new(cache, epoch.clone()))
            }
            None => None,
        };
        if let Some(pem) = &self.tls_roots {
            if config.tls.is_none() {
                return Err(Error::new(
                    ErrorKind::Config,
                    "TLS root certificates were given but the URL does not use TLS; use rediss://",
                ));
            }
            config.tls = Some(tls_config(pem)?);
        }
        let mut settings = self.settings.clone();
        if near.is_some() {
            settings.broadcast_capacity = self
                .near
                .as_ref()
                .map_or(32, NearCache::invalidation_capacity);
        }
        let settings = &settings;
        let backend = if config.server.is_clustered() {
            Backend::Cluster(
                ClusterRouter::connect(config.clone(), settings.clone(), epoch.clone()).await?,
            )
        } else {
            let pool = settings
                .fred_builder(config.clone())
                .build_pool(settings.pool_size)
                .map_err(Error::from)?;
            pool.connect_pool();
            tokio::time::timeout(settings.connect_timeout, connected(pool.clients()))
                .await
                .map_err(|_| {
                    Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "could not connect to Redis at {} within {:?}; check that it runs \
                             and the URL is right",
                            redact(&self.url),
                            settings.connect_timeout
                        ),
                    )
                })?
                .map_err(Error::from)?;
            Backend::Pool(pool)
        };

        // Load the scripts on every primary up front so the first write on each node is one
        // EVALSHA rather than a NOSCRIPT round trip; the fallback in `run` covers later restarts.
        let primaries = match &backend {
            Backend::Pool(pool) => vec![pool.next().clone()],
            Backend::Cluster(router) => router.primaries(),
        };
        let mut sources: Vec<fred::bytes_utils::Str> =
            scripts::ALL.iter().map(|s| (*s).into()).collect();
        sources.extend(super::users::ALL.iter().map(|s| (*s).into()));
        if near.is_some() {
            let tracked = scripts::TrackedScripts::new();
            sources.extend([
                tracked.load.source,
                tracked.update_answering_state.source,
                tracked.update_answering_status.source,
            ]);
        }
        for client in primaries {
            for source in &sources {
                if let Err(err) = client.script_load::<(), _>(source.clone()).await {
                    tracing::warn!(%err, "could not preload session scripts; they load on first use");
                }
            }
        }
        let gate = sentinel::WriteGate::new(epoch.clone());
        let watchers = match (&config.server, &backend) {
            (
                ServerConfig::Sentinel {
                    hosts,
                    service_name,
                    ..
                },
                Backend::Pool(pool),
            ) if self.watch_sentinel => sentinel::watch_sentinels(
                settings,
                &config,
                hosts.clone(),
                service_name,
                pool,
                &gate,
            ),
            _ => Vec::new(),
        };
        if let Some(near) = &near {
            let clients = match &backend {
                Backend::Pool(pool) => pool.clients().to_vec(),
                Backend::Cluster(router) => router.all_clients(),
            };
            near.warm(&clients);
        }
        Ok(RedisStore::from_parts(
            backend,
            gate,
            epoch,
            settings.command_timeout,
            self.wait_replicas,
            watchers,
            near,
        ))
    }

    fn config(&self) -> Result<Config> {
        let scheme = self.url.split("://").next().unwrap_or_default();
        if !self.url.contains("://") || !SCHEMES.contains(&scheme) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "unsupported Redis URL scheme in {:?}; use one of {}",
                    redact(&self.url),
                    SCHEMES.join(", ")
                ),
            ));
        }
        Config::from_url(&self.url).map_err(|err| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "invalid Redis URL {:?}: {err}; expected redis://, rediss://, \
                     redis-cluster://host:port?node=host:port or \
                     redis-sentinel://host:port?sentinelServiceName=NAME",
                    redact(&self.url)
                ),
            )
        })
    }
}

fn tls_config(pem: &[u8]) -> Result<fred::types::config::TlsConfig> {
    use fred::rustls::{
        pki_types::{pem::PemObject, CertificateDer},
        ClientConfig, RootCertStore,
    };
    let bad = |what: String| {
        Error::new(
            ErrorKind::Config,
            format!("invalid TLS root certificates: {what}"),
        )
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no PEM certificate found".into()));
    }
    // An explicit provider: the process-wide default is ambiguous when several are linked.
    let provider = Arc::new(fred::rustls::crypto::ring::default_provider());
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(fred::types::config::TlsConnector::from(client).into())
}

/// Hides a password in a URL before it goes into an error message.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://user:secret@localhost:6379"),
            "redis://user:***@localhost:6379"
        );
        assert_eq!(redact("redis://localhost"), "redis://localhost");
    }

    #[tokio::test]
    async fn bad_urls_are_config_errors() {
        for url in [
            "http://localhost",
            "redis-sentinel://localhost:26379",
            "nonsense",
        ] {
            let err = RedisStore::connect(url).await.unwrap_err();
            assert!(err.is_config(), "{url}: {err}");
        }
    }

    #[test]
    fn tls_roots_must_hold_a_certificate() {
        assert!(tls_config(b"not a pem").unwrap_err().is_config());
    }
}
