//! The caller's own account: health, balance, statement, energy.

use gp4u_proto::{Balance, EnergyReport, Health, Statement};

use crate::{Client, ClientResult};

impl Client {
    /// `GET /healthz`: whether the server answers at all.
    pub async fn health(&self) -> ClientResult<Health> {
        self.get("the health check", "/healthz").await
    }

    /// `GET /api/billing/balance`: the caller's credit (also how `login` checks a token).
    pub async fn balance(&self) -> ClientResult<Balance> {
        self.get("the balance", "/api/billing/balance").await
    }

    /// `GET /api/billing/statement`: the caller's transfers, newest first.
    pub async fn statement(&self) -> ClientResult<Statement> {
        self.get("the statement", "/api/billing/statement").await
    }

    /// `GET /api/energy?scope=`: energy and carbon over the caller's jobs, nodes or the platform.
    pub async fn energy(&self, scope: Option<&str>) -> ClientResult<EnergyReport> {
        let path = match scope {
            Some(scope) => format!("/api/energy?scope={scope}"),
            None => "/api/energy".to_string(),
        };
        self.get("the energy summary", &path).await
    }
}
