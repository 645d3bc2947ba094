//! `GET /api/energy` (stage 5): energy, carbon and carbon-credit eligibility summed for a
//! customer's jobs, a provider's nodes, or the whole platform. The totals are the Energy
//! chamber's own (`gp4u_core::chambers::CarbonTotals`), documented through the core's `schema`
//! feature.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

pub use gp4u_core::chambers::{CarbonTotals, GridFactorUsed, Intake};

/// Whose figures an energy report sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EnergyScope {
    /// The caller's own jobs (from their rows: exact, at once).
    Customer,
    /// The caller's nodes (from the Energy chamber).
    Provider,
    /// Everything (admins; from the Energy chamber).
    Platform,
}

impl EnergyScope {
    pub const ALL: [EnergyScope; 3] = [
        EnergyScope::Customer,
        EnergyScope::Provider,
        EnergyScope::Platform,
    ];

    /// The name on the wire and in `?scope=`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EnergyScope::Customer => "customer",
            EnergyScope::Provider => "provider",
            EnergyScope::Platform => "platform",
        }
    }

    pub fn parse(text: &str) -> Option<EnergyScope> {
        EnergyScope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == text)
    }
}

/// `GET /api/energy` as JSON. Which lists it holds depends on the scope: `regions` for
/// customers and the platform, `nodes` for providers and the platform; `as_of_position` for
/// the chamber-backed scopes (provider, platform), `intake` for the platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EnergyReport {
    pub scope: EnergyScope,
    /// What the figures rest on (how energy and carbon are computed, what is declared).
    pub basis: String,
    /// The outbox position the Energy chamber had applied (provider and platform scopes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of_position: Option<i64>,
    pub total: CarbonTotals,
    /// Per region (`unknown` when a job's region was not known): customer and platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<RegionEnergy>>,
    /// Per node: the provider's nodes, or every node with jobs (platform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeEnergy>>,
    /// The Energy chamber's own counters of events read (platform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intake: Option<Intake>,
}

/// One region's totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegionEnergy {
    pub region: String,
    #[serde(flatten)]
    pub totals: CarbonTotals,
    /// Platform scope only, and there always present: the grid factor the region's jobs were
    /// last accounted with, `null` when none was recorded. Absent from the customer scope.
    // `Some(None)` is the `null`, `None` the absence.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    #[schema(value_type = Option<GridFactorUsed>)]
    pub grid_factor: Option<Option<GridFactorUsed>>,
}

/// One node's totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeEnergy {
    pub node_id: String,
    #[serde(flatten)]
    pub totals: CarbonTotals,
}

/// A field that is present (even as `null`) reads as `Some`; an absent one takes the default.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scopes_are_named_as_on_the_wire() {
        for scope in EnergyScope::ALL {
            assert_eq!(serde_json::to_value(scope).unwrap(), scope.as_str());
            assert_eq!(EnergyScope::parse(scope.as_str()), Some(scope));
        }
        assert_eq!(EnergyScope::parse("everyone"), None);
    }

    /// A row is the totals with its key beside them; a platform region's grid factor is there
    /// even when `null`, a customer's region has none.
    #[test]
    fn rows_flatten_the_totals_and_keep_a_null_grid_factor() {
        let totals = CarbonTotals {
            jobs: 2,
            energy_kwh: 1.5,
            ..CarbonTotals::default()
        };
        let platform = RegionEnergy {
            region: "us-east-1".into(),
            totals: totals.clone(),
            grid_factor: Some(None),
        };
        let value = serde_json::to_value(&platform).unwrap();
        assert_eq!(value["grid_factor"], serde_json::Value::Null);
        assert!(value.get("grid_factor").is_some(), "{value}");
        assert_eq!(
            (value["jobs"].clone(), value["region"].clone()),
            (json!(2), json!("us-east-1"))
        );
        assert_eq!(
            serde_json::from_value::<RegionEnergy>(value).unwrap(),
            platform
        );
        let customer = RegionEnergy {
            grid_factor: None,
            ..platform
        };
        let value = serde_json::to_value(&customer).unwrap();
        assert!(value.get("grid_factor").is_none(), "{value}");
        assert_eq!(
            serde_json::from_value::<RegionEnergy>(value).unwrap(),
            customer
        );
        let node: NodeEnergy =
            serde_json::from_value(json!({"node_id": "node_a", "jobs": 1, "energy_kwh": 0.5}))
                .unwrap();
        assert_eq!((node.totals.jobs, node.totals.carbon_kg), (1, 0.0));
    }
}
