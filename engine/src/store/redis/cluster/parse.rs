//! The pure half of cluster routing: what a node's error asks the router to do, and the slot map
//! in a CLUSTER SLOTS answer. No I/O, so every case is a unit test.

use fred::{
    bytes_utils::Str,
    types::{cluster::ClusterRouting, config::Server, Value},
};

/// What an error from a node asks the router to do.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Redirect {
    Moved(Server),
    /// The key has moved to this node mid-migration: send the command there after `ASKING`.
    Ask(Server),
    /// fred gave up on the command without an answer from the node (its write attempts ran out
    /// over reconnections, or it could not route it): route afresh from our own slot map.
    Reroute,
    /// The node may be gone or demoted: refresh the topology in the background.
    Refresh,
    None,
}

pub(super) fn classify(err: &fred::error::Error) -> Redirect {
    let details = err.details();
    if let Some(rest) = details.strip_prefix("MOVED ") {
        if let Some(server) = rest
            .split(' ')
            .nth(1)
            .and_then(|a| Server::try_from(a).ok())
        {
            return Redirect::Moved(server);
        }
        return Redirect::Refresh;
    }
    if let Some(rest) = details.strip_prefix("ASK ") {
        if let Some(server) = rest
            .split(' ')
            .nth(1)
            .and_then(|a| Server::try_from(a).ok())
        {
            return Redirect::Ask(server);
        }
        return Redirect::Refresh;
    }
    if details.contains("Too many failed write attempts") {
        return Redirect::Reroute;
    }
    use fred::error::ErrorKind as F;
    // fred could not route or send the command (met with its own cluster client's ASK path, no
    // longer used): it was never sent, so routing afresh is safe.
    if err.kind() == &F::Routing
        && (details == "Max attempts reached." || details.starts_with("Unable to route command"))
    {
        return Redirect::Reroute;
    }
    match err.kind() {
        F::IO | F::Timeout | F::Canceled | F::NotFound => Redirect::Refresh,
        _ if [
            "CLUSTERDOWN",
            "TRYAGAIN",
            "READONLY",
            "MASTERDOWN",
            "LOADING",
        ]
        .iter()
        .any(|p| details.starts_with(p)) =>
        {
            Redirect::Refresh
        }
        _ => Redirect::None,
    }
}

/// The slot map in a CLUSTER SLOTS answer from a node at `host` (which stands in for nodes listed
/// without an address); `None` when it lists no slots (a node that is not part of a cluster yet).
///
/// Redis 7.0 lists a node that does not know its own address (a lone node no peer has met) with
/// an empty host. fred 10.1 reads that as the host name `""`, which no connection can reach, so
/// such hosts become null first: the node that answered, as for an unknown endpoint.
pub(super) fn slot_map(
    value: Value,
    host: &Str,
) -> std::result::Result<Option<ClusterRouting>, fred::error::Error> {
    let routing = ClusterRouting::from_cluster_slots(unknown_hosts_null(value), host.clone())?;
    Ok((!routing.slots().is_empty()).then_some(routing))
}

/// `value` with every empty node host in its slot ranges replaced by null.
fn unknown_hosts_null(value: Value) -> Value {
    let Value::Array(ranges) = value else {
        return value;
    };
    let ranges = ranges
        .into_iter()
        .map(|range| match range {
            // A range: first slot, last slot, then one `[host, port, id, ...]` per node.
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| match item {
                        Value::Array(mut node) if i >= 2 => {
                            if node
                                .first()
                                .and_then(Value::as_str)
                                .is_some_and(|h| h.is_empty())
                            {
                                node[0] = Value::Null;
                            }
                            Value::Array(node)
                        }
                        other => other,
                    })
                    .collect(),
            ),
            other => other,
        })
        .collect();
    Value::Array(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::error::{Error as FredError, ErrorKind as F};

    fn err(kind: F, details: &str) -> FredError {
        FredError::new(kind, details.to_owned())
    }

    #[test]
    fn classifies_redirections_and_failures() {
        let moved = classify(&err(F::Unknown, "MOVED 3999 127.0.0.1:6381"));
        assert_eq!(moved, Redirect::Moved(Server::new("127.0.0.1", 6381)));
        // A MOVED without a usable address: the slot map is stale, re-read it.
        assert_eq!(classify(&err(F::Unknown, "MOVED 3999")), Redirect::Refresh);
        assert_eq!(
            classify(&err(F::Unknown, "ASK 3999 127.0.0.1:6381")),
            Redirect::Ask(Server::new("127.0.0.1", 6381))
        );
        assert_eq!(classify(&err(F::Unknown, "ASK 3999")), Redirect::Refresh);
        assert_eq!(
            classify(&err(F::Unknown, "Too many failed write attempts.")),
            Redirect::Reroute
        );
        // Met under load during a resharding: ASKING could not be sent, so the command was not.
        for details in [
            "Max attempts reached.",
            "Unable to route command or reconnect.",
        ] {
            assert_eq!(
                classify(&err(F::Routing, details)),
                Redirect::Reroute,
                "{details}"
            );
        }
        for kind in [F::IO, F::Timeout, F::Canceled, F::NotFound] {
            let name = format!("{kind:?}");
            assert_eq!(classify(&err(kind, "x")), Redirect::Refresh, "{name}");
        }
        for details in [
            "CLUSTERDOWN The cluster is down",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "READONLY You can't write against a read only replica.",
            "MASTERDOWN Link with MASTER is down",
            "LOADING Redis is loading the dataset in memory",
        ] {
            assert_eq!(
                classify(&err(F::Unknown, details)),
                Redirect::Refresh,
                "{details}"
            );
        }
        assert_eq!(
            classify(&err(F::Unknown, "WRONGTYPE Operation against a key")),
            Redirect::None
        );
        assert_eq!(
            classify(&err(F::Unknown, "NOSCRIPT No matching script")),
            Redirect::None
        );
    }

    fn node(host: Option<&str>, port: i64, id: &str) -> Value {
        Value::Array(vec![
            host.map_or(Value::Null, |h| Value::String(h.into())),
            Value::Integer(port),
            Value::String(id.into()),
        ])
    }

    fn range(first: i64, last: i64, nodes: Vec<Value>) -> Value {
        let mut v = vec![Value::Integer(first), Value::Integer(last)];
        v.extend(nodes);
        Value::Array(v)
    }

    #[test]
    fn an_empty_host_is_the_node_that_answered() {
        // How Redis 7.0 lists a lone cluster node that has not learned its own address.
        let slots = Value::Array(vec![range(0, 16383, vec![node(Some(""), 7001, "b")])]);
        let routing = slot_map(slots, &Str::from("127.0.0.1")).unwrap().unwrap();
        assert_eq!(
            routing.get_server(16383),
            Some(&Server::new("127.0.0.1", 7001))
        );
    }

    #[test]
    fn parses_a_slot_map() {
        let slots = Value::Array(vec![
            range(
                0,
                8191,
                vec![
                    node(Some("127.0.0.1"), 7000, "a"),
                    node(Some("127.0.0.1"), 7003, "d"),
                ],
            ),
            // A null host (an unknown endpoint) means "the node you asked".
            range(8192, 16383, vec![node(None, 7001, "b")]),
        ]);
        let routing = slot_map(slots, &Str::from("10.0.0.9")).unwrap().unwrap();
        assert_eq!(routing.get_server(0), Some(&Server::new("127.0.0.1", 7000)));
        assert_eq!(
            routing.get_server(8191),
            Some(&Server::new("127.0.0.1", 7000))
        );
        assert_eq!(
            routing.get_server(16383),
            Some(&Server::new("10.0.0.9", 7001))
        );
        let mut primaries = routing.unique_primary_nodes();
        primaries.sort_by_key(|s| s.port);
        assert_eq!(
            primaries,
            vec![
                Server::new("127.0.0.1", 7000),
                Server::new("10.0.0.9", 7001)
            ],
            "replicas are not primaries"
        );
    }

    #[test]
    fn an_empty_slot_map_is_none_and_garbage_an_error() {
        assert!(slot_map(Value::Array(vec![]), &Str::from("h"))
            .unwrap()
            .is_none());
        assert!(slot_map(Value::Integer(3), &Str::from("h")).is_err());
    }
}
