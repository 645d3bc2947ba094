//! The caller's own account: health, balance, statement, energy.

use gp4u_proto::{Balance, EnergyReport, Health, Statement};

use crate::{Client, ClientResult};
use gp4u_proto::paths;

impl Client {
    /// `GET /healthz`: whether the server answers at all.
    pub async fn health(&self) -> ClientResult<Health> {
        self.get("the health check", paths::HEALTHZ).await
    }

    /// `GET /api/billing/balance`: the caller's credit (also how `login` checks a token).
    pub async fn balance(&self) -> ClientResult<Balance> {
        self.get("the balance", paths::BALANCE).await
    }

    /// `GET /api/billing/statement`: the caller's transfers, newest first.
    pub async fn statement(&self) -> ClientResult<Statement> {
        self.get("the statement", paths::STATEMENT).await
    }

    /// `GET /api/energy?scope=`: energy and carbon over the caller's jobs, nodes or the platform.
    pub async fn energy(&self, scope: Option<&str>) -> ClientResult<EnergyReport> {
        let path = match scope {
            Some(scope) => format!("{}?scope={scope}", paths::ENERGY),
            None => paths::ENERGY.to_string(),
        };
        self.get("the energy summary", &path).await
    }
}
