//! A NATS cluster on loopback: several nats-server processes, each with its
//! own store, joined by cluster routes; any node can be stopped and started
//! again with its store.

use std::time::Duration;

use async_nats::jetstream;

use super::{NatsServer, free_port};

pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// `size` servers with JetStream, routed to each other.
    pub fn start(size: usize) -> Self {
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes: Vec<String> = route_ports
            .iter()
            .map(|port| format!("\"nats://127.0.0.1:{port}\""))
            .collect();
        let nodes = route_ports
            .iter()
            .enumerate()
            .map(|(index, port)| {
                NatsServer::start_with_config(&format!(
                    "server_name: n{index}\ncluster {{\n  name: jetline-test\n  listen: \"127.0.0.1:{port}\"\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ))
            })
            .collect();
        Self { nodes }
    }

    /// Every node's URL, comma separated, as `nats.url` takes a seed list.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A JetStream context on a client that knows every node, once the
    /// cluster has elected its meta leader.
    pub async fn jetstream(&self) -> jetstream::Context {
        let servers: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .map(|node| node.url().parse().expect("a server address"))
            .collect();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(servers)
            .await
            .expect("test client connects to the cluster");
        let js = jetstream::new(client);
        let ready = super::poll_until(
            Duration::from_secs(30),
            Duration::from_millis(200),
            || async { js.query_account().await.ok() },
        )
        .await;
        assert!(ready.is_some(), "the cluster elected a meta leader");
        js
    }
}
