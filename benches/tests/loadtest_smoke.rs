//! Runs the load benchmark's library entry point briefly against a real redis-server and checks
//! what it measured: no failed requests, real traffic, and the Redis round trips per request that
//! each system's design implies (Tessera: one `HGETALL` to read, plus one `EVALSHA` to write; one
//! `EVALSHA` to create).

use std::time::Duration;

use tessera_benches::loadtest::{run, Config, Measurement, Report, Scenario, System};

/// A `--quick`-like configuration, smaller still so the test stays short in a debug build.
fn smoke(systems: &[System], scenarios: &[Scenario]) -> Config {
    Config::quick()
        .with_systems(systems)
        .with_scenarios(scenarios)
        .with_timing(Duration::from_millis(700), Duration::from_millis(300))
        .with_load(4, 64)
        .with_progress(false)
        .with_svg(None)
}

fn get(report: &Report, system: System, scenario: Scenario) -> &Measurement {
    report.get(system, scenario).unwrap_or_else(|| {
        panic!(
            "no measurement for {system} {scenario}:\n{}",
            report.table()
        )
    })
}

fn assert_near(report: &Report, what: &str, actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() <= 0.15,
        "{what}: {actual:.3}, expected {expected} ± 0.15\n{}",
        report.table()
    );
}

fn assert_sound(report: &Report, m: &Measurement) {
    let name = format!("{} {}", m.system, m.scenario);
    assert_eq!(m.errors, 0, "{name} had failures\n{}", report.table());
    // Even a debug build on a loaded machine manages far more than this in 0.7 s.
    assert!(
        m.requests >= 50,
        "{name}: only {} requests\n{}",
        m.requests,
        report.table()
    );
    assert!(
        m.rps > 0.0 && m.p50 > Duration::ZERO && m.p99 >= m.p50,
        "{name}: {m:?}"
    );
}

#[test]
fn loadtest_measures_every_system_and_tessera_round_trips() {
    let report = run(&smoke(&[System::Tessera], &Scenario::ALL)).expect("tessera run");
    for (scenario, round_trips, commands) in [
        (Scenario::New, 1.0, &[("evalsha", 1.0)][..]),
        (Scenario::Read, 1.0, &[("hgetall", 1.0)][..]),
        (
            Scenario::Write,
            2.0,
            &[("hgetall", 1.0), ("evalsha", 1.0)][..],
        ),
    ] {
        let m = get(&report, System::Tessera, scenario);
        assert_sound(&report, m);
        assert_near(
            &report,
            &format!("tessera {scenario} round trips per request"),
            m.round_trips_per_request,
            round_trips,
        );
        for (command, per_request) in commands {
            let actual = m.breakdown.get(*command).copied().unwrap_or(0.0);
            assert_near(
                &report,
                &format!("tessera {scenario} {command} per request"),
                actual,
                *per_request,
            );
        }
        // A read must not write, and nothing may fall back from EVALSHA to a full EVAL.
        assert!(
            !m.breakdown.contains_key("eval"),
            "script reloads during the run\n{}",
            report.table()
        );
        if scenario == Scenario::Read {
            assert_near(
                &report,
                "tessera read commands per request",
                m.commands_per_request,
                1.0,
            );
        }
    }

    // One scenario per baseline: the one-command reference and tower-sessions' read-then-save.
    let report = run(&smoke(
        &[System::Rawget, System::TowerSessions],
        &[Scenario::Write],
    ))
    .expect("baseline run");
    let raw = get(&report, System::Rawget, Scenario::Write);
    assert_sound(&report, raw);
    assert_near(
        &report,
        "rawget write round trips",
        raw.round_trips_per_request,
        1.0,
    );
    let ts = get(&report, System::TowerSessions, Scenario::Write);
    assert_sound(&report, ts);
    assert_near(
        &report,
        "tower-sessions write round trips",
        ts.round_trips_per_request,
        2.0,
    );
    assert!(report
        .ratio(System::Rawget, System::TowerSessions, Scenario::Write)
        .is_some());
}

/// `--serve` mode: every system comes up with its cookie file, and a cookie from that file reads
/// its session over plain TCP; the shutdown future ends the serving.
#[test]
fn serve_mode_writes_working_cookie_files() {
    use std::sync::{Arc, Mutex};

    use tessera_benches::loadtest::{serve, Error};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().expect("temp dir");
    let config = smoke(&System::ALL, &[Scenario::Read]).with_load(2, 5);
    let ready: Arc<Mutex<Vec<String>>> = Arc::default();
    let lines = ready.clone();
    let check = async move {
        let lines = lines.lock().unwrap().clone();
        assert_eq!(lines.len(), System::ALL.len(), "{lines:?}");
        for line in &lines {
            let [system, url, file]: [&str; 3] = line
                .split(' ')
                .collect::<Vec<_>>()
                .try_into()
                .unwrap_or_else(|_| panic!("line {line:?}"));
            let addr = url.trim_start_matches("http://");
            let cookies = std::fs::read_to_string(file).expect("cookie file");
            assert_eq!(cookies.lines().count(), 5, "{system}: {cookies}");
            let cookie = cookies.lines().next().unwrap();
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let request = format!(
                "GET /views HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            assert!(
                response.starts_with("HTTP/1.1 200") && response.ends_with("1 views"),
                "{system}: {response}"
            );
        }
        Ok::<(), Error>(())
    };
    serve(
        &config,
        dir.path(),
        |l| ready.lock().unwrap().extend_from_slice(l),
        check,
    )
    .expect("serve");
}
