//! The fred settings every connection of the store shares (timeouts, reconnect policy, the
//! broadcast capacity the near cache's invalidations need) and the wait for a connection. The
//! builder, the cluster router, the sentinel watchers and the near cache's tests all build their
//! clients here; nothing here knows about sessions.

use std::time::Duration;

use fred::{
    interfaces::ClientLike,
    prelude::{Builder, Config, ReconnectPolicy},
    types::config::ReconnectError,
};

/// How often [`connected`] looks at the clients' state.
const CONNECTED_POLL: Duration = Duration::from_millis(5);

/// Waits until every client is connected, or one's connection fails.
///
/// fred's `wait_for_connect` reads the client's state and only then subscribes to the connect
/// notification: a connection made in between is missed, and the wait lasts until the next
/// reconnection (with a running server, until the caller's timeout). So the state is polled
/// too, and whichever tells first answers.
pub(super) async fn connected<C: ClientLike>(clients: &[C]) -> fred::prelude::FredResult<()> {
    let notified = async {
        for client in clients {
            if !client.is_connected() {
                client.wait_for_connect().await?;
            }
        }
        Ok(())
    };
    let polled = async {
        while !clients.iter().all(ClientLike::is_connected) {
            tokio::time::sleep(CONNECTED_POLL).await;
        }
    };
    tokio::select! {
        result = notified => result,
        () = polled => Ok(()),
    }
}

/// The connection options shared by every fred client the store builds.
#[derive(Debug, Clone)]
pub(super) struct FredSettings {
    pub(super) pool_size: usize,
    pub(super) command_timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) reconnect_max_delay: Duration,
    /// fred's per-client broadcast capacity (invalidations among them).
    pub(super) broadcast_capacity: usize,
}

impl FredSettings {
    /// A fred builder for `config` with the store's timeouts and reconnect policy.
    pub(super) fn fred_builder(&self, config: Config) -> Builder {
        let mut builder = Builder::from_config(config);
        let command_timeout = self.command_timeout;
        let connect_timeout = self.connect_timeout;
        let broadcast_capacity = self.broadcast_capacity;
        let max_delay = u32::try_from(self.reconnect_max_delay.as_millis()).unwrap_or(u32::MAX);
        builder
            .with_performance_config(|perf| {
                // The store bounds each call as a whole; this only keeps fred's own internal
                // commands (and anything the store forgets to bound) from hanging.
                perf.default_command_timeout = command_timeout;
                perf.broadcast_channel_capacity = broadcast_capacity;
            })
            .with_connection_config(|conn| {
                conn.connection_timeout = connect_timeout;
                conn.internal_command_timeout = connect_timeout;
                conn.max_command_attempts = 3;
                conn.max_redirections = 10;
                // A demoted master answers READONLY without dropping the connection; treat that
                // and the other "wrong node right now" answers as a reason to reconnect.
                conn.reconnect_errors = vec![
                    ReconnectError::ReadOnly,
                    ReconnectError::MasterDown,
                    ReconnectError::ClusterDown,
                    ReconnectError::Loading,
                ];
            })
            // max_attempts 0 = retry forever; fred's default is no reconnection at all.
            .set_policy(ReconnectPolicy::new_exponential(
                0,
                20,
                max_delay.max(20),
                2,
            ));
        builder
    }
}
