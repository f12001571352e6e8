//! The per-user cases, each run on every topology by per_user_tests!.

use super::*;

// ---- cases ----

pub(crate) async fn devices_revoke_and_logout_everywhere(topo: &Topo) {
    let engine = topo.engine(None);
    let a = login(&engine, "ada", "phone").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = login(&engine, "ada", "laptop").await.unwrap();
    let c = login(&engine, "ada", "tablet").await.unwrap();
    let other = login(&engine, "bob", "desk").await.unwrap();
    assert!(a.slot().is_some() && a.slot() == b.slot() && a.slot() != other.slot());
    assert!(
        !a.to_string().contains("ada"),
        "the user id is not in the cookie"
    );

    let devices = engine.session(Some(b)).devices().await.unwrap();
    assert_eq!(devices.len(), 3, "{}: {devices:?}", topo.name);
    assert_eq!(
        devices.last().unwrap().user_agent.as_deref(),
        Some("phone"),
        "newest first"
    );
    assert!(devices[0].created >= devices[2].created);
    let current: Vec<_> = devices.iter().filter(|d| d.current).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].user_agent.as_deref(), Some("laptop"));
    for d in &devices {
        for id in [a, b, c] {
            assert!(
                !id.to_string().contains(d.handle.as_str()),
                "a handle is not the id"
            );
        }
    }
    let phone = devices
        .iter()
        .find(|d| d.user_agent.as_deref() == Some("phone"))
        .unwrap();

    // Another user cannot revoke it; a made-up handle is nobody's.
    let bob = engine.session(Some(other));
    assert_eq!(
        bob.revoke_device(phone.handle.as_str()).await.unwrap(),
        Revoked::NotTheCallers
    );
    assert_eq!(
        bob.revoke_device("AAAAAAAAAAAAAAAAAAAA").await.unwrap(),
        Revoked::NotTheCallers
    );
    assert!(usable(&engine, a).await);

    let laptop = engine.session(Some(b));
    assert_eq!(
        laptop.revoke_device(phone.handle.as_str()).await.unwrap(),
        Revoked::Revoked
    );
    assert!(!usable(&engine, a).await, "a revoked session is logged out");
    assert_eq!(
        laptop.revoke_device(phone.handle.as_str()).await.unwrap(),
        Revoked::AlreadyGone
    );
    assert_eq!(engine.session(Some(b)).devices().await.unwrap().len(), 2);

    // A guest has no devices.
    let guest = engine.session(None);
    assert_eq!(
        guest.devices().await.unwrap_err().kind(),
        ErrorKind::NotLoggedIn
    );

    // Everywhere but here, then everywhere.
    let laptop = engine.session(Some(b));
    assert_eq!(laptop.logout_everywhere(true).await.unwrap(), 1);
    assert_eq!(laptop.commit().await.unwrap().cookie, CookieAction::Keep);
    assert!(!usable(&engine, c).await && usable(&engine, b).await);
    let laptop = engine.session(Some(b));
    assert_eq!(laptop.logout_everywhere(false).await.unwrap(), 1);
    assert_eq!(laptop.commit().await.unwrap().cookie, CookieAction::Clear);
    assert!(!usable(&engine, b).await);
    assert!(usable(&engine, other).await, "another user is untouched");
    assert_eq!(topo.session_keys("ada").unwrap_or(0), 0);
    assert_eq!(
        topo.index_pttl("ada").unwrap_or(-2),
        -2,
        "the empty index is deleted"
    );

    // A logout of one device removes its entry; a regenerate keeps it listed under the new id.
    let d = login(&engine, "ada", "phone").await.unwrap();
    let e = login(&engine, "ada", "laptop").await.unwrap();
    let s = engine.session(Some(d));
    s.regenerate().await.unwrap();
    let CookieAction::Set { id: d2, .. } = s.commit().await.unwrap().cookie else {
        panic!("a regenerate sets the cookie")
    };
    assert_eq!(d2.slot(), d.slot(), "it stays in the user's slot");
    assert!(!usable(&engine, d).await && usable(&engine, d2).await);
    let devices = engine.session(Some(d2)).devices().await.unwrap();
    assert_eq!(devices.len(), 2);
    assert!(devices
        .iter()
        .any(|x| x.current && x.user_agent.as_deref() == Some("phone")));
    let s = engine.session(Some(e));
    s.destroy().await.unwrap();
    s.commit().await.unwrap();
    assert_eq!(engine.session(Some(d2)).devices().await.unwrap().len(), 1);
    assert_eq!(engine.user_devices("ada").await.unwrap().len(), 1);
    assert_eq!(engine.revoke_user("ada").await.unwrap(), 1);
    assert_eq!(topo.session_keys("ada").unwrap_or(0), 0);
}

pub(crate) async fn parallel_logins_never_beat_the_cap(topo: &Topo, policy: CapPolicy) {
    let engine = topo.engine(cap(3, policy));
    let user = match policy {
        CapPolicy::Refuse => "refused-user",
        _ => "evicted-user",
    };
    let done = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicUsize::new(0));
    // Sample the live count while the logins run: from the device list (one atomic script) and,
    // on Redis, by counting the keys in the user's slot (one atomic script on the node).
    let sampler = {
        let (engine, done, max_seen) = (engine.clone(), done.clone(), max_seen.clone());
        let index_sampler = topo.redis.is_some();
        let port = topo.port_of(&topo.index(user));
        let pattern = format!("{}:*", topo.index(user));
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let listed = engine.user_devices(user).await.unwrap().len();
                max_seen.fetch_max(listed, Ordering::Relaxed);
                if let (true, Some(port)) = (index_sampler, port) {
                    let pattern = pattern.clone();
                    let keys: usize = blocking(move || {
                        let script = "local c, cur = 0, '0' repeat local r = redis.call('SCAN', cur, 'MATCH', ARGV[1], 'COUNT', 1000) cur = r[1] c = c + #r[2] until cur == '0' return c";
                        redis_cli(port, &["EVAL", script, "0", &pattern]).trim().parse().unwrap()
                    })
                    .await;
                    max_seen.fetch_max(keys, Ordering::Relaxed);
                }
            }
        })
    };
    let logins: Vec<_> = (0..50)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move { login(&engine, user, &format!("device {i}")).await })
        })
        .collect();
    let mut ok = Vec::new();
    let mut refused = 0;
    for task in logins {
        match task.await.unwrap() {
            Ok(id) => ok.push(id),
            Err(err) if err.kind() == ErrorKind::SessionCap => refused += 1,
            Err(err) => panic!("{}: login failed: {err}", topo.name),
        }
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let max_seen = max_seen.load(Ordering::Relaxed);
    assert!(
        max_seen <= 3,
        "{}: {max_seen} live sessions at once with cap 3",
        topo.name
    );
    let mut live = 0;
    for id in &ok {
        live += usize::from(usable(&engine, *id).await);
    }
    assert_eq!(live, 3, "{}", topo.name);
    match policy {
        CapPolicy::Refuse => {
            assert_eq!((ok.len(), refused), (3, 47), "{}", topo.name);
        }
        _ => {
            assert_eq!((ok.len(), refused), (50, 0), "{}", topo.name);
            // Every evicted cookie is refused from now on (47 of them).
            assert_eq!(ok.len() - live, 47);
        }
    }
    assert_eq!(engine.user_devices(user).await.unwrap().len(), 3);
    if let Some(keys) = topo.session_keys(user) {
        assert_eq!(keys, 3, "{}: no ghost keys", topo.name);
    }
}

pub(crate) async fn cap_evicts(topo: &Topo) {
    parallel_logins_never_beat_the_cap(topo, CapPolicy::EvictLeastRecent).await;
}

pub(crate) async fn cap_refuses(topo: &Topo) {
    parallel_logins_never_beat_the_cap(topo, CapPolicy::Refuse).await;
}

/// Saves, renewals and regenerates run on a user's sessions while another request logs the
/// user out everywhere: once that returns, nothing of the user is usable or comes back.
pub(crate) async fn revoke_all_races_in_flight_requests(topo: &Topo) {
    // Renew on every request, so the racing reads and writes all move TTLs and the index.
    let config = config().with_renew_below(1.0);
    let engine = SessionEngine::from_arc(topo.store.clone(), config).unwrap();
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(login(&engine, "racer", &format!("d{i}")).await.unwrap());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let latest: Arc<Mutex<Vec<SessionId>>> = Arc::new(Mutex::new(ids.clone()));
    let workers: Vec<_> = (0..ids.len())
        .map(|i| {
            let (engine, stop, latest) = (engine.clone(), stop.clone(), latest.clone());
            tokio::spawn(async move {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let id = latest.lock()[i];
                    let s = engine.session(Some(id));
                    let _ = s.get::<u32>("n").await;
                    match n % 3 {
                        0 => drop(s.insert("n", &n).await),
                        1 => {}
                        _ => drop(s.regenerate().await),
                    }
                    if let Ok(c) = s.commit().await {
                        if let CookieAction::Set { id, .. } = c.cookie {
                            latest.lock()[i] = id;
                        }
                    }
                    n += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let revoker = engine.session(Some(login(&engine, "racer", "admin").await.unwrap()));
    revoker.logout_everywhere(false).await.unwrap();
    // Whatever was in flight when it returned may still land now; none of it may revive.
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    // A worker whose session vanished under it may start a new guest session (its insert
    // then has nowhere else to go); no session of the user's may be usable.
    let latest = latest.lock().clone();
    for id in latest.into_iter().chain(ids) {
        let logged_in = id.slot().is_some() && usable(&engine, id).await;
        assert!(!logged_in, "{}: a session of the user survived", topo.name);
    }
    assert!(engine.user_devices("racer").await.unwrap().is_empty());
    if let Some(keys) = topo.session_keys("racer") {
        assert_eq!(keys, 0, "{}: a key was recreated", topo.name);
        assert_eq!(
            topo.index_pttl("racer"),
            Some(-2),
            "{}: the index came back",
            topo.name
        );
    }
}

/// Sessions that expire disappear from the list with no cleanup job, revoking them is no
/// error, and the index key expires with the last of them.
pub(crate) async fn expired_sessions_leave_no_trace(topo: &Topo) {
    let config = config().with_idle_ttl(Duration::from_millis(800));
    let engine = SessionEngine::from_arc(topo.store.clone(), config).unwrap();
    let a = login(&engine, "brief", "a").await.unwrap();
    let b = login(&engine, "brief", "b").await.unwrap();
    let handles: Vec<_> = engine
        .user_devices("brief")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.handle)
        .collect();
    assert_eq!(handles.len(), 2);
    if let Some(pttl) = topo.index_pttl("brief") {
        assert!(
            (1..=800).contains(&pttl),
            "{}: index PTTL {pttl}",
            topo.name
        );
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(engine.user_devices("brief").await.unwrap().is_empty());
    assert!(!usable(&engine, a).await && !usable(&engine, b).await);
    // The session handle is gone too, so a revoke from it needs a live session: log in again.
    let c = login(&engine, "brief", "c").await.unwrap();
    let s = engine.session(Some(c));
    for h in &handles {
        assert_eq!(
            s.revoke_device(h.as_str()).await.unwrap(),
            Revoked::AlreadyGone
        );
    }
    assert_eq!(s.devices().await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    if let Some(pttl) = topo.index_pttl("brief") {
        assert_eq!(pttl, -2, "{}: the index outlived its sessions", topo.name);
    }
}

/// Each per-user operation is one atomic store step, except a renewal (the index's TTL, then
/// the session) and a login that leaves a guest session in another cluster slot (the guest
/// deleted, then the login). A failure between steps leaves something bounded.
pub(crate) async fn a_failure_between_steps_leaves_a_bound(topo: &Topo) {
    let faulty = FaultStore::new(topo.store.clone(), Fault::PassThrough);
    let config = config().with_renew_below(1.0);
    let engine = SessionEngine::new(faulty.clone(), config).unwrap();
    let id = login(&engine, "faulty", "a").await.unwrap();

    // The renewal's second step fails: the index has moved ahead, the session has not. The
    // session is still listed and usable; the index lives at least as long as it.
    // (A renewal is due once the expiry would move: let a few milliseconds pass.)
    tokio::time::sleep(Duration::from_millis(5)).await;
    faulty.fail_next("update");
    let s = engine.session(Some(id));
    s.insert("x", &1u8).await.unwrap();
    assert!(s.commit().await.is_err());
    assert!(usable(&engine, id).await);
    assert_eq!(engine.user_devices("faulty").await.unwrap().len(), 1);
    if let (Some(index_ttl), Some(port)) =
        (topo.index_pttl("faulty"), topo.port_of(&engine.key(&id)))
    {
        let session_ttl: i64 = redis_cli(port, &["PTTL", &engine.key(&id)])
            .trim()
            .parse()
            .unwrap();
        assert!(
            index_ttl >= session_ttl,
            "{}: index {index_ttl} < session {session_ttl}",
            topo.name
        );
    }
    // The renewal's first step fails: nothing changed, the request fails and can be retried.
    tokio::time::sleep(Duration::from_millis(5)).await;
    faulty.fail_next("touch_user");
    let s = engine.session(Some(id));
    s.insert("x", &2u8).await.unwrap();
    assert!(s.commit().await.is_err());
    let s = engine.session(Some(id));
    assert_eq!(
        s.get::<u8>("x").await.unwrap(),
        None,
        "the failed write did not land"
    );
    s.insert("x", &3u8).await.unwrap();
    s.commit().await.unwrap();
    assert_eq!(
        engine.session(Some(id)).get::<u8>("x").await.unwrap(),
        Some(3)
    );

    // A login whose store step fails changes nothing: the guest session stays.
    let guest = engine.session(None);
    guest.insert("cart", &7u8).await.unwrap();
    let CookieAction::Set { id: gid, .. } = guest.commit().await.unwrap().cookie else {
        panic!()
    };
    faulty.fail_next("bind");
    let s = engine.session(Some(gid));
    assert!(s.login("faulty", DeviceInfo::default()).await.is_err());
    assert!(
        usable(&engine, gid).await,
        "{}: the guest session is kept",
        topo.name
    );
    assert_eq!(engine.user_devices("faulty").await.unwrap().len(), 1);
    // The next login completes.
    let s = engine.session(Some(gid));
    s.login("faulty", DeviceInfo::default()).await.unwrap();
    s.commit().await.unwrap();
    assert_eq!(engine.user_devices("faulty").await.unwrap().len(), 2);
    assert!(
        !usable(&engine, gid).await,
        "the login replaced the guest session"
    );

    // A revoke that fails did nothing; retried, it does all.
    faulty.fail_next("revoke");
    assert!(engine.revoke_user("faulty").await.is_err());
    assert_eq!(engine.user_devices("faulty").await.unwrap().len(), 2);
    assert_eq!(engine.revoke_user("faulty").await.unwrap(), 2);
    assert_eq!(topo.session_keys("faulty").unwrap_or(0), 0);
}
