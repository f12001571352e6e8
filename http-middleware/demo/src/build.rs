//! Building the demo's engine and service from its arguments, for every mode: native, the
//! koa-session-redis3 profile and upgrade mode.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tessera_engine::{
    store::MemoryStringStore, CapPolicy, KeySchema, MemoryStore, NearCache, RedisStore, SessionCap,
    SessionConfig, SessionEngine, UserKey,
};
use tower_layer::Layer;

use super::{BoxError, DemoApp, DemoArgs, OnSessionCap};
use tessera_middleware::{koa::KoaCompat, SessionLayer, SessionService, SigningKeys};

/// Builds the engine the arguments describe (connecting to Redis if a URL is given): the native
/// one, or with `--compat` (and no `--upgrade`) the seed's layout.
pub async fn build_engine(args: &DemoArgs) -> Result<SessionEngine, BoxError> {
    if args.compat.is_some() && !args.upgrade {
        let compat = koa_compat(args)?;
        return Ok(match connect(args).await? {
            None => compat.engine(MemoryStringStore::new())?,
            Some(store) => compat.engine(store)?,
        });
    }
    let schema = if args.upgrade {
        &args.native_key_schema
    } else {
        &args.key_schema
    };
    let cap = (args.max_sessions_per_user > 0).then_some(SessionCap {
        max: args.max_sessions_per_user,
        policy: match args.on_session_cap {
            OnSessionCap::Evict => CapPolicy::EvictLeastRecent,
            OnSessionCap::Refuse => CapPolicy::Refuse,
        },
    });
    let config = SessionConfig::default()
        .with_key_schema(KeySchema::new(schema)?)
        .with_idle_ttl(Duration::from_secs(args.ttl.max(1)))
        .with_user_key(user_key(args)?)
        .with_session_cap(cap);
    Ok(match connect(args).await? {
        None => SessionEngine::new(MemoryStore::new(), config)?,
        Some(store) => SessionEngine::new(store, config)?,
    })
}

/// The key behind user slots and device handles: derived from the signing secret (the first
/// one), so every instance with the same secrets agrees; random without one, like the signing
/// key. Rotating the first secret sends new logins to new slots (see the README).
fn user_key(args: &DemoArgs) -> Result<UserKey, BoxError> {
    use sha2::{Digest, Sha256};
    let secret: Vec<u8> = match args.secrets.first() {
        Some(secret) => {
            Sha256::digest([b"tessera demo user key\0".as_slice(), secret.as_bytes()].concat())
                .to_vec()
        }
        None => {
            let mut bytes = vec![0u8; 32];
            getrandom::fill(&mut bytes).map_err(|err| format!("no random source: {err}"))?;
            bytes
        }
    };
    Ok(UserKey::new(&secret)?)
}

async fn connect(args: &DemoArgs) -> Result<Option<RedisStore>, BoxError> {
    let Some(url) = &args.redis else {
        if args.near_cache_entries > 0 {
            return Err(
                "--near-cache-entries needs --redis: the memory store is already local".into(),
            );
        }
        return Ok(None);
    };
    if args.near_cache_entries > 0 && args.compat.is_some() {
        // The Node side writes keys the cache would have to hear about through a layout it does
        // not track; the profile always reads through.
        return Err("--near-cache-entries cannot be combined with --compat".into());
    }
    let mut builder = RedisStore::builder(url.clone())
        .with_command_timeout(Duration::from_millis(args.redis_timeout_ms.max(1)));
    if args.near_cache_entries > 0 {
        builder = builder.with_near_cache(
            NearCache::new(args.near_cache_entries)
                .with_max_stale(Duration::from_millis(args.near_cache_max_stale_ms)),
        );
    }
    Ok(Some(builder.connect().await?))
}

fn koa_compat(args: &DemoArgs) -> Result<KoaCompat, BoxError> {
    if args.secrets.is_empty() {
        return Err("--compat koa-session-redis3 needs the Koa app's keys: pass --secret".into());
    }
    let compat = KoaCompat::new(&args.secrets)?
        .with_key_schema(&args.key_schema)
        .with_ttl(Duration::from_secs(args.ttl.max(1)))
        .with_secure(args.cookie_secure);
    Ok(match args.upgrade_forward {
        Some(window) => compat.with_upgrade_forward(window),
        None => compat,
    })
}

/// Builds the service for every mode: native, the koa-session-redis3 profile, or upgrade mode
/// (the engine is built here, as [`build_engine`] does, and returned beside the service).
pub async fn build_service(
    args: &DemoArgs,
    metrics: Option<PrometheusHandle>,
) -> Result<(SessionEngine, SessionService<DemoApp>), BoxError> {
    let engine = build_engine(args).await?;
    if args.compat.is_none() {
        return Ok((engine.clone(), build_app(engine, args, metrics)?));
    }
    let compat = koa_compat(args)?;
    let layer = if args.upgrade {
        let builder = SessionLayer::builder(engine.clone(), SigningKeys::new(&args.secrets)?)
            .with_secure(args.cookie_secure);
        match connect(args).await? {
            None => builder.with_koa_session_redis3_upgrade(MemoryStringStore::new(), &compat),
            Some(store) => builder.with_koa_session_redis3_upgrade(store, &compat),
        }
        .build()?
    } else {
        compat.layer(engine.clone())?
    };
    Ok((engine.clone(), layer.layer(DemoApp::new(engine, metrics))))
}

/// Builds the full service: the demo routes behind the session layer.
pub fn build_app(
    engine: SessionEngine,
    args: &DemoArgs,
    metrics: Option<PrometheusHandle>,
) -> Result<SessionService<DemoApp>, BoxError> {
    let keys = if args.secrets.is_empty() {
        tracing::warn!(
            "no --secret given: signing cookies with a random secret; they stop working when \
             this process exits"
        );
        SigningKeys::random()
    } else {
        SigningKeys::new(&args.secrets)?
    };
    let layer = SessionLayer::builder(engine.clone(), keys)
        .with_secure(args.cookie_secure)
        .build()?;
    Ok(layer.layer(DemoApp::new(engine, metrics)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Compat;

    const KEY: &str = "an app key of more than thirty-two bytes";

    #[test]
    fn compat_flags_parse() {
        let a = DemoArgs::try_from_args([
            "demo",
            "--compat",
            "koa-session-redis3",
            "--upgrade",
            "--secret",
            KEY,
        ])
        .unwrap();
        assert_eq!(
            (a.compat, a.upgrade),
            (Some(Compat::KoaSessionRedis3), true)
        );
        assert_eq!(a.native_key_schema, "tessera:sess:");
        assert!(
            DemoArgs::try_from_args(["demo", "--upgrade"]).is_err(),
            "needs --compat"
        );
        assert!(DemoArgs::try_from_args(["demo", "--compat", "koa"]).is_err());
        let plain = DemoArgs::try_from_args(["demo"]).unwrap();
        assert_eq!((plain.compat, plain.upgrade), (None, false));
    }

    #[tokio::test]
    async fn the_profile_needs_the_app_keys_and_valid_options() {
        let no_keys = DemoArgs::for_tests()
            .with_secrets(Vec::new())
            .with_koa_session_redis3("s", false);
        let err = build_service(&no_keys, None).await.unwrap_err();
        assert!(err.to_string().contains("--secret"), "{err}");
        let braces = DemoArgs::for_tests().with_koa_session_redis3("a{b}", false);
        assert!(build_service(&braces, None).await.is_err());
        for upgrade in [false, true] {
            let ok = DemoArgs::for_tests().with_koa_session_redis3("s", upgrade);
            assert!(build_service(&ok, None).await.is_ok());
        }
    }
}
