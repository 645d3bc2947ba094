//! The operator's routes: users, credit, tokens, chambers, grid factors.

use gp4u_proto::{
    ChambersView, CreditsBody, GridFactorBody, GridFactorView, GridFactors, IssuedToken,
    NewUserBody, TokenRequest, UserList, UserView,
};

use crate::{Client, ClientResult};
use gp4u_proto::paths;

impl Client {
    /// `POST /api/admin/users`: a new customer, provider or admin.
    pub async fn create_user(&self, body: &NewUserBody) -> ClientResult<UserView> {
        self.post("the new user", paths::ADMIN_USERS, body).await
    }

    pub async fn set_user_active(&self, user: &str, active: bool) -> ClientResult<UserView> {
        let action = if active { "activate" } else { "suspend" };
        self.post(
            &format!("the {action} of {user}"),
            &if active {
                paths::admin_user_activate(user)
            } else {
                paths::admin_user_suspend(user)
            },
            &(),
        )
        .await
    }

    pub async fn add_credit(&self, user: &str, amount: f64) -> ClientResult<UserView> {
        self.post(
            &format!("credit for {user}"),
            &paths::admin_user_credits(user),
            &CreditsBody { amount },
        )
        .await
    }

    pub async fn issue_token(&self, user: &str, ttl_s: Option<i64>) -> ClientResult<IssuedToken> {
        self.post(
            &format!("a token for {user}"),
            &paths::admin_user_tokens(user),
            &TokenRequest { ttl_s },
        )
        .await
    }

    /// Every user, oldest first (`GET /api/admin/users`).
    pub async fn users(&self) -> ClientResult<UserList> {
        self.get("the users", paths::ADMIN_USERS).await
    }

    pub async fn chambers(&self) -> ClientResult<ChambersView> {
        self.get("the chambers", paths::ADMIN_CHAMBERS).await
    }

    pub async fn grid_factors(&self) -> ClientResult<GridFactors> {
        self.get("the grid factors", paths::GRID_FACTORS).await
    }

    /// `PUT /api/admin/grid-factors/{region}`: sets a region's grid carbon intensity.
    pub async fn set_grid_factor(
        &self,
        region: &str,
        body: &GridFactorBody,
    ) -> ClientResult<GridFactorView> {
        self.put(
            &format!("the grid factor of {region}"),
            &paths::admin_grid_factor(region),
            body,
        )
        .await
    }
}
