//! The states of the fleet's GPUs and provider nodes, as stored and as sent on the wire.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Whether a GPU can take a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GpuStatus {
    /// Listed and free.
    Available,
    /// Running a job.
    Busy,
    /// Its node is gone or ejected: listed for its owner only.
    Offline,
}

impl GpuStatus {
    pub const ALL: [GpuStatus; 3] = [GpuStatus::Available, GpuStatus::Busy, GpuStatus::Offline];

    pub const fn as_str(&self) -> &'static str {
        match self {
            GpuStatus::Available => "AVAILABLE",
            GpuStatus::Busy => "BUSY",
            GpuStatus::Offline => "OFFLINE",
        }
    }

    /// Parses the wire form ("AVAILABLE", …); `None` for anything else.
    pub fn parse(text: &str) -> Option<GpuStatus> {
        GpuStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

impl fmt::Display for GpuStatus {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Whether a provider node may take work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeStatus {
    Active,
    /// Removed from the marketplace by Tutela (its trust or stake ran out).
    Ejected,
}

impl NodeStatus {
    pub const ALL: [NodeStatus; 2] = [NodeStatus::Active, NodeStatus::Ejected];

    pub const fn as_str(&self) -> &'static str {
        match self {
            NodeStatus::Active => "ACTIVE",
            NodeStatus::Ejected => "EJECTED",
        }
    }

    /// Parses the wire form ("ACTIVE", "EJECTED"); `None` for anything else.
    pub fn parse(text: &str) -> Option<NodeStatus> {
        NodeStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms_round_trip_through_serde_and_parse() {
        for status in GpuStatus::ALL {
            let json = serde_json::to_value(status).unwrap();
            assert_eq!(json, serde_json::Value::String(status.as_str().into()));
            assert_eq!(GpuStatus::parse(status.as_str()), Some(status));
        }
        for status in NodeStatus::ALL {
            let json = serde_json::to_value(status).unwrap();
            assert_eq!(json, serde_json::Value::String(status.as_str().into()));
            assert_eq!(NodeStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(GpuStatus::parse("available"), None);
        assert_eq!(NodeStatus::parse(""), None);
    }
}
