//! The operator's routes: users, credit, tokens, chambers, grid factors.

use gp4u_proto::{
    ChambersView, CreditsBody, GridFactorBody, GridFactorView, GridFactors, IssuedToken,
    NewUserBody, TokenRequest, UserList, UserView,
};

use crate::{Client, ClientResult};

impl Client {
    /// `POST /api/admin/users`: a new customer, provider or admin.
    pub async fn create_user(&self, body: &NewUserBody) -> ClientResult<UserView> {
        self.post("the new user", "/api/admin/users", body).await
    }

    pub async fn set_user_active(&self, user: &str, active: bool) -> ClientResult<UserView> {
        let action = if active { "activate" } else { "suspend" };
        self.post(
            &format!("the {action} of {user}"),
            &format!("/api/admin/users/{user}/{action}"),
            &(),
        )
        .await
    }

    pub async fn add_credit(&self, user: &str, amount: f64) -> ClientResult<UserView> {
        self.post(
            &format!("credit for {user}"),
            &format!("/api/admin/users/{user}/credits"),
            &CreditsBody { amount },
        )
        .await
    }

    pub async fn issue_token(&self, user: &str, ttl_s: Option<i64>) -> ClientResult<IssuedToken> {
        self.post(
            &format!("a token for {user}"),
            &format!("/api/admin/users/{user}/tokens"),
            &TokenRequest { ttl_s },
        )
        .await
    }

    /// Every user, oldest first (`GET /api/admin/users`).
    pub async fn users(&self) -> ClientResult<UserList> {
        self.get("the users", "/api/admin/users").await
    }

    pub async fn chambers(&self) -> ClientResult<ChambersView> {
        self.get("the chambers", "/api/admin/chambers").await
    }

    pub async fn grid_factors(&self) -> ClientResult<GridFactors> {
        self.get("the grid factors", "/api/grid-factors").await
    }

    /// `PUT /api/admin/grid-factors/{region}`: sets a region's grid carbon intensity.
    pub async fn set_grid_factor(
        &self,
        region: &str,
        body: &GridFactorBody,
    ) -> ClientResult<GridFactorView> {
        self.put(
            &format!("the grid factor of {region}"),
            &format!("/api/admin/grid-factors/{region}"),
            body,
        )
        .await
    }
}
