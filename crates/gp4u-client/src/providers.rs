//! A provider's nodes: listing and stake.

use gp4u_proto::{ProviderNodeList, ProviderNodeView, StakeBody};

use crate::{Client, ClientResult};
use gp4u_proto::paths;

impl Client {
    pub async fn node(&self, node_id: &str) -> ClientResult<ProviderNodeView> {
        self.get(&format!("node {node_id}"), &paths::provider(node_id))
            .await
    }

    /// The caller's nodes (`GET /api/providers`).
    pub async fn nodes(&self) -> ClientResult<ProviderNodeList> {
        self.get("your nodes", paths::PROVIDERS).await
    }

    pub async fn stake(&self, node_id: &str, amount: f64) -> ClientResult<ProviderNodeView> {
        self.post(
            &format!("the stake of {node_id}"),
            &paths::provider_stake(node_id),
            &StakeBody { amount },
        )
        .await
    }
}
