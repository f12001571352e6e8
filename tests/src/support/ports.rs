//! Free loopback ports, reserved per process so parallel tests never get the same one.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, TcpListener},
    sync::{LazyLock, Mutex},
};

use super::{lock, CLUSTER_BUS_OFFSET};

const MAX_PORT_PROBES: usize = 1000;

/// Ports handed out by this process. Tests run on parallel threads, and the OS may return a port
/// again as soon as our probe listener is closed, before the server that wanted it has bound it.
static HANDED_OUT: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(Mutex::default);

fn bind_ephemeral() -> (TcpListener, u16) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("cannot read the port of a 127.0.0.1:0 listener: {e}"))
        .port();
    (listener, port)
}

/// Returns a currently free TCP port on 127.0.0.1 that this process has not handed out before.
///
/// The port is only reserved against other callers in this process; another process could still
/// take it before it is bound, which is why server start-up retries on "Address already in use".
pub fn free_port() -> u16 {
    for _ in 0..MAX_PORT_PROBES {
        let (_listener, port) = bind_ephemeral();
        if lock(&HANDED_OUT).insert(port) {
            return port;
        }
    }
    panic!("no unused port found on 127.0.0.1 after {MAX_PORT_PROBES} attempts");
}

/// Like [`free_port`], but also guarantees that the cluster bus port (`port + 10000`) is free,
/// and reserves both so that nothing else in this process is given the bus port.
pub(super) fn free_cluster_port() -> u16 {
    for _ in 0..MAX_PORT_PROBES {
        // Keep the first listener open while probing the bus port so the pair is checked together.
        let (_listener, port) = bind_ephemeral();
        let Some(bus) = port
            .checked_add(CLUSTER_BUS_OFFSET)
            .filter(|bus| *bus < 65_535)
        else {
            continue;
        };
        if TcpListener::bind((Ipv4Addr::LOCALHOST, bus)).is_err() {
            continue;
        }
        let mut handed_out = lock(&HANDED_OUT);
        if handed_out.contains(&port) || handed_out.contains(&bus) {
            continue;
        }
        handed_out.insert(port);
        handed_out.insert(bus);
        return port;
    }
    panic!(
        "no free port pair (port, port+10000) found on 127.0.0.1 after {MAX_PORT_PROBES} attempts"
    );
}
