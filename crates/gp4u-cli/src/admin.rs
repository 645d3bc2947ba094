//! `gp4u admin …`: operators (clearance ≥ 3) over the API — users, tokens, credit, the
//! chambers, the grid-factor table. No shell access to the server needed.

use gp4u_client::Client;
use gp4u_proto::UserView;

use crate::render;
use crate::session::{Exit, exit};

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Users: create, suspend, activate, credit, token.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Issue a token for a user (as `admin users token`).
    Token(TokenArgs),
    /// Each chamber's cursor, lag and model summary.
    Chambers,
    /// The carbon table; with REGION and --g-per-kwh, set that region's factor.
    GridFactor {
        region: Option<String>,
        /// g CO2e per kWh.
        #[arg(long, requires = "region")]
        g_per_kwh: Option<f64>,
        /// Where the figure comes from (required with --g-per-kwh).
        #[arg(long, requires = "g_per_kwh")]
        source: Option<String>,
        /// The date the figure is for, YYYY-MM-DD (required with --g-per-kwh).
        #[arg(long, requires = "g_per_kwh")]
        as_of: Option<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum UsersCommand {
    /// Create a user; prints it (its id first; --json for the API's body).
    Create {
        name: String,
        /// customer, provider or admin.
        #[arg(long, default_value = "customer")]
        role: String,
        #[arg(long)]
        region: Option<String>,
        /// Opening credit.
        #[arg(long)]
        credit: Option<f64>,
        /// A university provider (25 % of its earnings go to the student programme).
        #[arg(long)]
        university: bool,
    },
    /// Lock a user out at once.
    Suspend { user: String },
    /// Let a suspended user back in.
    Activate { user: String },
    /// Add credit (negative corrects; never below zero).
    Credit { user: String, amount: f64 },
    /// Issue a token for a user.
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    pub user: String,
    /// Lifetime in seconds (60 s to a year) [default: 30 days].
    #[arg(long)]
    pub ttl_s: Option<i64>,
}

fn print_user(user: &UserView, json: bool) -> anyhow::Result<()> {
    if json {
        return render::json(user);
    }
    println!(
        "{}",
        render::fields(&[
            ("id", user.id.clone()),
            ("name", user.name.clone()),
            ("role", user.role.to_string()),
            ("clearance", user.clearance.to_string()),
            ("active", user.active.to_string()),
        ])
    );
    Ok(())
}

pub async fn run(client: &Client, command: AdminCommand, json: bool) -> anyhow::Result<i32> {
    match command {
        AdminCommand::Users { command } => users(client, command, json).await,
        AdminCommand::Token(args) => token(client, args, json).await,
        AdminCommand::Chambers => {
            let chambers = client.chambers().await?;
            if json {
                render::json(&chambers)?;
            } else {
                let rows = chambers
                    .chambers
                    .iter()
                    .map(|chamber| {
                        vec![
                            chamber.name.clone(),
                            chamber.cursor.to_string(),
                            chamber.lag.to_string(),
                        ]
                    })
                    .collect();
                println!("{}", render::table(&["chamber", "cursor", "lag"], rows));
            }
            Ok(exit::OK)
        }
        AdminCommand::GridFactor {
            region,
            g_per_kwh,
            source,
            as_of,
        } => {
            let factors = match (region, g_per_kwh) {
                (Some(region), Some(grams)) => {
                    let (Some(source), Some(as_of)) = (source, as_of) else {
                        return Err(Exit::usage(format!(
                            "setting {region}'s factor needs --source (where {grams} g/kWh comes \
                             from) and --as-of (the date it is for, YYYY-MM-DD)"
                        )));
                    };
                    let body = gp4u_proto::GridFactorBody {
                        g_co2e_per_kwh: grams,
                        source,
                        as_of,
                    };
                    let set = client.set_grid_factor(&region, &body).await?;
                    if json {
                        render::json(&set)?;
                        return Ok(exit::OK);
                    }
                    vec![set]
                }
                _ => {
                    let table = client.grid_factors().await?;
                    if json {
                        render::json(&table)?;
                        return Ok(exit::OK);
                    }
                    table.factors
                }
            };
            let rows = factors
                .iter()
                .map(|factor| {
                    vec![
                        factor.region.clone(),
                        factor.g_co2e_per_kwh.to_string(),
                        factor.source.clone(),
                        factor.as_of.clone(),
                    ]
                })
                .collect();
            println!(
                "{}",
                render::table(&["region", "g CO2e/kWh", "source", "as of"], rows)
            );
            Ok(exit::OK)
        }
    }
}

async fn users(client: &Client, command: UsersCommand, json: bool) -> anyhow::Result<i32> {
    let user = match command {
        UsersCommand::Create {
            name,
            role,
            region,
            credit,
            university,
        } => {
            client
                .create_user(&gp4u_proto::NewUserBody {
                    name,
                    role,
                    region,
                    credit,
                    university: Some(university),
                })
                .await?
        }
        UsersCommand::Suspend { user } => client.set_user_active(&user, false).await?,
        UsersCommand::Activate { user } => client.set_user_active(&user, true).await?,
        UsersCommand::Credit { user, amount } => client.add_credit(&user, amount).await?,
        UsersCommand::Token(args) => return token(client, args, json).await,
    };
    print_user(&user, json)?;
    Ok(exit::OK)
}

async fn token(client: &Client, args: TokenArgs, json: bool) -> anyhow::Result<i32> {
    let issued = client.issue_token(&args.user, args.ttl_s).await?;
    if json {
        render::json(&issued)?;
    } else {
        // The token alone on standard output (for `> user.token`); when it expires, on stderr.
        println!("{}", issued.token);
        eprintln!("token for {} expires at {}", args.user, issued.expires_at);
    }
    Ok(exit::OK)
}
