//! The Ethereum side of the service. For now: learning which chain an RPC endpoint serves,
//! as CAIP-2 (`eip155:<id>`).

use std::fmt;

use alloy::providers::{Provider, ProviderBuilder};

/// A CAIP-2 chain id in the `eip155` namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainId(pub u64);

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "eip155:{}", self.0)
    }
}

/// Errors talking to the chain.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The RPC URL is not a valid URL.
    #[error("invalid ethereum rpc url: {0}")]
    InvalidUrl(String),
    /// The RPC endpoint failed or could not be reached.
    #[error("ethereum rpc request failed: {0}")]
    Rpc(String),
}

/// Ask the RPC endpoint for its chain id.
pub async fn fetch_chain_id(rpc_url: &str) -> Result<ChainId, ChainError> {
    let url = rpc_url
        .parse()
        .map_err(|e| ChainError::InvalidUrl(format!("{e}")))?;
    let provider = ProviderBuilder::new().connect_http(url);
    let id = provider
        .get_chain_id()
        .await
        .map_err(|e| ChainError::Rpc(e.to_string()))?;
    Ok(ChainId(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_caip2() {
        assert_eq!(ChainId(1337).to_string(), "eip155:1337");
        assert_eq!(ChainId(11155111).to_string(), "eip155:11155111");
    }

    #[tokio::test]
    async fn reports_bad_urls_and_unreachable_nodes() {
        assert!(matches!(
            fetch_chain_id("not a url").await,
            Err(ChainError::InvalidUrl(_))
        ));
        assert!(matches!(
            fetch_chain_id("http://127.0.0.1:1").await,
            Err(ChainError::Rpc(_))
        ));
    }

    /// Runs against the anvil that `scripts/test` starts (`ETH_RPC_URL`).
    #[tokio::test]
    async fn reads_the_chain_id_from_a_real_node() {
        let Ok(url) = std::env::var("ETH_RPC_URL") else {
            panic!("ETH_RPC_URL must point at a running anvil (scripts/test starts one)");
        };
        let expected: u64 = std::env::var("CAS_TEST_CHAIN_ID")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1337);
        assert_eq!(fetch_chain_id(&url).await.unwrap(), ChainId(expected));
    }
}
