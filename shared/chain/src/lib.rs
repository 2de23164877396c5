//! The Ethereum side of the service:
//!
//! - [`fetch_chain_id`]: which chain an RPC endpoint serves, as CAIP-2 (`eip155:<id>`);
//! - [`contract`]: the anchor contract (official address, ABI bindings, bytecode) and
//!   [`install_contract_for_dev`], which places it on a local anvil chain;
//! - [`AnchorChain`]: the chain seam, what the transaction manager asks of a node (nonces,
//!   fees, signing, sending, receipts, blocks); [`EvmAnchorer`] implements it for a real node
//!   and, with the `fake` feature, [`fake::FakeChain`] for a scripted one that shows faults
//!   on demand;
//! - [`FeePolicy`]: first fees from the node's estimate under a cap, replacement fees at
//!   least 12.5 % higher on both EIP-1559 fields;
//! - [`SignerSource`] / [`AnchorSigner`]: the wallet's key, local or in AWS KMS (feature
//!   `aws-kms`).

use std::fmt;

use alloy::providers::{Provider, RootProvider};

mod anchorer;
pub mod contract;
pub mod dev;
mod error;
#[cfg(feature = "fake")]
pub mod fake;
pub mod fees;
mod node;
mod signer;

pub use alloy::primitives::Address;
pub use alloy::primitives::{B256, U256};
pub use anchorer::{
    AnchorTx, AnchorerConfig, EvmAnchorer, Fees, SignedAnchorTx, anchor_calldata, wallet_address,
};
pub use contract::{
    ANCHOR_CONTRACT_ADDRESS, CeramicAnchor, Installed, ensure_dev_chain, install_contract_for_dev,
    is_dev_chain,
};
pub use error::{ChainError, Rejection};
pub use fees::FeePolicy;
pub use node::{AnchorChain, BlockInfo, Inclusion, Payload, WalletTx};
pub use signer::{AnchorSigner, SignerSource};

/// A CAIP-2 chain id in the `eip155` namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainId(pub u64);

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "eip155:{}", self.0)
    }
}

/// Ask the RPC endpoint for its chain id.
pub async fn fetch_chain_id(rpc_url: &str) -> Result<ChainId, ChainError> {
    let provider = connect_root(rpc_url)?;
    let id = provider
        .get_chain_id()
        .await
        .map_err(error::from_transport)?;
    Ok(ChainId(id))
}

/// A plain HTTP provider (no fillers: nonces, fees and gas are set explicitly).
pub(crate) fn connect_root(rpc_url: &str) -> Result<RootProvider, ChainError> {
    let url = rpc_url
        .parse()
        .map_err(|e| ChainError::InvalidUrl(format!("{e}")))?;
    Ok(RootProvider::new_http(url))
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

    #[test]
    fn only_local_dev_chains_may_be_modified() {
        for id in [1337, 31337] {
            assert!(is_dev_chain(ChainId(id)));
            assert!(ensure_dev_chain(ChainId(id)).is_ok());
        }
        for id in [1, 3, 5, 100, 11155111, 0] {
            assert!(!is_dev_chain(ChainId(id)));
            let err = ensure_dev_chain(ChainId(id)).unwrap_err();
            assert!(matches!(err, ChainError::NotDevChain(c) if c == ChainId(id)));
            assert!(!err.is_retryable());
            assert!(err.to_string().contains(&format!("eip155:{id}")), "{err}");
        }
    }

    const ARTIFACT: &str = include_str!("../../../contracts/build/CeramicAnchor.json");
    const SOURCE: &str = include_str!("../../../contracts/CeramicAnchor.sol");

    #[test]
    fn the_committed_build_has_the_v2_interface() {
        use alloy::json_abi::JsonAbi;
        use alloy::primitives::{b256, keccak256};

        let artifact: serde_json::Value = serde_json::from_str(ARTIFACT).unwrap();
        let abi: JsonAbi = serde_json::from_value(artifact["abi"].clone()).unwrap();

        let anchor = &abi.function("anchorDagCbor").unwrap()[0];
        assert_eq!(anchor.signature(), "anchorDagCbor(bytes32)");
        assert_eq!(anchor.selector().0, [0x97, 0xad, 0x09, 0xeb]);
        let did_anchor = &abi.event("DidAnchor").unwrap()[0];
        assert_eq!(
            did_anchor.selector(),
            b256!("0x37f9254ff1973d24d609016d6bb0aef8e6de91808811a546fad8eaa0e481d9d9")
        );
        assert!(did_anchor.inputs[0].indexed && !did_anchor.inputs[1].indexed);
        for (name, signature) in [
            ("addCas", "addCas(address)"),
            ("removeCas", "removeCas(address)"),
            ("isServiceAllowed", "isServiceAllowed(address)"),
            ("owner", "owner()"),
            ("transferOwnership", "transferOwnership(address)"),
        ] {
            assert_eq!(abi.function(name).unwrap()[0].signature(), signature);
        }
        for name in ["DidAddCas", "DidRemoveCas"] {
            let event = &abi.event(name).unwrap()[0];
            assert_eq!(event.signature(), format!("{name}(address)"));
            assert!(event.inputs[0].indexed);
        }

        // The generated bindings agree.
        use alloy::sol_types::{SolCall, SolEvent};
        assert_eq!(
            CeramicAnchor::anchorDagCborCall::SELECTOR,
            anchor.selector().0
        );
        assert_eq!(
            CeramicAnchor::DidAnchor::SIGNATURE_HASH,
            did_anchor.selector()
        );

        // Bytecode and compiler settings are recorded.
        for field in ["bytecode", "deployedBytecode"] {
            let code = artifact[field].as_str().unwrap();
            assert!(code.starts_with("0x") && code.len() > 100, "{field}");
        }
        assert_eq!(artifact["compiler"]["optimizer"]["enabled"], true);
        assert_eq!(artifact["compiler"]["optimizer"]["runs"], 200);
        assert!(
            artifact["compiler"]["version"]
                .as_str()
                .unwrap()
                .starts_with("0.8.")
        );

        // A cheap staleness check: the build was made from the committed source.
        assert_eq!(
            artifact["sourceKeccak256"].as_str().unwrap(),
            keccak256(SOURCE.as_bytes()).to_string(),
            "contracts/build/CeramicAnchor.json is stale: run scripts/build-contract"
        );
    }

    #[test]
    fn anchor_calldata_is_selector_and_digest() {
        let root = [0xab; 32];
        let data = anchor_calldata(root);
        assert_eq!(data.len(), 36);
        assert_eq!(data[..4], [0x97, 0xad, 0x09, 0xeb]);
        assert_eq!(data[4..], root);
    }

    const DEV_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    #[test]
    fn the_signing_key_is_not_in_debug_output() {
        let config = AnchorerConfig::new(
            "http://127.0.0.1:8545",
            secrecy::SecretString::from(DEV_KEY),
        );
        let debug = format!("{config:?} {config:#?}");
        assert!(!debug.contains(&DEV_KEY[2..12]), "{debug}");
        assert!(debug.contains("127.0.0.1:8545"));
    }

    #[tokio::test]
    async fn a_bad_key_is_reported_without_echoing_it() {
        let bad = "0xnot-a-key-but-secret-looking-123";
        let config = AnchorerConfig::new("http://127.0.0.1:1", secrecy::SecretString::from(bad));
        let err = EvmAnchorer::connect(config).await.unwrap_err();
        assert!(matches!(err, ChainError::InvalidKey), "{err}");
        assert!(!err.to_string().contains("secret-looking"));
        assert!(!format!("{err:?}").contains("secret-looking"));
    }

    #[test]
    fn the_anchorer_can_be_shared_across_tasks() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<EvmAnchorer>();
        let _check = |a: &EvmAnchorer| send(&a.head());
        let _object =
            |a: EvmAnchorer| -> std::sync::Arc<dyn AnchorChain> { std::sync::Arc::new(a) };
    }
}
